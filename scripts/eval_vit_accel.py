"""Token reduction on the digits ViT trained here: MACs per image, held-out top-1, agreement with the unpatched model.

    python scripts/eval_vit_accel.py                 # prints one markdown table
    python scripts/eval_vit_accel.py --json out.json # and writes the rows

Every method of vit_accel at several reduction levels (vit_accel.evaluate.LEVELS: ToMe r, GTP num_prop, HiRED
token budget and layer, the routing model's eval threshold) on the 297 held-out digits (zoo.data.digits). Methods
whose module is missing are skipped with a note. MACs: vit_accel.flops.count_macs (linear layers, convolutions
and attention matmuls on the tokens each actually gets), per image; routing's is the mean over the images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

import zoo
from vit_accel.evaluate import compare, digits, markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="vit-tiny-digits", help="the unpatched model (registry name or local-dir:)")
    parser.add_argument("--routed", default="vit-tiny-digits-routing", help="the trained routing model")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = zoo.load(args.base)
    try:
        routed = zoo.load(args.routed)
    except (KeyError, FileNotFoundError, zoo.WeightsUnavailableError) as err:
        print(f"note: no routing model ({err})")
        routed = None
    images, labels = digits("heldout")
    rows = compare(base, images, labels, routed=routed, note=lambda line: print(f"note: {line}"))
    print(f"\nHeld-out digits ({len(labels)} images), {args.base}; routing rows: {args.routed}.\n")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)


if __name__ == "__main__":
    main()
