"""Token-reduction speed: timm vs our ToMe / GTP (and the official ones), on DeiT-S and on the digits ViT.

    python benchmarks/bench_vit_accel.py --threads 2 --batches 1 8 32
    python benchmarks/bench_vit_accel.py --quick                       # a smoke run: batch 1, 3 rounds
    python benchmarks/bench_vit_accel.py --reference-tome ~/src/ToMe --reference-gtp ~/src/GTP-ViT --device cuda
    python benchmarks/bench_vit_accel.py --models digits --threads 1   # only the small trained model

Two model suites (`--models`, default both):
* ``deit-s``: a DeiT-S-sized timm ViT (``deit_small_patch16_224``, 224 px, random weights, random input):
  unpatched timm, our ToMe r=R and our GTP P=R (`--reduction`, default 8), and the official ones when given.
* ``digits``: the small ViT trained here (``zoo.load("vit-tiny-digits")``: 32 px, 64 patches + CLS, 6 blocks,
  width 64), timed on the first held-out digits (normalised, batch B = the first B images), at a reduction suited
  to its 64 patches (`--digits-reduction`, default 4 per block: 65 -> 41 tokens): unpatched, ToMe r=4, GTP P=4
  (ours, and the official ones when given), and two more that are not a per-block reduction, documented:
  - ``hired``: our in-ViT HiRED (`vit_accel.hired`) dropping tokens once, at the setting whose MACs are closest to
    ToMe / GTP at r=4: block 2 keeps 0.625 of the 64 patches (18.10 vs 17.99 MMACs, `HIRED_DIGITS`);
  - ``routing``: the bundled ``vit-tiny-digits-routing`` (learned per-token routing, its own fine-tuned weights,
    threshold 0) and the same model with ``force="full"`` (every token through every block: the unrouted cost of
    the same weights, routers not evaluated); the routed row's second ratio is against that forced-full row. Its
    MACs are input-dependent: the mean over the first max(batches) images run alone. A batch runs each block on
    its longest routed subset (padding masked), so batch > 1 saves less than the per-image MACs say.
  The official GTP is built with the digits model's dimensions and weights.

Everything runs in one process on one input per batch size. Variants are interleaved round-robin (the order
rotates every round) after a warm-up, so load spikes hit them alike; the table gives the median time, and the
speed-up vs unpatched timm (of the same suite) as the median of the per-round (paired) ratios. ToMe and GTP remove
the same number of tokens per block, so they have the same backbone MACs (shown per image, see
`vit_accel.flops`); their difference is the cost of matching vs selection + propagation. Where an official
implementation runs, each of ours gets a second paired ratio, "vs": t(official) / t(ours), so > 1 means ours is
faster.

References, when a checkout path is given (imported at run time only, nothing of theirs is kept):
* ``--reference-tome``: facebookresearch/ToMe, ``tome.patch.timm(model); model.r = R`` on a copy of the same timm
  model (correct for these models: they have no LayerScale).
* ``--reference-gtp``: Ackesnal/GTP-ViT ``models_v3.py``, read as text with two exact replacements before it is
  executed: ``.to("cuda")`` of the spatial graph removed (CPU), and the debug write to a file ``missing`` in every
  propagation removed (it would time file I/O and a device sync). Built with ``norm_layer=LayerNorm(eps=1e-6)`` and
  our weights; its logits are compared with ours.
The machine's load average is printed before and after: on a shared machine, trust only paired ratios. On CPU the
ratios also depend on the memory allocator: glibc malloc serves buffers over its mmap threshold (at most 32 MB) with
fresh pages from the OS and returns freed heap memory, so every forward pays page faults for its large activations;
``MALLOC_*`` settings and ``LD_PRELOAD`` (jemalloc, tcmalloc), when set, are printed with the load.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn

import vit_accel
from vit_accel.flops import count_macs

GTP_PATCHES = [
    ('self.spatial_graph = graph.to("cuda")', "self.spatial_graph = graph"),
    ('        with open("missing", "a") as fp:\n'
     '            fp.write(str((weight_prop.sum(1)==0).to(torch.float).mean(1).mean().item())+"\\n")\n', ""),
]
MODELS = ("deit-s", "digits")
HIRED_DIGITS = dict(token_budget=0.625, layer=2)  # 18.10 MMACs: the closest HiRED setting to ToMe / GTP r=4


def official_tome(path: str, model: nn.Module, r: int) -> nn.Module:
    sys.path.insert(0, path)
    import tome

    official = copy.deepcopy(model)
    tome.patch.timm(official, trace_source=False, prop_attn=True)
    official.r = r
    return official


def _gtp_module(path: str) -> types.ModuleType:
    if "models_v3" in sys.modules and getattr(sys.modules["models_v3"], "__file__", None) == str(
            Path(path, "models_v3.py")):
        return sys.modules["models_v3"]
    source = Path(path, "models_v3.py").read_text()
    for old, new in GTP_PATCHES:
        if source.count(old) != 1:
            raise RuntimeError(f"{path}/models_v3.py: expected exactly one {old.strip()[:40]!r}; another version?")
        source = source.replace(old, new)
    module = types.ModuleType("models_v3")
    module.__file__ = str(Path(path, "models_v3.py"))
    sys.modules["models_v3"] = module  # its @register_model looks the module up there
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def official_gtp(path: str, model: nn.Module, num_prop: int, device: torch.device) -> nn.Module:
    """The official GTP model with the dimensions and weights of the timm ViT `model` (pre-norm, CLS token)."""
    module = _gtp_module(path)
    block, (size, _), (patch, _) = model.blocks[0], model.patch_embed.img_size, model.patch_embed.patch_size
    official = module.GraphPropagationTransformer(  # square images: its spatial graph assumes a square grid
        img_size=size, patch_size=patch,
        num_classes=model.num_classes, embed_dim=model.embed_dim, depth=len(model.blocks),
        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), selection="MixedAttnMax", propagation="GraphProp",
        graph_type="Mixed", num_prop=num_prop, num_neighbours=8, sparsity=1.0, alpha=0.1, token_scale=True)
    official.load_state_dict(model.state_dict(), strict=True)
    official.spatial_graph = official.spatial_graph.to(device)
    return official.eval().to(device)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def macs_per_image(model: nn.Module, images: torch.Tensor) -> float | None:
    """count_macs of one image (the mean over `images` run one at a time if given several); None if not countable."""
    try:
        return sum(count_macs(model, images[i:i + 1]).total for i in range(len(images))) / len(images)
    except (TypeError, AttributeError):  # an official model whose blocks do not look like timm's
        return None


def format_macs(macs: float | None) -> str:
    if macs is None:
        return "-"
    return f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.2f} M"


@dataclass
class Suite:
    """One model and its variants, timed against its unpatched `timm` variant.

    `vs[name]` names a second variant to pair with (ratio t(vs) / t(name)); `macs` is per image.
    """

    model: str
    inputs: Callable[[int], torch.Tensor]
    variants: dict[str, nn.Module]
    macs: dict[str, float | None]
    vs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def deit_suite(args: argparse.Namespace, device: torch.device) -> Suite:
    torch.manual_seed(0)
    base = timm.create_model("deit_small_patch16_224", pretrained=False).eval().to(device)
    r = args.reduction
    variants = {"timm": base,
                f"tome r={r} (ours)": vit_accel.patch(copy.deepcopy(base), "tome", r=r),
                f"gtp P={r} (ours)": vit_accel.patch(copy.deepcopy(base), "gtp", num_prop=r)}
    add_official(args, variants, base, r, device)

    def inputs(batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)

    one = inputs(1)
    return Suite("deit-s", inputs, variants, {n: macs_per_image(m, one) for n, m in variants.items()},
                 vs=official_pairs(variants))


def add_official(args: argparse.Namespace, variants: dict[str, nn.Module], base: nn.Module, r: int,
                 device: torch.device) -> None:
    if args.reference_tome:
        variants[f"tome r={r} (official)"] = official_tome(args.reference_tome, base, r)
    if args.reference_gtp:
        variants[f"gtp P={r} (official)"] = official_gtp(args.reference_gtp, base, r, device)


def official_pairs(variants: dict[str, nn.Module]) -> dict[str, str]:
    """ours -> official of the same method and reduction, where both run."""
    return {name.replace("official", "ours"): name for name in variants
            if "official" in name and name.replace("official", "ours") in variants}


def digits_suite(args: argparse.Namespace, device: torch.device) -> Suite:
    import zoo
    from vit_accel.evaluate import digits
    from vit_accel.models import AcceleratedViT

    wrapped = zoo.load("vit-tiny-digits").eval()
    base = wrapped.vit.to(device)
    images, _ = digits("test")
    size = wrapped.vit.patch_embed.img_size[0]
    if images.shape[-1] != size or max(args.batches) > len(images):
        raise ValueError(f"digits: need at most {len(images)} images of {size} px, got batch {max(args.batches)}")
    images = ((images - wrapped.mean) / wrapped.std).to(device)
    r = args.digits_reduction
    variants = {"timm": base,
                f"tome r={r} (ours)": vit_accel.patch(copy.deepcopy(base), "tome", r=r),
                f"gtp P={r} (ours)": vit_accel.patch(copy.deepcopy(base), "gtp", num_prop=r)}
    add_official(args, variants, base, r, device)
    hired = ", ".join(f"{k}={v}" for k, v in HIRED_DIGITS.items())
    variants[f"hired {hired} (ours)"] = vit_accel.patch(copy.deepcopy(base), "hired", **HIRED_DIGITS)
    notes = []
    try:
        routed = zoo.load("vit-tiny-digits-routing").eval()
    except (KeyError, FileNotFoundError, zoo.WeightsUnavailableError) as err:
        notes.append(f"digits: no routing rows ({err})")
    else:
        config = dataclasses.replace(routed.config, method_kwargs={**routed.config.method_kwargs, "force": "full"})
        full = AcceleratedViT(config)
        full.load_state_dict(routed.state_dict())
        variants["routing (bundled)"] = routed.vit.to(device)
        variants["routing force=full"] = full.eval().vit.to(device)
    sample = images[:max(args.batches)]
    macs = {n: macs_per_image(m, sample if n.startswith("routing (") else sample[:1]) for n, m in variants.items()}
    vs = official_pairs(variants)
    if "routing (bundled)" in variants:
        vs["routing (bundled)"] = "routing force=full"
    return Suite("digits", lambda batch: images[:batch], variants, macs, vs=vs, notes=notes)


def run_suite(suite: Suite, args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for batch in args.batches:
        x = suite.inputs(batch)
        outputs = {name: model(x) for name, model in suite.variants.items()}
        for ours, official in suite.vs.items():
            if "official" in official:
                diff = (outputs[official] - outputs[ours]).abs().max().item()
                same = (outputs[official].argmax(-1) == outputs[ours].argmax(-1)).float().mean().item()
                print(f"{suite.model} batch {batch}: {official} vs ours, max |logit diff| {diff:.2e}, "
                      f"same top-1 {100 * same:.0f} %")
        calls = {name: partial(model, x) for name, model in suite.variants.items()}
        for fn in calls.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(timed(calls[name], device))
        for name, t in times.items():
            ratios = [a / b for a, b in zip(times["timm"], t)]
            row = {"model": suite.model, "batch": batch, "variant": name,
                   "macs_per_image": suite.macs[name], "gmacs_per_image": format_macs(suite.macs[name]),
                   "median_ms": 1e3 * statistics.median(t), "images_per_s": batch / statistics.median(t),
                   "speedup_vs_timm": statistics.median(ratios), "times_s": t}
            if name in suite.vs:
                other = suite.vs[name]
                row.update(vs=other, ratio_vs=statistics.median(a / b for a, b in zip(times[other], t)))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="deit-s: DeiT-S-sized, random weights, 224 px; digits: the bundled vit-tiny-digits")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reduction", type=int, default=8, help="DeiT-S: tokens removed per block (ToMe r = GTP P)")
    parser.add_argument("--digits-reduction", type=int, default=4, help="digits: tokens removed per block")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="batch 1, 3 rounds, 1 warm-up: checks that it runs")
    parser.add_argument("--reference-tome", default=None, help="checkout of facebookresearch/ToMe")
    parser.add_argument("--reference-gtp", default=None, help="checkout of Ackesnal/GTP-ViT")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.warmup = [1], 3, 1

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    builders = {"deit-s": deit_suite, "digits": digits_suite}
    suites = [builders[name](args, device) for name in args.models]

    load_before = os.getloadavg()
    allocator = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "LD_PRELOAD"}
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, device {device}, "
          f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}"
          + (f", allocator settings {allocator}" if allocator else ""))
    for suite in suites:
        for note in suite.notes:
            print(f"note: {note}")
    rows = []
    with torch.inference_mode():
        for suite in suites:
            rows += run_suite(suite, args, device)
    load_after = os.getloadavg()

    lines = [("| model | batch | variant | MACs / image | median ms | images / s | speed-up vs timm (paired median) "
              "| paired ratio vs |"), "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['batch']} | {row['variant']} | {row['gmacs_per_image']} | "
              f"{row['median_ms']:.1f} | {row['images_per_s']:.1f} | {row['speedup_vs_timm']:.2f} | "
              + (f"{row['ratio_vs']:.2f} vs {row['vs']}" if "vs" in row else "") + " |" for row in rows]
    print("\n".join(lines))
    print(f"load average after {load_after[0]:.2f} / {load_after[1]:.2f}"
          + (f" (above {args.threads} threads: timings are contended)" if max(load_before[0], load_after[0])
             > args.threads and device.type == "cpu" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "threads": args.threads, "device": str(device),
                                               "rounds": args.rounds, "warmup": args.warmup,
                                               "load_before": load_before, "load_after": load_after,
                                               "torch": torch.__version__, "timm": timm.__version__}, indent=2))


if __name__ == "__main__":
    main()
