"""`zoo demo`: every bundled tokenizer on held-out samples; reconstructions plus a summary table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from . import data, hub, io as zio, metrics, registry


def _audio_demo(name: str, tok, out: Path, num_clips: int = 4) -> dict:
    heldout = data.speech("heldout")
    clips = heldout[:: max(1, len(heldout) // num_clips)][:num_clips]  # spread over voices and sentences
    start = time.perf_counter()
    tokens = tok.encode(clips, sample_rate=data.SPEECH_SAMPLE_RATE)  # one batch of different-length clips
    recon = tok.decode_list(tokens)
    elapsed = time.perf_counter() - start
    folder = out / name
    for i, (clip, rec) in enumerate(zip(clips, recon)):
        zio.save_audio(folder / f"{i:02d}_original.wav", clip, data.SPEECH_SAMPLE_RATE)
        zio.save_audio(folder / f"{i:02d}_reconstruction.wav", rec, data.SPEECH_SAMPLE_RATE)
    scores = [metrics.audio_metrics(r[None], c[None], data.SPEECH_SAMPLE_RATE) for c, r in zip(clips, recon)]
    seconds = sum(c.shape[-1] for c in clips) / data.SPEECH_SAMPLE_RATE
    row = {
        "model": name,
        "input": f"{len(clips)} held-out speech clips, {seconds:.1f} s",
        "tokens": int(tokens.lengths.sum()),
        "bitrate": f"{tok.bitrate:.0f} bit/s",
        "time_s": round(elapsed, 3),
        "folder": str(folder),
    }
    for key in scores[0]:
        row[key] = round(sum(s[key] for s in scores) / len(scores), 4)
    return row


def _image_demo(name: str, tok, out: Path) -> dict:
    from .io import resize_center_crop

    size = tok.config.image_size
    photos = data.photos("heldout")
    images = torch.cat([resize_center_crop(p[None], size) for p in photos.values()])
    n = tok.num_tokens
    ks = sorted({k for k in (1, 4, 16, 64) if k < n} | {n})
    start = time.perf_counter()
    codes = tok.encode(images).codes                                              # (B, N)
    b = len(images)
    keep = torch.tensor(ks).repeat_interleave(b)                                  # every image at every k, one batch
    recon = tok.decode(codes.repeat(len(ks), 1), keep_k=keep, seed=0).view(len(ks), b, *images.shape[1:])
    elapsed = time.perf_counter() - start
    folder = out / name
    for i, photo_name in enumerate(photos):
        tiles = torch.cat([images[i: i + 1], recon[:, i]])
        labels = ["original"] + [f"{k} tok" for k in ks]
        zio.save_image(folder / f"{photo_name}_coarse_to_fine.png", zio.image_grid(tiles, len(tiles), labels=labels))
    row = {"model": name, "input": f"{b} held-out photos, {size} x {size}", "tokens": f"1..{n} per image",
           "bitrate": f"{n * math.log2(tok.codebook_size):.0f} bit/image (all tokens)",
           "time_s": round(elapsed, 3), "folder": str(folder)}
    for k, r in zip(ks, recon):
        row[f"psnr@{k}"] = round(float(metrics.psnr(r, images).mean()), 2)
    row[f"ssim@{n}"] = round(float(metrics.ssim(recon[-1], images).mean()), 4)
    return row


def run_demo(out: Path, names: list[str] | None = None) -> list[dict]:
    """Run the demo and write ``summary.md`` / ``summary.json`` into `out`; returns the rows."""
    torch.manual_seed(0)
    bundled = [n for n in registry.list_models(kind="tokenizer") if registry.model_info(n).bundled]
    names = names or bundled
    unknown = sorted(set(names) - set(bundled))
    if unknown:
        raise ValueError(f"not bundled tokenizers: {unknown}; bundled: {bundled}")
    rows = []
    for name in names:
        tok = hub.load(name)
        rows.append(_audio_demo(name, tok, out) if tok.modality == "audio" else _image_demo(name, tok, out))
        print(f"{name}: done ({rows[-1]['time_s']} s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "folder"))  # in order of appearance
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote reconstructions and summary.md / summary.json to {out.resolve()}")
    return rows
