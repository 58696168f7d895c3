"""Train a small KL VAE of MAR's architecture on Fashion-MNIST and export it, quantized post-training, as the
bundled TokenBridge tokenizer `tokenbridge-kl-tiny-fashion`.

    python scripts/train_kl_vae.py --out runs/kl-vae-fashion --export weights/tokenbridge-kl-tiny-fashion \\
        --export-vae weights/mar-kl-tiny-fashion

``--export-vae`` also writes the VAE alone (registry entry `mar-kl-tiny-fashion`, the autoencoder xAR generates
latents of); with ``--vae-of NAME`` and no training it takes the VAE of an already trained tokenizer.

The recipe is tokenizers_img/tokenbridge/train.py on the zoo's one training loop (``--resume`` continues
bit-exactly); the architecture is the registry entry ``--name`` (its VAE fields; the quantizer is not trained). The
export's card carries the test-split table of `zoo eval` (continuous VAE vs 6 bits and fewer).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import zoo
from tokenizers_img.tokenbridge import TokenBridgeTokenizer, TokenBridgeTokenizerConfig
from tokenizers_img.tokenbridge.train import VAETrainConfig, train
from zoo.training import add_config_arguments, config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/kl-vae-fashion", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--name", default="tokenbridge-kl-tiny-fashion", help="registry entry giving the architecture")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final tokenizer")
    add_config_arguments(parser, VAETrainConfig)
    parser.add_argument("--export-vae", default=None, help="zoo-layout folder for the VAE alone")
    parser.add_argument("--vae-name", default="mar-kl-tiny-fashion", help="registry entry of the VAE alone")
    parser.add_argument("--vae-of", default=None, help="no training: export the VAE of this trained tokenizer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tc = config_from_arguments(VAETrainConfig, args)
    spec = zoo.model_info(args.name)
    if args.vae_of:
        export_vae(zoo.load(args.vae_of).autoencoder, args.vae_name, args.export_vae)
        return
    config = TokenBridgeTokenizerConfig(**spec.config)
    vae = train(tc, config.vae_config(), args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process and args.export:
        tok = TokenBridgeTokenizer(dataclasses.replace(config, scaling_factor=vae.config.scaling_factor))
        tok.autoencoder.load_state_dict(vae.state_dict())
        tok.card_info["spec"] = spec
        tok.card_info["metrics"] = tok.eval().evaluate()
        tok.save_pretrained(args.export)
        print(f"exported to {args.export} (scaling factor {vae.config.scaling_factor})")
    if PartialState().is_main_process and args.export_vae:
        export_vae(vae, args.vae_name, args.export_vae)


def export_vae(vae, name: str, out: str | None) -> None:
    if not out:
        raise SystemExit("--export-vae DIR: where to write the VAE")
    vae.card_info["spec"] = zoo.model_info(name)
    vae.save_pretrained(out)
    print(f"exported the VAE alone to {out}")


if __name__ == "__main__":
    main()
