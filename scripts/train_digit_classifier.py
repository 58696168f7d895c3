"""Train the spoken-digit classifier that judges every audio generator (`spoken-digit-classifier`), and export it.

    python scripts/train_digit_classifier.py --out runs/digit-classifier-v2 --threads 1 \\
        --export weights/spoken-digit-classifier

The recipe is generators/quality/audio_train.py on the zoo's one training loop (``--resume`` continues a run
bit-exactly); the data is `zoo.data.spoken_digits` (espeak-ng, spoken once and cached). The export's card carries the
test accuracy (`zoo eval spoken-digit-classifier`); the validation accuracy is printed as well.
"""

from __future__ import annotations

import argparse

import torch

import zoo
from generators.quality.audio_train import DigitClassifierTrainConfig, train
from zoo.training import add_config_arguments, config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digit-classifier", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final model")
    add_config_arguments(parser, DigitClassifierTrainConfig)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tc = config_from_arguments(DigitClassifierTrainConfig, args)
    model = train(tc, args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        for split in ("validation", "test"):
            print(f"{split} accuracy: {model.evaluate(split)['rows'][0][2]} %")
        if args.export:
            model.card_info["spec"] = zoo.model_info("spoken-digit-classifier")
            model.card_info["metrics"] = model.evaluate()
            model.save_pretrained(args.export)
            print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
