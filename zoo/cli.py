"""The ``zoo`` command: list, info, demo, encode, decode, export, download, convert."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoints, hub, io as zio, registry
from .api import Tokens
from .evaluation import add_parser as add_eval_parser


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
        row = [name, spec.kind, spec.modality, spec.codebook_size or "-", spec.tokens_per_item or "-",
               "yes" if hub.is_available_offline(spec) else "no"]
        rows.append(row + ([_param_count(spec)] if args.params else []))
    header = ["name", "kind", "modality", "codebook", "tokens", "offline"] + (["params"] if args.params else [])
    print(_table(rows, header))
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
    return str(cards.model_card(model))


def cmd_info(args) -> int:
    print(card_text(args.name))
    return 0


def _load(name: str, args, kind: str):
    """Load `name`, refusing in one line a registered model of another kind before anything is built."""
    if not name.startswith(("local-dir:", "hf-hub:")):
        spec = registry.model_info(name)
        if spec.kind != kind:
            raise ValueError(f"{name} is {'an' if spec.kind[0] in 'aeiou' else 'a'} {spec.kind}, not a {kind}: "
                             f"`zoo {args.command}` needs a {kind} (`zoo list --kind {kind}` lists them)")
    model = hub.load(name, device=getattr(args, "device", None))
    if model.kind != kind:
        raise ValueError(f"{name} is {'an' if model.kind[0] in 'aeiou' else 'a'} {model.kind}, not a {kind}")
    return model


def _unique_stems(files) -> None:
    stems = [p.stem for p in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"several inputs share the file name(s) {clashes}: their outputs would overwrite each other")


def output_targets(output: str, stems: list[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Where each output goes. ``-o`` is a file when it has a suffix and is not an existing folder (then there must
    be exactly one output, with one of `suffixes`), otherwise a folder getting ``<stem><suffixes[0]>`` files."""
    out = Path(output)
    if out.suffix and not out.is_dir():
        if out.suffix.lower() not in suffixes:
            raise ValueError(f"-o {output}: {what} writes {' / '.join(suffixes)} files; give a name ending in one "
                             f"of them, or a folder (a name without a suffix)")
        if len(stems) != 1:
            raise ValueError(f"-o {output} names one file but there are {len(stems)} outputs: give a folder")
        return [out]
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {output}: exists and is not a folder")
    return [out / f"{stem}{suffixes[0]}" for stem in stems]


def cmd_encode(args) -> int:
    tok = _load(args.name, args, "tokenizer")
    files = zio.list_files(args.inputs, tok.input_suffixes)
    if not files:
        raise ValueError(f"no input files found ({tok.name} reads {' / '.join(tok.input_suffixes)})")
    _unique_stems(files)
    targets = output_targets(args.output, [p.stem for p in files], (".safetensors",), "zoo encode")
    for path, target in tqdm(list(zip(files, targets)), desc="encode", disable=len(files) < 2):
        tokens = tok.encode_file(path)
        tokens.save(target)
        print(f"{path} -> {target}: codes {tuple(tokens.codes.shape)} ({tokens.layout})")
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
    """--seed / --steps, where the model's decoder takes them."""
    kwargs = {}
    if args.seed is not None:
        if not tok.stochastic_decode:
            raise ValueError(f"--seed: {tok.name} decodes deterministically (no noise to seed)")
        kwargs["seed"] = args.seed
    if args.steps is not None:
        if "steps" not in tok.default_decode_kwargs():
            raise ValueError(f"--steps: {tok.name}'s decoder has no sampling steps")
        kwargs["steps"] = args.steps
    return kwargs


def coarse_to_fine_grid(tok, tokens: Tokens, counts: list[int], **decode_kwargs) -> torch.Tensor:
    """One image's reconstructions from its first k tokens for every k in `counts`, decoded in one batch (per-item
    ``lengths``) and tiled left to right with the token count under each: ``(3, H', W')``."""
    item = tokens[0]
    n = item.codes.shape[1]
    bad = [k for k in counts if not 1 <= k <= n]
    if bad:
        raise ValueError(f"--tokens: counts must be in 1..{n} (tokens in the file), got {bad}")
    batch = dataclasses.replace(item, codes=item.codes.expand(len(counts), n), lengths=torch.tensor(counts))
    images = tok.decode(batch, **decode_kwargs)
    return zio.image_grid(images, ncols=len(counts), labels=[f"{k}" for k in counts])


