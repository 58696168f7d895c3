"""``zoo eval``: measure a model on its family's held-out data, print the table, optionally export the model with it.

    zoo eval wavtokenizer-tiny-75tps                       # a registered model
    zoo eval local-dir:weights/my-flextok --json rows.json # a zoo folder; the rows also as JSON
    zoo eval --checkpoint runs/flextok/tokenizer/checkpoints/checkpoint_7 --name flextok-tiny-64px \\
        --export weights/flextok-tiny-64px                 # a training checkpoint, exported with the table in its card

What is measured is the model's `ZooModel.evaluate` (each family delegates to its ``evaluate.py``): a table
``{"description", "columns", "rows"}``, the ``metrics`` block of a model card. A training checkpoint is a folder
written by `zoo.training.train_loop` (``RUN/.../checkpoints/checkpoint_<i>``); the registry entry ``--name`` gives
the config, and the family's ``train.py`` says how the checkpoint maps to its model
(``model_from_checkpoint(checkpoint, spec, run)``; ``--run`` is the run folder, for the FlexTok tokenizer the one
holding ``vae/vae.json``, by default found from the checkpoint's path).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import registry

CARD_KEYS = ("description", "columns", "rows")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand on `subparsers` (``parser.add_subparsers()``); it runs `run`."""
    p = subparsers.add_parser(
        "eval", help="measure a model on held-out data; optionally export it with the table in its card",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="NAME",
                   help="registry name or local-dir:PATH (with --checkpoint: the registry entry, as --name)")
    p.add_argument("--checkpoint", metavar="DIR", help="a training checkpoint folder (zoo.training.train_loop)")
    p.add_argument("--name", dest="entry", metavar="ENTRY",
                   help="with --checkpoint: the registry entry giving its config (and the card)")
    p.add_argument("--run", metavar="RUN", help="with --checkpoint: the run folder (default: from the checkpoint path)")
    p.add_argument("--export", metavar="DIR", help="write the model in zoo layout here, the table in its card")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--split", default="test", choices=("test", "validation"),
                   help="test (default; reported once, what cards show) or validation (for choosing settings)")
    p.add_argument("--json", metavar="FILE", help="also write the rows (one object per row) to this file")
    p.set_defaults(func=run)
    return p


def model_from_checkpoint(checkpoint: str | Path, entry: str, run: str | Path | None = None):
    """The model of a training checkpoint folder, with the config of registry entry `entry`, through its family's
    ``train.model_from_checkpoint`` (the ``train`` module next to the model class)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such folder")
    spec = registry.model_info(entry)
    model_cls = registry.get_architecture(spec.architecture)
    module = model_cls.__module__.rpartition(".")[0] + ".train"
    try:
        reader = importlib.import_module(module).model_from_checkpoint
    except (ImportError, AttributeError):
        raise ValueError(f"{entry}: the family of {model_cls.__name__} has no training checkpoints to read "
                         f"({module}.model_from_checkpoint)") from None
    return reader(checkpoint, spec, run)


def load_model(args: argparse.Namespace):
    """The model `args` name: a training checkpoint (``--checkpoint`` with ``--name`` or NAME), else NAME (a
    registry name or ``local-dir:PATH``)."""
    if args.checkpoint:
        entry = args.entry or args.model
        if not entry:
            raise ValueError("--checkpoint needs --name ENTRY: the registry entry giving its config")
        if args.entry and args.model and args.entry != args.model:
            raise ValueError(f"two models named: {args.model} and --name {args.entry}")
        return model_from_checkpoint(args.checkpoint, entry, args.run)
    if args.entry or args.run:
        raise ValueError("--name and --run go with --checkpoint")
    if not args.model:
        raise ValueError("give a model (registry name or local-dir:PATH), or --checkpoint DIR with --name ENTRY")
    from .hub import load

    return load(args.model)


def markdown(table: dict[str, Any]) -> str:
    """A table (``description``, ``columns``, ``rows``) as its description and a markdown table."""
    lines = [table["description"], "", "| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def row_dicts(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows as ``{column: value}`` objects (what ``--json`` writes)."""
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def run(args: argparse.Namespace) -> int:
    """``zoo eval``: load, `evaluate`, print; ``--json`` writes the rows, ``--export`` the model with its card."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export and args.split != "test":
        raise ValueError("--export writes the test table into the card: drop --split validation")
    model = load_model(args).eval()
    try:
        table = model.evaluate(split=args.split)
    except NotImplementedError as err:
        print(f"zoo eval: error: {err}", file=sys.stderr)
        return 2
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(json.dumps(row_dicts(table), indent=2) + "\n")
        print(f"rows written to {args.json}")
    if args.export:
        model.card_info["metrics"] = {key: table[key] for key in CARD_KEYS}
        model.save_pretrained(Path(args.export))
        print(f"exported to {args.export} (load it with zoo.load('local-dir:{args.export}'))")
    return 0
