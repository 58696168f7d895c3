"""The generation tables: every generator scored the same way on held-out data, images on Fashion-MNIST
(generators.quality.protocol), audio on spoken digits (generators.quality.audio_protocol).

    python scripts/generation_table.py                          # every bundled image generator, 1,000 per class
    python scripts/generation_table.py --modality audio         # every bundled audio generator, 100 per digit
    python scripts/generation_table.py llamagen-gpt-tiny-fashion --per-class 100 --json table.json
    python scripts/generation_table.py llamagen-gpt-tiny-fashion --split validation --per-class 100 --cfg 1 2 3 4
                                                                # choose the CFG scale on the validation split
    python scripts/generation_table.py token-shuffle-gpt-tiny-fashion --split validation --per-class 100 \\
        --cfg 2 3 --cfg-schedule constant half-linear                # and the CFG schedule
    python scripts/generation_table.py tokenbridge-tiny-fashion --split validation --per-class 100 --cfg 2 3 \\
        --temperature 0.9 1.0 --steps 16                             # and the temperature
    python scripts/generation_table.py xar-tiny-fashion --split validation --per-class 100 --cfg 2 3 --steps 10 20
    python scripts/generation_table.py local-dir:runs/xar-image/export --per-class 1000    # a model not registered

Rows: the real test data and real train data and the paired tokenizers' reconstructions of the test set
(references), then each generator at its chosen settings and without CFG; the judge's accuracy on the conditioning
class, Fréchet distance in its features against the real test set (audio: also nearest-neighbour distances to the
train clips, near-copies), items/s at batch 1 / 64. The judge follows the generators' modality (all must share it).
"""

from __future__ import annotations

import argparse
import json

import torch

import zoo
from generators.quality import audio_protocol, protocol
from zoo.evaluation import markdown, row_dicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generators", nargs="*", help="registry names or local-dir:PATH (default: every bundled "
                                                          "generator of --modality)")
    parser.add_argument("--modality", choices=("image", "audio"), default="image",
                        help="without names: which bundled generators")
    parser.add_argument("--per-class", type=int, default=None, help="samples per class (default: 1,000 for "
                                                                     "images, 100 for audio)")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="the real images the Fréchet distances are measured against")
    parser.add_argument("--cfg", type=float, nargs="+", default=None,
                        help="a sweep: one row per CFG scale for each generator (no speed, no reference rows)")
    parser.add_argument("--cfg-schedule", nargs="+", default=None, metavar="S",
                        help="with --cfg: also sweep these CFG schedules (generators that take cfg_schedule, e.g. "
                             "the GPTs: constant, linear, half-linear, cosine)")
    parser.add_argument("--temperature", type=float, nargs="+", default=None, metavar="T",
                        help="with --cfg: also sweep the sampling temperature")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="with --cfg: also sweep the sampling steps (iterative generators)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.generators or [n for n in zoo.list_models(kind="generator", modality=args.modality)
                                if zoo.model_info(n).bundled]
    generators = [zoo.load(n) for n in names]
    modalities = {gen.modality for gen in generators}
    if len(modalities) != 1:
        parser.error(f"one table per modality: these generators make {sorted(modalities)}")
    judge = protocol if modalities == {"image"} else audio_protocol
    if args.per_class is None:
        args.per_class = 1000 if judge is protocol else 100
    if (args.cfg_schedule or args.temperature or args.steps) and not args.cfg:
        parser.error("--cfg-schedule, --temperature and --steps are sweep options: give --cfg too")
    if args.cfg:
        schedules = [{"cfg_schedule": s} for s in args.cfg_schedule] if args.cfg_schedule else [{}]
        temperatures = [{"temperature": t} for t in args.temperature] if args.temperature else [{}]
        step_counts = [{"steps": n} for n in args.steps] if args.steps else [{}]
        rows = [row for gen in generators for scale in args.cfg for schedule in schedules for temp in temperatures
                for steps in step_counts
                for row in judge.generator_rows(gen, args.per_class, {"cfg_scale": scale, **schedule, **temp, **steps},
                                                speed=False, split=args.split, without_cfg=False)]
        table = {"description": f"CFG sweep, {args.per_class} samples per class, against the real {args.split} "
                                f"data ({judge.__name__})", "columns": judge.COLUMNS, "rows": rows}
    else:
        table = judge.generation_table(generators, per_class=args.per_class, split=args.split)
    print(markdown(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row_dicts(table), f, indent=2)


if __name__ == "__main__":
    main()
