"""Evaluate a FlexTok on held-out photos (PSNR / SSIM at k = 1, 4, 16, 64, ... tokens, bicubic baselines).

    python scripts/eval_flextok.py flextok-tiny-64px
    python scripts/eval_flextok.py --checkpoint runs/flextok/tokenizer/checkpoints/checkpoint_7 --run runs/flextok \
        --name flextok-tiny-64px --export weights/flextok-tiny-64px

With --export, the model (an Accelerate checkpoint of scripts/train_flextok.py, with the VAE scaling factor
from the run folder) is written in zoo layout and its model card carries the table printed here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import zoo
from tokenizers_img.flextok import FlexTok, FlexTokConfig
from tokenizers_img.flextok.evaluate import reference_table
from zoo.cards import metrics_text
from zoo.checkpoints import load_into, read_state_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="registry name or local-dir:PATH to evaluate")
    parser.add_argument("--checkpoint", help="Accelerate checkpoint folder of the tokenizer stage")
    parser.add_argument("--run", help="the run folder of --checkpoint (holds vae/vae.json)")
    parser.add_argument("--name", help="registry entry giving the config of --checkpoint (and the card)")
    parser.add_argument("--export", help="write the model in zoo layout, with the measured card, here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.checkpoint and not (args.name and args.run):
        parser.error("--checkpoint needs --name (the registry entry giving its config) and --run")
    if not args.checkpoint and not args.model:
        parser.error("give a model (registry name or local-dir:PATH) or --checkpoint with --name and --run")
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        spec = zoo.model_info(args.name)
        scaling = json.loads((Path(args.run) / "vae" / "vae.json").read_text())["vae_scaling_factor"]
        model = FlexTok(FlexTokConfig(**{**spec.config, "vae_scaling_factor": scaling}))
        path = Path(args.checkpoint) / "model.safetensors"
        state = read_state_dict(path)  # the training objective's state: the tokenizer under "model."
        if not all(k.startswith("model.") for k in state):
            raise SystemExit(f"{path}: expected the keys of scripts/train_flextok.py's objective ('model.*')")
        load_into(model, {k[len("model."):]: v for k, v in state.items()}, source=str(path))
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
