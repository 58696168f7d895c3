"""Token-reduction speed on a DeiT-S-sized timm ViT (224 px, random weights): timm vs our ToMe vs our GTP.

    python benchmarks/bench_vit_accel.py --threads 2 --batches 1 8 32
    python benchmarks/bench_vit_accel.py --quick                       # a smoke run: batch 1, 3 rounds
    python benchmarks/bench_vit_accel.py --reference-tome ~/src/ToMe --reference-gtp ~/src/GTP-ViT --device cuda

Everything runs in one process on one input per batch size. Variants are interleaved round-robin (the order
rotates every round) after a warm-up, so load spikes hit them alike; the table gives the median time, and the
speed-up vs unpatched timm as the median of the per-round (paired) ratios. ToMe and GTP remove the same number of
tokens per block (`--reduction`, default 8), so they have the same backbone MACs (shown per image, see
`vit_accel.flops`); their difference is the cost of matching vs selection + propagation.

References, when a checkout path is given (imported at run time only, nothing of theirs is kept):
* ``--reference-tome``: facebookresearch/ToMe, ``tome.patch.timm(model); model.r = R`` on a copy of the same timm
  model (correct for this model: it has no LayerScale).
* ``--reference-gtp``: Ackesnal/GTP-ViT ``models_v3.py``, read as text with two exact replacements before it is
  executed: ``.to("cuda")`` of the spatial graph removed (CPU), and the debug write to a file ``missing`` in every
  propagation removed (it would time file I/O and a device sync). Built with ``norm_layer=LayerNorm(eps=1e-6)`` and
  our weights; its logits are compared with ours.
The machine's load average is printed before and after: on a shared machine, trust only paired ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import types
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


def official_tome(path: str, model: nn.Module, r: int) -> nn.Module:
    sys.path.insert(0, path)
    import tome

    official = copy.deepcopy(model)
    tome.patch.timm(official, trace_source=False, prop_attn=True)
    official.r = r
    return official


def official_gtp(path: str, model: nn.Module, num_prop: int, device: torch.device) -> nn.Module:
    source = Path(path, "models_v3.py").read_text()
    for old, new in GTP_PATCHES:
        if source.count(old) != 1:
            raise RuntimeError(f"{path}/models_v3.py: expected exactly one {old.strip()[:40]!r}; another version?")
        source = source.replace(old, new)
    module = types.ModuleType("models_v3")
    module.__file__ = str(Path(path, "models_v3.py"))
    sys.modules["models_v3"] = module  # its @register_model looks the module up there
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    official = module.GraphPropagationTransformer(
        img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True,
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


def gmacs(model: nn.Module, device: torch.device) -> str:
    try:
        return f"{count_macs(model, torch.randn(1, 3, 224, 224, device=device)).gmacs:.2f}"
    except (TypeError, AttributeError):  # an official model whose blocks do not look like timm's
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reduction", type=int, default=8, help="tokens removed per block (ToMe r = GTP P)")
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
    torch.manual_seed(0)
    base = timm.create_model("deit_small_patch16_224", pretrained=False).eval().to(device)
    r = args.reduction
    variants = {"timm": base,
                f"tome r={r} (ours)": vit_accel.patch(copy.deepcopy(base), "tome", r=r),
                f"gtp P={r} (ours)": vit_accel.patch(copy.deepcopy(base), "gtp", num_prop=r)}
    if args.reference_tome:
        variants[f"tome r={r} (official)"] = official_tome(args.reference_tome, base, r)
    if args.reference_gtp:
        variants[f"gtp P={r} (official)"] = official_gtp(args.reference_gtp, base, r, device)
    macs = {name: gmacs(model, device) for name, model in variants.items()}

    load_before = os.getloadavg()
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} threads, device {device}, "
          f"load average before {load_before[0]:.2f} / {load_before[1]:.2f}")
    rows = []
    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
            outputs = {name: model(x) for name, model in variants.items()}
            for name in variants:
                if "official" in name:
                    ours = outputs[name.replace("official", "ours")]
                    print(f"batch {batch}: {name} vs ours, max |logit diff| {(outputs[name] - ours).abs().max():.2e}")
            calls = {name: partial(model, x) for name, model in variants.items()}
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
                rows.append({"batch": batch, "variant": name, "gmacs_per_image": macs[name],
                             "median_ms": 1e3 * statistics.median(t), "images_per_s": batch / statistics.median(t),
                             "speedup_vs_timm": statistics.median(ratios)})
    load_after = os.getloadavg()

    lines = ["| batch | variant | GMACs / image | median ms | images / s | speed-up vs timm (paired median) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['batch']} | {row['variant']} | {row['gmacs_per_image']} | {row['median_ms']:.1f} | "
              f"{row['images_per_s']:.1f} | {row['speedup_vs_timm']:.2f} |" for row in rows]
    print("\n".join(lines))
    print(f"load average after {load_after[0]:.2f} / {load_after[1]:.2f}"
          + (f" (above {args.threads} threads: timings are contended)" if max(load_before[0], load_after[0])
             > args.threads and device.type == "cpu" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "threads": args.threads, "device": str(device),
                                               "load_before": load_before, "load_after": load_after,
                                               "torch": torch.__version__, "timm": timm.__version__}, indent=2))


if __name__ == "__main__":
    main()
