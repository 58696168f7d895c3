"""Evaluate a WavTokenizer on held-out speech against two same-bitrate references; optionally export it.

    python scripts/eval_wavtokenizer.py wavtokenizer-tiny-75tps
    python scripts/eval_wavtokenizer.py --checkpoint runs/wt75/checkpoints/checkpoint_15 \
        --name wavtokenizer-tiny-75tps --export weights/wavtokenizer-tiny-75tps

With --export, the model (from an Accelerate checkpoint of scripts/train_wavtokenizer.py) is written in zoo layout
and its model card carries the table printed here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import zoo
from tokenizers_audio.wavtokenizer import WavTokenizer, WavTokenizerConfig
from tokenizers_audio.wavtokenizer.evaluate import reference_table
from zoo.cards import metrics_text
from zoo.checkpoints import load_into, read_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="registry name or local-dir:PATH to evaluate")
    parser.add_argument("--checkpoint", help="Accelerate checkpoint folder (holds model.safetensors)")
    parser.add_argument("--name", help="registry entry giving the config of --checkpoint (and the card)")
    parser.add_argument("--export", help="write the model in zoo layout, with the measured card, here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.checkpoint and not args.name:
        parser.error("--checkpoint needs --name (the registry entry giving its config)")
    if not args.checkpoint and not args.model:
        parser.error("give a model (registry name or local-dir:PATH) or --checkpoint with --name")
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        spec = zoo.model_info(args.name)
        model = WavTokenizer(WavTokenizerConfig(**spec.config))
        path = Path(args.checkpoint) / "model.safetensors"
        load_into(model, read_state_dict(path), source=str(path))
        model.card_info["spec"] = spec
        model.eval()
    else:
        model = zoo.load(args.model)
    table = reference_table(model)
    print(metrics_text(table))
    if args.export:
        model.card_info["metrics"] = {k: table[k] for k in ("description", "columns", "rows")}
        out = Path(args.export)
        model.save_pretrained(out)
        print(f"exported to {out}")


if __name__ == "__main__":
    main()
