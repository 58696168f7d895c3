"""The one generation table: every image generator scored the same way on Fashion-MNIST (generators.quality.protocol).

    python scripts/generation_table.py                          # every bundled image generator, 1,000 per class
    python scripts/generation_table.py llamagen-gpt-tiny-fashion --per-class 100 --json table.json
    python scripts/generation_table.py llamagen-gpt-tiny-fashion --split validation --per-class 100 --cfg 1 2 3 4
                                                                # choose the CFG scale on the validation split

Rows: the real test and train images and the paired tokenizers' reconstructions of the test set (references), then
each generator at its chosen settings and without CFG; accuracy of the Fashion-MNIST classifier on the conditioning
class, Fréchet distance in its features against the real test set, images/s at batch 1 / 64.
"""

from __future__ import annotations

import argparse
import json

import torch

import zoo
from generators.quality import protocol
from zoo.evaluation import markdown, row_dicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generators", nargs="*", help="registry names (default: every bundled image generator)")
    parser.add_argument("--per-class", type=int, default=1000, help="samples per class")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="the real images the Fréchet distances are measured against")
    parser.add_argument("--cfg", type=float, nargs="+", default=None,
                        help="a sweep: one row per CFG scale for each generator (no speed, no reference rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.generators or [n for n in zoo.list_models(kind="generator", modality="image")
                                if zoo.model_info(n).bundled]
    generators = [zoo.load(n) for n in names]
    if args.cfg:
        rows = [row for gen in generators for scale in args.cfg
                for row in protocol.generator_rows(gen, args.per_class, {"cfg_scale": scale}, speed=False,
                                                   split=args.split, without_cfg=False)]
        table = {"description": f"CFG sweep, {args.per_class} samples per class, against the real {args.split} "
                                "images (generators.quality.protocol)", "columns": protocol.COLUMNS, "rows": rows}
    else:
        table = protocol.generation_table(generators, per_class=args.per_class, split=args.split)
    print(markdown(table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row_dicts(table), f, indent=2)


if __name__ == "__main__":
    main()
