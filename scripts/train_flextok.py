"""Train a tiny FlexTok on crops of the scikit-image photographs (held-out photos never seen) and export it.

    python scripts/train_flextok.py --stage vae --out runs/flextok --vae-steps 3000
    python scripts/train_flextok.py --stage tokenizer --out runs/flextok --steps 8000 --export weights/flextok-tiny-64px
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_flextok.py ...    # 2 processes
    accelerate launch --multi_gpu --num_processes 8 scripts/train_flextok.py ...                  # 8 GPUs

Stage ``vae`` trains the VAE and writes ``OUT/vae/vae.safetensors`` plus its latent scaling factor (``--vae-export
DIR`` also writes it in zoo layout with its measured card); stage ``tokenizer`` loads that VAE, or a VAE model given
by ``--vae-from`` (e.g. the bundled ``flextok-vae-tiny-64px``), freezes it and trains the encoder + FSQ + decoder
(``OUT/tokenizer``). The model config comes from the registry entry `--name`. Both stages run on the zoo's one
training loop (zoo.training.train_loop: checkpoints, ``--resume``, schedule, logging). Measure a checkpoint and
write the card with

    zoo eval --checkpoint runs/flextok/tokenizer/checkpoints/checkpoint_7 --name flextok-tiny-64px \\
        --export weights/flextok-tiny-64px
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import zoo
from tokenizers_img.flextok import FlexTok, FlexTokConfig, FlexTokVAE, FlexTokVAEConfig
from tokenizers_img.flextok.train import FlexTokTrainConfig, VAETrainConfig, train_tokenizer, train_vae
from zoo import checkpoints, data
from zoo.evaluation import markdown
from zoo.training import add_config_arguments, config_from_arguments


def export_vae(state_dict: dict, scaling: float, spec, out: str) -> None:
    """The VAE of a tokenizer entry `spec`, in zoo layout, with its held-out card table."""
    fields = {f.name for f in dataclasses.fields(FlexTokVAEConfig)} - {"architecture", "vae_scaling_factor"}
    vae = FlexTokVAE(FlexTokVAEConfig(**{k: v for k, v in spec.config.items() if k in fields},
                                      vae_scaling_factor=scaling))
    checkpoints.load_into(vae.vae, state_dict, source="the trained VAE")
    vae_name = "flextok-vae-" + spec.name.removeprefix("flextok-")  # flextok-tiny-64px -> flextok-vae-tiny-64px
    vae.card_info["spec"] = zoo.model_info(vae_name) if vae_name in zoo.list_models() else None
    table = vae.eval().evaluate()  # what `zoo eval` measures
    vae.card_info["metrics"] = table
    vae.save_pretrained(out)
    print(markdown(table))
    print(f"VAE exported to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="flextok-tiny-64px", help="registry entry giving the model config")
    parser.add_argument("--stage", choices=("vae", "tokenizer", "all"), default="all")
    parser.add_argument("--out", default="runs/flextok", help="run folder")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the trained tokenizer")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of the stage")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--vae-export", default=None, help="zoo-layout folder for the trained VAE (with its card)")
    parser.add_argument("--vae-from", default=None,
                        help="tokenizer stage: start from this VAE model (registry name or local-dir:PATH)")
    add_config_arguments(parser, VAETrainConfig, "vae-")
    add_config_arguments(parser, FlexTokTrainConfig)
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
        tc = config_from_arguments(VAETrainConfig, args, "vae-")
        vae, scaling = train_vae(FlexTokConfig(**spec.config), tc, photos, str(out / "vae"), resume=args.resume)
        if state.is_main_process:
            checkpoints.save_state_dict(vae.state_dict(), vae_file)
            with checkpoints.atomic_path(vae_meta) as tmp:
                tmp.write_text(json.dumps({"vae_scaling_factor": scaling}))
            print(f"VAE written to {vae_file} (latent scaling factor {scaling:.4f})")
            if args.vae_export:
                export_vae(vae.state_dict(), scaling, spec, args.vae_export)
        state.wait_for_everyone()

    if args.stage in ("tokenizer", "all"):
        if args.vae_from:
            vae_model = zoo.load(args.vae_from)
            if not isinstance(vae_model, FlexTokVAE) or vae_model.config.vae_scaling_factor is None:
                parser.error(f"--vae-from {args.vae_from}: expected a FlexTok VAE with a latent scaling factor")
            scaling, vae_state, source = vae_model.config.vae_scaling_factor, vae_model.vae.state_dict(), args.vae_from
            if state.is_main_process:  # the run folder stays self-contained (zoo eval --checkpoint reads it)
                checkpoints.save_state_dict(vae_state, vae_file)
                with checkpoints.atomic_path(vae_meta) as tmp:
                    tmp.write_text(json.dumps({"vae_scaling_factor": scaling, "vae_from": args.vae_from}))
        elif vae_file.is_file():
            scaling = json.loads(vae_meta.read_text())["vae_scaling_factor"]
            vae_state, source = checkpoints.read_state_dict(vae_file), str(vae_file)
        else:
            parser.error(f"{vae_file} is missing: run --stage vae first, or give --vae-from")
        model = FlexTok(FlexTokConfig(**{**spec.config, "vae_scaling_factor": scaling}))
        checkpoints.load_into(model.vae, vae_state, source=source)
        tc = config_from_arguments(FlexTokTrainConfig, args)
        model = train_tokenizer(model, tc, photos, str(out / "tokenizer"), resume=args.resume)
        if args.export and state.is_main_process:
            model.card_info["spec"] = spec
            model.save_pretrained(args.export)
            print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
