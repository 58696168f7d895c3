"""The ``zoo`` command: list, info, demo, encode, decode, export, download, convert."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, hub, io as zio, registry
from .api import Tokens


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _param_count(spec: registry.ModelSpec) -> str:
    with torch.device("meta"):  # no memory, no init cost: just the shapes
        model = hub.build(spec)
    return f"{model.num_parameters() / 1e6:.1f}M"


def cmd_list(args) -> int:
    names = registry.list_models(args.pattern or "*", kind=args.kind, modality=args.modality)
    rows = []
    for name in names:
        spec = registry.model_info(name)
        rows.append([name, spec.kind, spec.modality, spec.codebook_size or "-", spec.tokens_per_item or "-",
                     _param_count(spec), "yes" if hub.is_available_offline(spec) else "no"])
    print(_table(rows, ["name", "kind", "modality", "codebook", "tokens", "params", "offline"]))
    return 0


def card_text(name: str) -> str:
    """The model card of a registered model: the bundled README, or one rendered from the registry entry."""
    spec = registry.model_info(name)
    if spec.bundled:
        card = hub.bundled_dir(spec) / "README.md"
        if card.is_file():
            return card.read_text()
    from . import cards

    with torch.device("meta"):
        model = hub.build(spec)
    model.card_info["spec"] = spec
    return str(cards.model_card(model))


def cmd_info(args) -> int:
    print(card_text(args.name))
    return 0


def _load(name: str, args):
    return hub.load(name, device=getattr(args, "device", None))


def _unique_stems(files) -> None:
    stems = [p.stem for p in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"several inputs share the file name(s) {clashes}: their outputs would overwrite each other")


def cmd_encode(args) -> int:
    tok = _load(args.name, args)
    files = zio.list_files(args.inputs, zio.AUDIO_SUFFIXES if tok.modality == "audio" else zio.IMAGE_SUFFIXES)
    if not files:
        raise ValueError("no input files found")
    _unique_stems(files)
    out = Path(args.output)
    single = len(files) == 1 and out.suffix == ".safetensors"
    for path in tqdm(files, desc="encode", disable=len(files) < 2):
        if tok.modality == "audio":
            wav, sr = zio.load_audio(path)
            tokens = tok.encode(wav, sample_rate=sr)
        else:
            tokens = tok.encode(zio.load_image(path)[None])
        tokens.meta["model"] = args.name
        target = out if single else out / f"{path.stem}.safetensors"
        tokens.save(target)
        print(f"{path} -> {target}: codes {tuple(tokens.codes.shape)}")
    return 0


def _token_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--tokens: expected comma-separated integers such as 1,4,16,256, got {text!r}") from None
    if not counts:
        raise ValueError("--tokens: give at least one token count")
    return counts


def _decode_kwargs(tok, args) -> dict:
    kwargs = {}
    if getattr(args, "seed", None) is not None:
        kwargs["seed"] = args.seed
    if getattr(args, "steps", None) is not None:
        kwargs["steps"] = args.steps
    if kwargs and tok.modality != "image":
        raise ValueError("--seed / --steps apply to image decoders only")
    return kwargs


def coarse_to_fine_grid(tok, tokens: Tokens, counts: list[int], **decode_kwargs) -> torch.Tensor:
    """One image's reconstructions from its first k tokens for every k in `counts`, decoded in one batch
    (``keep_k`` per item) and tiled left to right with the token count under each: ``(3, H', W')``."""
    codes = tokens.codes[:1]
    n = codes.shape[1]
    bad = [k for k in counts if not 1 <= k <= n]
    if bad:
        raise ValueError(f"--tokens: counts must be in 1..{n} (tokens in the file), got {bad}")
    images = tok.decode(codes.expand(len(counts), n), keep_k=counts, **decode_kwargs)
    return zio.image_grid(images, ncols=len(counts), labels=[f"{k}" for k in counts])


def cmd_decode(args) -> int:
    tok = _load(args.name, args)
    files = zio.list_files(args.inputs, (".safetensors",))
    if not files:
        raise ValueError("no token files found")
    _unique_stems(files)
    counts = _token_counts(args.tokens) if args.tokens else None
    if counts and tok.modality != "image":
        raise ValueError("--tokens (a coarse-to-fine grid) applies to image tokenizers only")
    decode_kwargs = _decode_kwargs(tok, args)
    out = Path(args.output)
    suffix = ".wav" if tok.modality == "audio" else ".png"
    single = len(files) == 1 and out.suffix == suffix
    for path in tqdm(files, desc="decode", disable=len(files) < 2):
        tokens = Tokens.load(path)
        made_by = tokens.meta.get("model")
        if made_by and made_by != args.name:
            print(f"warning: {path} was encoded by {made_by}, decoding with {args.name}", file=sys.stderr)
        target = out if single else out / f"{path.stem}{suffix}"
        if tok.modality == "audio":
            audio = tok.decode(tokens)
            zio.save_audio(target, audio[0], int(tokens.meta.get("sample_rate", tok.sample_rate)))
        elif counts:
            zio.save_image(target, coarse_to_fine_grid(tok, tokens, counts, **decode_kwargs))
        else:
            zio.save_image(target, tok.decode(tokens, **decode_kwargs)[0])
        print(f"{path} -> {target}")
    return 0


def cmd_export(args) -> int:
    model = hub.load(args.name)
    out = Path(args.directory)
    source_card = model.card_info.get("card_path")
    model.save_pretrained(out)
    if source_card:  # keep the measured card of a bundled model rather than a fresh one without numbers
        shutil.copyfile(source_card, out / "README.md")
    print(f"wrote {out}/config.json, model.safetensors, README.md")
    return 0


def cmd_download(args) -> int:
    spec = registry.model_info(args.name)
    if spec.bundled:
        print(f"{args.name} is bundled: {hub.bundled_dir(spec)}")
        return 0
    if spec.hub_file is None:
        raise SystemExit(f"{args.name} has no weights to download")
    path = hub.download(spec.hub_file, what=args.name)
    print(f"{spec.hub_file.repo_id}@{spec.hub_file.revision}/{spec.hub_file.filename} -> {path}")
    return 0


def cmd_convert(args) -> int:
    spec = registry.model_info(args.name)
    if spec.filter_fn is None:
        raise SystemExit(f"{args.name} has no official-checkpoint converter")
    model = hub.build(spec)
    checkpoints.load_into(model, checkpoints.read_state_dict(args.checkpoint, sha256=args.sha256),
                          source=str(args.checkpoint), filter_fn=spec.filter_fn)
    model.card_info["spec"] = spec
    model.eval().save_pretrained(args.output)
    print(f"converted {args.checkpoint} -> {args.output} (load it with zoo.load('local-dir:{args.output}'))")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), names=args.models or None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="tokzoo: discrete tokenizers and their generators")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered models (wildcards allowed)")
    p.add_argument("pattern", nargs="?")
    p.add_argument("--kind", choices=registry.KINDS)
    p.add_argument("--modality", choices=registry.MODALITIES)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="print a model's card")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="run the bundled tokenizers on held-out samples, write outputs and a summary")
    p.add_argument("-o", "--output", default="zoo-demo")
    p.add_argument("--models", nargs="*", help="restrict to these bundled models")
    p.set_defaults(func=cmd_demo)

    for name, func, what in (("encode", cmd_encode, "audio/image files or folders"),
                             ("decode", cmd_decode, "token files (.safetensors) or folders")):
        p = sub.add_parser(name, help=f"{name} {what}")
        p.add_argument("name")
        p.add_argument("inputs", nargs="+", help=what)
        p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
        p.add_argument("--device", default=None)
        if name == "decode":
            p.add_argument("--tokens", help="image tokenizers: comma-separated token counts, e.g. 1,2,4,...,256: "
                                            "writes one PNG grid of reconstructions from coarse to fine")
            p.add_argument("--seed", type=int, default=None, help="image decoders: noise seed")
            p.add_argument("--steps", type=int, default=None, help="image decoders: sampling steps")
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="write a model folder (config.json, model.safetensors, README.md)")
    p.add_argument("name")
    p.add_argument("directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("download", help="fetch a model's pinned weights into the Hub cache")
    p.add_argument("name")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("convert", help="official checkpoint -> zoo model folder")
    p.add_argument("name")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--sha256", default=None, help="expected sha256 of the checkpoint file")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (registry.UnknownModelError, ValueError, FileNotFoundError, checkpoints.CheckpointError,
            hub.WeightsUnavailableError) as err:
        print(f"zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
