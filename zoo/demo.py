"""`zoo demo`: every bundled tokenizer on held-out samples; reconstructions plus a summary table."""

from __future__ import annotations

import json
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
        if tok.modality != "audio":
            raise ValueError(f"{name}: the demo has no {tok.modality} task yet")
        rows.append(_audio_demo(name, tok, out))
        print(f"{name}: done ({rows[-1]['time_s']} s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    columns = sorted({k for r in rows for k in r if k != "folder"}, key=lambda k: list(rows[0]).index(k))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote reconstructions and summary.md / summary.json to {out.resolve()}")
    return rows
