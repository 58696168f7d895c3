"""`zoo demo`: every bundled tokenizer on the held-out samples committed with the package, and every bundled
generator's samples; outputs plus a summary.

Runs offline on a fresh install (no espeak-ng, no scikit-image): the inputs are `zoo.data.samples`. Each model is
asked what it can do (modality, prefix decoding, stochastic decoding) rather than which family it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from . import data, hub, io as zio, metrics, registry


def _audio_demo(tok, folder: Path) -> dict:
    samples = data.samples("audio")
    rates = {sr for _, sr in samples.values()}
    if len(rates) != 1:
        raise ValueError(f"the audio samples have different rates {sorted(rates)}")
    rate = rates.pop()
    clips = [wav for wav, _ in samples.values()]                                  # (C, T) each
    start = time.perf_counter()
    tokens = tok.encode(clips, sample_rate=rate)                                   # one batch of different lengths
    recon = tok.decode_list(tokens)
    elapsed = time.perf_counter() - start
    for name, clip, rec in zip(samples, clips, recon):
        zio.save_audio(folder / f"{name}_original.wav", clip, rate)
        zio.save_audio(folder / f"{name}_reconstruction.wav", rec, rate)
    scores = [metrics.audio_metrics(r[None], c.mean(0)[None], rate) for c, r in zip(clips, recon)]
    seconds = sum(c.shape[-1] for c in clips) / rate
    row = {"input": f"{len(clips)} held-out speech clips, {seconds:.1f} s",
           "tokens": int(tokens.lengths.sum()) * tokens.codes.shape[1],
           "bitrate": f"{tok.bitrate:.0f} bit/s", "time_s": round(elapsed, 3)}
    for key in scores[0]:
        row[key] = round(sum(s[key] for s in scores) / len(scores), 4)
    return row


def sample_set(spec: registry.ModelSpec) -> str | None:
    """The bundled sample set a model is shown on: the one of a dataset it was trained on, else the photos."""
    return next((d for d in data.SAMPLE_SETS if d in spec.datasets), None)


def _image_demo(tok, folder: Path) -> dict:
    dataset = sample_set(tok.card_info["spec"])
    samples = data.samples("image", dataset)
    start = time.perf_counter()
    tokens = tok.encode([img for img, in samples.values()])                        # the model's own resize rule
    size = tuple(tokens.meta.get("image_size") or (tok.input_size, tok.input_size))
    originals = torch.cat([zio.resize_center_crop(img[None], size[0]) for img, in samples.values()])
    b, n = len(tokens), tokens.to_sequence().shape[1]
    # prefix-decodable tokenizers: every image from its first k tokens, all (image, k) pairs in one batch
    ks = sorted({k for k in (1, 4, 16, 64) if k < n} | {n}) if tok.prefix_decodable else [n]
    batch = dataclasses.replace(tokens, codes=tokens.codes.repeat(len(ks), *[1] * (tokens.codes.ndim - 1)),
                                lengths=torch.tensor(ks).repeat_interleave(b) if tok.prefix_decodable else None)
    recon = tok.decode(batch, seed=0).view(len(ks), b, *originals.shape[1:])
    elapsed = time.perf_counter() - start
    for i, name in enumerate(samples):
        tiles = torch.cat([originals[i: i + 1], recon[:, i]])
        labels = ["original"] + [f"{k} tok" for k in ks]
        zio.save_image(folder / f"{name}_reconstruction.png", zio.image_grid(tiles, len(tiles), labels=labels))
    bits = n * sum(math.log2(v) for v in tokens.vocab_size_per_depth)  # n positions, each this many bits
    row = {"input": f"{b} test {'photos' if dataset is None else dataset + ' images'}, {size[0]} x {size[1]}",
           "tokens": f"1..{n} per image" if tok.prefix_decodable else f"{n} per image",
           "bitrate": f"{bits:.0f} bit/image", "time_s": round(elapsed, 3)}
    for k, r in zip(ks, recon):
        row[f"psnr@{k}"] = round(float(metrics.psnr(r, originals).mean()), 2)
    row[f"ssim@{n}"] = round(float(metrics.ssim(recon[-1], originals).mean()), 4)
    return row


def _generator_demo(gen, folder: Path, per_class: int = 2) -> dict:
    """A few samples of every class (or 8 unconditional ones), seed 0, written as a labelled grid / audio files."""
    classes = list(range(gen.num_classes)) if gen.num_classes else None
    start = time.perf_counter()
    samples = gen.sample(classes, num_samples=per_class if classes else 8, seed=0)
    elapsed = time.perf_counter() - start
    names = list(getattr(gen, "label_names", None) or [])
    captions = None if classes is None else [names[c] if names else f"class {c}" for c in classes
                                             for _ in range(per_class)]
    zio.save_generated(folder, samples, gen.modality, captions,
                       sample_rate=getattr(gen.paired_model(), "sample_rate", None))
    what = f"{per_class} per class x {len(classes)} classes" if classes else "8 unconditional"
    return {"input": f"{len(samples)} samples ({what}, seed 0), via {gen.tokenizer_name}",
            "time_s": round(elapsed, 3), "samples/s": round(len(samples) / elapsed, 2)}


DEMOS = {("tokenizer", "audio"): _audio_demo, ("tokenizer", "image"): _image_demo,
         ("generator", "audio"): _generator_demo, ("generator", "image"): _generator_demo}


def run_demo(out: Path, names: list[str] | None = None) -> list[dict]:
    """Run the demo and write ``summary.md`` / ``summary.json`` into `out`; returns the rows."""
    torch.manual_seed(0)
    bundled = [n for kind in ("tokenizer", "generator") for n in registry.list_models(kind=kind)
               if registry.model_info(n).bundled]
    names = names or bundled
    unknown = sorted(set(names) - set(bundled))
    if unknown:
        raise ValueError(f"not bundled tokenizers or generators: {unknown}; bundled: {bundled}")
    rows, limits = [], []
    for name in names:
        model = hub.load(name)
        folder = out / name
        row = {"model": name, **DEMOS[model.kind, model.modality](model, folder), "folder": str(folder)}
        rows.append(row)
        limitations = registry.model_info(name).limitations
        if limitations:
            limits.append(f"- {name}: {limitations}")
            (folder / "LIMITATIONS.txt").write_text(limitations + "\n")
        print(f"{name}: done ({row['time_s']} s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "folder"))  # in order of appearance
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    if limits:
        text += "\nWhat these tiny bundled models can and cannot do:\n\n" + "\n".join(limits) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote reconstructions and summary.md / summary.json to {out.resolve()}")
    return rows
