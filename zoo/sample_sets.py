"""Sample sets: many samples of a class-conditional generator written to a folder (one file per item), sharded
across processes with Accelerate and resumable, as FID-style evaluation sets are made. `scripts/generate_image.py`
and `scripts/generate_audio.py` are its command lines (one per modality; the rules are in their docstrings).

Item ``i`` (0 <= i < n) is class ``i % num_classes`` (or ``--class``) drawn with seed ``--seed + i`` (the
generator's per-item seeds), written atomically to ``OUT/<i:06d>.png`` (images) or ``.wav`` (audio, at the paired
tokenizer's sample rate). Process ``r`` of ``w`` takes the items ``i % w == r``; items already written are skipped.
``OUT/generation.json`` records the model and the settings (a folder made with other ones is refused);
``OUT/index.csv`` lists ``file,label,seed``; ``--npz FILE`` packs the set (images: ``images`` uint8
``(n, H, W, 3)``; audio: ``audio`` float32 ``(n, T)`` and ``sample_rate``; both: ``labels``, ``seeds``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

import zoo
from zoo import io as zio
from zoo.checkpoints import atomic_path

SETTINGS = {"cfg": "cfg_scale", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "steps": "steps"}
SUFFIX = {"image": ".png", "audio": ".wav"}


def item_file(out: Path, i: int, modality: str = "image") -> Path:
    return out / f"{i:06d}{SUFFIX[modality]}"


def item_label(i: int, num_classes: int, cls: int | None) -> int:
    return cls if cls is not None else i % num_classes


def parse_args(argv: list[str] | None, modality: str, doc: str) -> argparse.Namespace:
    what = {"image": "images", "audio": "clips"}[modality]
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="generator: registry name, local-dir:PATH or hf-hub:org/repo")
    p.add_argument("-n", "--num", type=int, required=True, help=f"number of {what}")
    p.add_argument("--out", default=None, help=f"folder of {SUFFIX[modality][1:].upper()}s (the resumable store)")
    p.add_argument("--npz", default=None, help=f"also pack all n {what} into this .npz")
    p.add_argument("--class", dest="cls", type=int, default=None, help="one class for every item")
    p.add_argument("--seed", type=int, default=0, help="item i uses seed SEED + i")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="0 = off")
    p.add_argument("--top-p", type=float, default=None, help="1 = off")
    p.add_argument("--steps", type=int, default=None, help="sampling steps, for generators that take them")
    p.add_argument("--batch-size", type=int, default=64, help="items per generate call and process")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1:
        p.error("-n and --batch-size must be positive")
    if args.out is None and args.npz is None:
        p.error("give --out DIR and/or --npz FILE")
    if args.npz is not None and not args.npz.endswith(".npz"):
        p.error("--npz: the file name must end with .npz")
    return args


def record(gen, args: argparse.Namespace) -> dict:
    """What makes an item: the model (name and full config) and the settings (None = the model's default)."""
    return {"model": args.name, "config": json.loads(json.dumps(gen.zoo_config(), default=list)),
            "class": args.cls, "seed": args.seed, "settings": {k: getattr(args, k) for k in SETTINGS}}


def check_record(path: Path, rec: dict) -> None:
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old != rec:
        diff = sorted(k for k in set(old) | set(rec) if old.get(k) != rec.get(k))
        raise SystemExit(f"{path.parent} holds samples made with other settings ({', '.join(diff)} differ): "
                         "use another --out folder")


def write_item(path: Path, sample: torch.Tensor, modality: str, sample_rate: int | None) -> None:
    if modality == "image":
        zio.save_image(path, sample)
    else:
        zio.save_audio(path, sample, sample_rate)


def pack_npz(out: Path, npz: Path, n: int, labels: list[int], seeds: list[int], modality: str) -> None:
    arrays = {"labels": np.asarray(labels, dtype=np.int64), "seeds": np.asarray(seeds, dtype=np.int64)}
    if modality == "image":
        arrays["images"] = np.stack([np.asarray(zio.tensor_to_pil(zio.load_image(item_file(out, i))))
                                     for i in range(n)])
    else:
        clips = [zio.load_audio(item_file(out, i, modality)) for i in range(n)]
        lengths, rates = {c.shape[-1] for c, _ in clips}, {sr for _, sr in clips}
        if len(lengths) != 1 or len(rates) != 1:
            raise SystemExit(f"--npz: the clips differ in length ({sorted(lengths)}) or sample rate "
                             f"({sorted(rates)}): keep the folder instead")
        arrays["audio"] = np.stack([c.mean(0).numpy() for c, _ in clips]).astype(np.float32)
        arrays["sample_rate"] = np.asarray(rates.pop(), dtype=np.int64)
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def main(argv: list[str] | None, modality: str, doc: str) -> dict:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    args = parse_args(argv, modality, doc)
    if args.threads:
        torch.set_num_threads(args.threads)
    # CPU processes (ACCELERATE_USE_CPU=1, or torchrun on a machine without CUDA) join one gloo group
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (
        not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    state = PartialState(cpu=cpu)
    rank, world = state.process_index, state.num_processes
    out = Path(args.out) if args.out else Path(args.npz[: -len(".npz")] + "_" + SUFFIX[modality][1:])
    gen = zoo.load(args.name, device=state.device)
    if gen.kind != "generator" or gen.modality != modality or gen.num_classes is None:
        raise SystemExit(f"{args.name}: not a class-conditional {modality} generator")
    if args.cls is not None and not 0 <= args.cls < gen.num_classes:
        raise SystemExit(f"--class must be in 0..{gen.num_classes - 1}")
    sample_rate = getattr(gen.paired_model(), "sample_rate", None) if modality == "audio" else None
    settings = {SETTINGS[k]: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    rec = record(gen, args)
    path = out / "generation.json"
    if state.is_main_process:
        check_record(path, rec)
        out.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(rec, indent=2, sort_keys=True))
    state.wait_for_everyone()
    check_record(path, rec)

    mine = range(rank, args.num, world)
    todo = [i for i in mine if not item_file(out, i, modality).is_file()]
    for start in range(0, len(todo), args.batch_size):
        items = todo[start: start + args.batch_size]
        labels = torch.tensor([item_label(i, gen.num_classes, args.cls) for i in items])
        samples = gen.sample(labels, seed=[args.seed + i for i in items], **settings)
        for i, sample in zip(items, samples):
            write_item(item_file(out, i, modality), sample.cpu(), modality, sample_rate)
    print(f"process {rank}/{world}: wrote {len(todo)}, skipped {len(mine) - len(todo)} already written", flush=True)
    state.wait_for_everyone()

    labels = [item_label(i, gen.num_classes, args.cls) for i in range(args.num)]
    seeds = [args.seed + i for i in range(args.num)]
    if state.is_main_process:
        with atomic_path(out / "index.csv") as tmp:
            tmp.write_text("file,label,seed\n" + "".join(f"{item_file(out, i, modality).name},{label},{seed}\n"
                                                         for i, (label, seed) in enumerate(zip(labels, seeds))))
        if args.npz:
            pack_npz(out, Path(args.npz), args.num, labels, seeds, modality)
            print(f"packed {args.num} {'images' if modality == 'image' else 'clips'} into {args.npz}")
    state.wait_for_everyone()
    return {"written": len(todo), "skipped": len(mine) - len(todo), "out": out}
