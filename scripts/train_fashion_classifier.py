"""Train the Fashion-MNIST classifier that judges every image generator (`fashion-mnist-classifier`), and export it.

    python scripts/train_fashion_classifier.py --out runs/fashion-classifier --export weights/fashion-mnist-classifier

The recipe is generators/quality/train.py on the zoo's one training loop (``--resume`` continues a run bit-exactly).
The export's card carries the validation and test accuracy (`zoo eval fashion-mnist-classifier`).
"""

from __future__ import annotations

import argparse

import torch

import zoo
from generators.quality.train import ClassifierTrainConfig, train
from zoo.training import add_config_arguments, config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fashion-classifier", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final model")
    add_config_arguments(parser, ClassifierTrainConfig)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tc = config_from_arguments(ClassifierTrainConfig, args)
    model = train(tc, args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process and args.export:
        model.card_info["spec"] = zoo.model_info("fashion-mnist-classifier")
        model.card_info["metrics"] = model.evaluate()
        model.save_pretrained(args.export)
        print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
