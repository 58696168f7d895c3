"""Train a LlamaGen VQ tokenizer on Fashion-MNIST (the bundled `llamagen-vq-tiny-fashion`), and export it.

    python scripts/train_vq.py --out runs/vq-fashion --export weights/llamagen-vq-tiny-fashion

The recipe is tokenizers_img/vq/train.py on the zoo's one training loop (``--resume`` continues bit-exactly); the
architecture is the registry entry ``--name``. The export's card carries the test-split table of `zoo eval`.
"""

from __future__ import annotations

import argparse

import torch

import zoo
from tokenizers_img.vq import VQConfig
from tokenizers_img.vq.train import VQTrainConfig, train
from zoo.training import add_config_arguments, config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/vq-fashion", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--name", default="llamagen-vq-tiny-fashion", help="registry entry giving the architecture")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final model")
    add_config_arguments(parser, VQTrainConfig)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tc = config_from_arguments(VQTrainConfig, args)
    spec = zoo.model_info(args.name)
    model = train(tc, VQConfig(**spec.config), args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process and args.export:
        model.card_info["spec"] = spec
        model.card_info["metrics"] = model.evaluate()
        model.save_pretrained(args.export)
        print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
