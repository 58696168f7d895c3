"""Train a tiny FlexTok on crops of the scikit-image photographs (held-out photos never seen) and export it.

    python scripts/train_flextok.py --stage vae --out runs/flextok --vae-steps 3000
    python scripts/train_flextok.py --stage tokenizer --out runs/flextok --steps 8000 --export weights/flextok-tiny-64px
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_flextok.py ...    # 2 processes
    accelerate launch --multi_gpu --num_processes 8 scripts/train_flextok.py ...                  # 8 GPUs

Stage ``vae`` trains the VAE and writes ``OUT/vae/vae.safetensors`` plus its latent scaling factor; stage
``tokenizer`` loads that VAE, freezes it and trains the encoder + FSQ + decoder (``OUT/tokenizer``). The model
config comes from the registry entry `--name`. Measure and write the card with scripts/eval_flextok.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import zoo
from tokenizers_img.flextok import FlexTok, FlexTokConfig
from tokenizers_img.flextok.train import FlexTokTrainConfig, VAETrainConfig, train_tokenizer, train_vae
from zoo import checkpoints, data


def add_fields(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    for field in dataclasses.fields(cls):
        parser.add_argument(f"--{prefix}{field.name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{field.name}",
                            type=type(field.default), default=field.default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="flextok-tiny-64px", help="registry entry giving the model config")
    parser.add_argument("--stage", choices=("vae", "tokenizer", "all"), default="all")
    parser.add_argument("--out", default="runs/flextok", help="run folder")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the trained tokenizer")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the stage")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    add_fields(parser, VAETrainConfig, "vae-")
    add_fields(parser, FlexTokTrainConfig)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import PartialState

    state = PartialState()
    spec = zoo.model_info(args.name)
    out = Path(args.out)
    photos = data.photos("train")
    vae_file, vae_meta = out / "vae" / "vae.safetensors", out / "vae" / "vae.json"

    if args.stage in ("vae", "all"):
        tc = VAETrainConfig(**{f.name: getattr(args, f"vae_{f.name}") for f in dataclasses.fields(VAETrainConfig)})
        vae, scaling = train_vae(FlexTokConfig(**spec.config), tc, photos, str(out / "vae"), resume=args.resume)
        if state.is_main_process:
            checkpoints.save_state_dict(vae.state_dict(), vae_file)
            with checkpoints.atomic_path(vae_meta) as tmp:
                tmp.write_text(json.dumps({"vae_scaling_factor": scaling}))
            print(f"VAE written to {vae_file} (latent scaling factor {scaling:.4f})")
        state.wait_for_everyone()

    if args.stage in ("tokenizer", "all"):
        if not vae_file.is_file():
            parser.error(f"{vae_file} is missing: run --stage vae first")
        scaling = json.loads(vae_meta.read_text())["vae_scaling_factor"]
        model = FlexTok(FlexTokConfig(**{**spec.config, "vae_scaling_factor": scaling}))
        checkpoints.load_into(model.vae, checkpoints.read_state_dict(vae_file), source=str(vae_file))
        tc = FlexTokTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FlexTokTrainConfig)})
        model = train_tokenizer(model, tc, photos, str(out / "tokenizer"), resume=args.resume)
        if args.export and state.is_main_process:
            model.card_info["spec"] = spec
            model.save_pretrained(args.export)
            print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