def cmd_decode(args) -> int:
    tok = _load(args.name, args, "tokenizer")
    files = zio.list_files(args.inputs, (".safetensors",))
    if not files:
        raise ValueError("no token files found")
    _unique_stems(files)
    counts = _token_counts(args.tokens) if args.tokens else None
    if counts and not (tok.prefix_decodable and tok.modality == "image"):
        raise ValueError(f"--tokens (a coarse-to-fine grid) needs an image tokenizer that decodes prefixes; "
                         f"{tok.name} does not")
    decode_kwargs = _decode_kwargs(tok, args)
    suffixes = (".png",) if counts else tok.output_suffixes
    targets = output_targets(args.output, [p.stem for p in files], suffixes, "zoo decode")
    for path, target in tqdm(list(zip(files, targets)), desc="decode", disable=len(files) < 2):
        tokens = Tokens.load(path)
        if len(tokens) != 1:
            raise ValueError(f"{path}: holds {len(tokens)} items; zoo decode writes one file per token file")
        tok.check_tokens(tokens)
        if counts:
            zio.save_image(target, coarse_to_fine_grid(tok, tokens, counts, **decode_kwargs))
        else:
            tok.decode_to_file(tokens, target, **decode_kwargs)
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
    if spec.config_from_checkpoint is not None:  # reads the file's own config, fetching what it names (a VAE config)
        spec.config_from_checkpoint(path)
    return 0


def cmd_convert(args) -> int:
    spec = registry.model_info(args.name)
    if spec.filter_fn is None:
        raise SystemExit(f"{args.name} has no official-checkpoint converter")
    if args.sha256:
        checkpoints.read_state_dict(args.checkpoint, sha256=args.sha256)  # checks the bytes before converting
    model = hub.load_official(spec, args.checkpoint)
    model.eval().save_pretrained(args.output)
    print(f"converted {args.checkpoint} -> {args.output} (load it with zoo.load('local-dir:{args.output}'))")
    return 0


def _class_ids(gen, values: list[str] | None) -> list[int] | None:
    """--class values: ids, or names from the generator's `label_names`."""
    if values is None:
        return None
    names = list(getattr(gen, "label_names", None) or [])
    ids = []
    for value in values:
        if value.lstrip("-").isdigit():
            ids.append(int(value))
        elif value in names:
            ids.append(names.index(value))
        else:
            raise ValueError(f"--class {value!r}: give a class id" + (f" or one of {names}" if names else ""))
    return ids


def _prompt(gen, path: str | None, count: int | None):
    """--prompt FILE --prompt-tokens K: the first K tokens (reading order) of FILE under the paired tokenizer."""
    if path is None:
        if count is not None:
            raise ValueError("--prompt-tokens needs --prompt FILE")
        return None
    if count is None or count < 1:
        raise ValueError("--prompt FILE needs --prompt-tokens K (K >= 1: how many of its first tokens to continue)")
    tok = gen.paired_model()
    seq = tok.to_sequence(tok.encode_file(path))                                     # (1, L, codebooks)
    if count >= seq.shape[1]:
        raise ValueError(f"--prompt-tokens {count}: {path} has only {seq.shape[1]} tokens under {tok.name}")
    return seq[:, :count, 0] if seq.shape[-1] == 1 else seq[:, :count]


def cmd_generate(args) -> int:
    gen = _load(args.name, args, "generator")
    labels = _class_ids(gen, args.classes)
    prompt = _prompt(gen, args.prompt, args.prompt_tokens)
    kwargs = {} if prompt is None else {"prompt": prompt}
    samples = gen.sample(labels, num_samples=args.num_samples, cfg_scale=args.cfg, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, steps=args.steps, seed=args.seed, progress=True,
                         **kwargs)
    names = list(getattr(gen, "label_names", None) or [])
    per_item = [] if labels is None else [c for c in labels for _ in range(args.num_samples)]
    captions = [names[c] if names else f"class {c}" for c in per_item] or None
    paired = gen.paired_model()
    files = zio.save_generated(args.output, samples, gen.modality, captions,
                               sample_rate=getattr(paired, "sample_rate", None))
    print(f"{len(samples)} samples -> {', '.join(str(f) for f in files[-2:])}" + (" ..." if len(files) > 2 else ""))
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
    p.add_argument("--params", action="store_true", help="also count parameters (builds each model on 'meta')")
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
            p.add_argument("--tokens", help="prefix-decodable image tokenizers: comma-separated token counts, e.g. "
                                            "1,2,4,...,256: writes one PNG grid of reconstructions, coarse to fine")
            p.add_argument("--seed", type=int, default=None, help="stochastic decoders: noise seed")
            p.add_argument("--steps", type=int, default=None, help="sampling decoders: number of steps")
        p.set_defaults(func=func)

    p = sub.add_parser("generate", help="sample from a generator; a labelled PNG grid or a folder of files")
    p.add_argument("name")
    p.add_argument("--class", dest="classes", nargs="+", metavar="C", help="class ids (or names), each -n times")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="samples per class")
    p.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (iterative generators)")
    p.add_argument("--seed", type=int, default=None, help="sample k of each class uses seed + k")
    p.add_argument("--prompt", default=None, metavar="FILE",
                   help="continue this image / audio file: its first --prompt-tokens tokens under the paired "
                        "tokenizer start every sample (e.g. 15 tokens = 0.2 s at 75 tokens/s)")
    p.add_argument("--prompt-tokens", type=int, default=None, metavar="K")
    p.add_argument("-o", "--output", required=True, help="grid.png (images), or a folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_generate)

    add_eval_parser(sub)

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
