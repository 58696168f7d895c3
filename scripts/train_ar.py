"""Train a class-conditional generator (a LlamaGen GPT, Token-Shuffle, TokenBridge: any generator entry) on a
tokenizer's codes of Fashion-MNIST or spoken digits, and export it.

    python scripts/train_ar.py --out runs/ar-fashion --export weights/llamagen-gpt-tiny-fashion
    python scripts/train_ar.py --out runs/ar-fashion --resume                     # continue (bit-exact on CPU)
    python scripts/train_ar.py --tokenizer local-dir:path/to/vq --name llamagen-gpt-tiny-fashion --out runs/ar-x
    python scripts/train_ar.py --name token-shuffle-gpt-tiny-fashion --out runs/ts-fashion      # Token-Shuffle s=2
    python scripts/train_ar.py --name llamagen-gpt-tiny-spoken-digits --dataset spoken-digits --out runs/ar-digits
    python scripts/train_ar.py --name tokenbridge-tiny-fashion --out runs/tb-fashion                 # TokenBridge
    python scripts/train_ar.py --name xar-tiny-fashion --out runs/xar-fashion                        # xAR
    python scripts/train_ar.py --name xar-tiny-fashion --set entity=image --out runs/xar-image       # a variant
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_ar.py ...       # 2 processes
    accelerate launch scripts/train_ar.py ...                                                   # GPUs

The recipe is generators/trainer.py on the zoo's one training loop (zoo.training.train_loop): the train split is
encoded once by ``--tokenizer`` (a registry name or local-dir:PATH; default: the entry's paired tokenizer) and
cached in ``--out/tokens/`` (reused on ``--resume``, refused for another tokenizer); the architecture is the
registry entry ``--name``, with ``--set FIELD=VALUE`` changing config fields (JSON values). AdamW (0.9, 0.95), weight decay 0.05, warmup + cosine, gradient clipping 1.0, CFG label
dropout, an EMA of the weights (``--ema-decay``). ``--export DIR`` writes the EMA model in zoo layout with its card.
"""

from __future__ import annotations

import argparse
import json

import torch

import zoo
from generators.trainer import GeneratorTrainConfig, export, train
from zoo import hub, registry
from zoo.training import add_config_arguments, config_from_arguments

HELP = {"steps": "global steps", "batch_size": "sequences per step and process", "lr": "peak learning rate",
        "ema_decay": "EMA decay of the exported weights", "train_items": "only the first N train images (0 = all)",
        "save_every": "a complete checkpoint every N steps", "warmup_steps": "linear warmup, then cosine"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ar-fashion", help="run folder (Accelerate checkpoints, cached codes)")
    parser.add_argument("--name", default="llamagen-gpt-tiny-fashion", help="registry entry giving the architecture")
    parser.add_argument("--tokenizer", default=None,
                        help="registry name or local-dir:PATH of the tokenizer (default: the entry's tokenizer)")
    parser.add_argument("--export", default=None, metavar="DIR", help="zoo-layout folder for the final EMA model")
    add_config_arguments(parser, GeneratorTrainConfig, help=HELP)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a config field of the entry (JSON value, e.g. --set entity=image)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = zoo.model_info(args.name)
    if spec.kind != "generator":
        parser.error(f"--name {args.name}: not a generator entry (a {spec.kind})")
    tc = config_from_arguments(GeneratorTrainConfig, args)
    fields = hub.spec_config(spec, **parse_overrides(parser, args.set))
    try:
        config = registry.get_architecture(spec.architecture).config_class(**fields)
    except (TypeError, ValueError) as err:
        parser.error(f"--name {args.name} with --set {' '.join(args.set) or '-'}: {err}")
    result = train(tc, config, args.tokenizer or spec.tokenizer, args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process and args.export:
        export(result.ema, spec, args.export)
        print(f"exported the EMA weights to {args.export} (tokenizer {result.ema.config.tokenizer})")


def parse_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``FIELD=VALUE`` strings -> {field: JSON value (or the plain string)}."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        try:
            out[field] = json.loads(value)
        except json.JSONDecodeError:
            out[field] = value
    return out


if __name__ == "__main__":
    main()
