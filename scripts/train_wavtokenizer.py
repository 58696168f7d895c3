"""Train a tiny WavTokenizer on espeak-ng speech and export it in zoo layout (with its measured model card).

    python scripts/train_wavtokenizer.py --name wavtokenizer-tiny-75tps --steps 6000 --out runs/wt75
    python scripts/train_wavtokenizer.py --init wavtokenizer-tiny-75tps --data speech+spoken-digits ...  # fine-tune
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_wavtokenizer.py ...  # 2 processes
    accelerate launch --multi_gpu --num_processes 8 scripts/train_wavtokenizer.py ...                 # 8 GPUs

The model config comes from the registry entry `--name`; `--export DIR` writes the final model in zoo layout.
The loop (checkpoints, `--resume`, schedule, logging) is zoo.training.train_loop. To measure a model on held-out
speech and write the numbers into its card:

    zoo eval --checkpoint runs/wt75/checkpoints/checkpoint_15 --name wavtokenizer-tiny-75tps \\
        --export weights/wavtokenizer-tiny-75tps
"""

from __future__ import annotations

import argparse

import torch

import zoo
from tokenizers_audio.wavtokenizer.model import WavTokenizerConfig
from tokenizers_audio.wavtokenizer.train import TrainConfig, train
from zoo import data
from zoo.training import add_config_arguments, config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="wavtokenizer-tiny-75tps", help="registry entry giving the model config")
    parser.add_argument("--out", default="runs/wavtokenizer", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final model (default: none)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    parser.add_argument("--init", default=None,
                        help="fine-tune: start the generator from this zoo model (registry name or folder) of the "
                             "same config; the discriminators start fresh")
    parser.add_argument("--data", default="speech", choices=["speech", "speech+spoken-digits"],
                        help="train clips: zoo.data.speech('train'), or those and zoo.data.spoken_digits('train'), "
                             "each set drawn about equally often (the same training voices and more; never a "
                             "validation or test voice)")
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = zoo.model_info(args.name)
    model_config = WavTokenizerConfig(**spec.config)
    train_config = config_from_arguments(TrainConfig, args)
    from accelerate import PartialState

    with PartialState().main_process_first():  # the speech set is generated once, by the main process
        clips = data.speech("train")
        if args.data == "speech+spoken-digits":  # each source drawn about equally often
            digits = list(data.spoken_digits("train")[0])
            clips = clips * max(1, round(len(digits) / len(clips))) + digits
    init_state = None
    if args.init:
        init = zoo.load(args.init)
        if init.config != model_config:
            raise SystemExit(f"--init {args.init}: its config differs from entry {args.name}'s")
        init_state = init.state_dict()
    model = train(model_config, train_config, clips, args.out, resume=args.resume, init_state=init_state)
    if args.export:
        if PartialState().is_main_process:
            model.card_info["spec"] = spec
            model.save_pretrained(args.export)
            print(f"exported to {args.export}")


if __name__ == "__main__":
    main()
