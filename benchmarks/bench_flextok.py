"""FlexTok speed: tokenize / detokenize throughput of ours, optionally against the official implementation.

    python benchmarks/bench_flextok.py                                   # tiny model, batch 1 and 16, 25 steps
    python benchmarks/bench_flextok.py --reference /tmp/flextok_official # + apple/ml-flextok on the same weights
    python benchmarks/bench_flextok.py --models d18-d28 --steps 1 --batch-sizes 1 --repeats 1
    python benchmarks/bench_flextok.py --quick                           # tiny, batch 1, 2 steps, 1 repeat

Models (``--models``):

* ``tiny``: ``flextok-tiny-64px``, the bundled weights when ``weights/flextok-tiny-64px`` exists; otherwise the same
  architecture with random weights and ``vae_scaling_factor = 1.0`` (the registry entry leaves it unset).
* ``d18-d28``: the architecture of ``flextok-d18-d28-dfn`` (2.5 B parameters, 256 x 256 images) with random weights,
  built by ``zoo.hub.build`` with ``vae_scaling_factor = 1.0`` and ``max_timestep = 1.0`` set explicitly (neither is
  known offline for the released checkpoint; neither changes the amount of computation).

Random weights follow the official initialisation, except that every parameter it sets to zero (adaLN, output heads,
biases) is redrawn from N(0, 0.02^2), so that tokens and images depend on every weight and the agreement checks mean
something.

What is timed, per model and batch size, in one process, all implementations interleaved (ours, official, ours, ...)
after one warm-up round, ``--repeats`` rounds, medians reported:

* tokenize: ours ``encode(images)`` (public API, [0, 1] input, checks included); official ``tokenize(images * 2 - 1)``
  under ``torch.no_grad()`` (its README calls it without; no_grad only helps it);
* detokenize, ``--steps`` Euler steps, for every guidance setting: ``g1`` = guidance 1 (one model call per step) and
  ``g7.5-apg`` = guidance 7.5 with APG (the official README setting; conditional + unconditional pass): ours
  ``decode(codes, steps=, guidance_scale=, apg=, seed=)``; official ``detokenize(list_of_[1, N]_ids, vae_image_sizes=,
  timesteps=, guidance_scale=, perform_norm_guidance=, generator=, verbose=False)``. Both draw the same noise (one
  ``(1, C, h, w)`` draw per image from a generator seeded identically), so their images are compared:
  ``max|diff|`` = max over pixels of |ours - (official + 1) / 2 clamped to [0, 1]|.

The official model (``--reference``, a checkout of apple/ml-flextok; needs hydra-core, omegaconf, einops, mup) is
built at run time from its own classes: ``flextok.vae_wrapper.VAE_BASE_CFG`` is updated with our VAE architecture
(``convert.official_vae_config``; the official wrapper takes the VAE architecture from that module-level dict), then
``hydra.utils.instantiate(convert.to_official_config(config))`` (allow-listed targets only) with its parameters on
the meta device (``accelerate.init_empty_weights``), then ``load_state_dict(convert.to_official(ours.state_dict()),
strict=True, assign=True)``: both models hold the same weight tensors, so a full-size pair fits in memory. On CPU
it uses the official SDPA fallback of commit 87d00cc, as the parity fixture was made: materialised masks
(``return_materialized_mask``) and ``FlexAttention.use_flex_attention = False``; on CUDA its default flex_attention
path (compiled during the warm-up), unless ``--official-attention sdpa``. Nothing of it is imported by the package
or the tests.

Peak memory = tensor memory in use at the worst moment of a call beyond what was allocated before it (so weights are
excluded), measured in one extra, untimed call per implementation and operation: on CUDA
``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the call; on CPU (torch has no CPU allocator
statistics; RSS and tracemalloc do not see torch's allocations reliably) the call runs under
``torch.profiler.profile(profile_memory=True)`` and its allocation (op self memory) and free (``[memory]``) events are
replayed in time order; the maximum of the running sum is the peak. Python objects are not counted.

Table columns: ``x official`` = official median time / ours (> 1: ours is faster); ``per-image vs batch 1`` =
images/s at this batch size / images/s at batch 1 of the same implementation. Timings on a shared machine are noisy:
the load average is printed before and after; threads are fixed (``--threads``, default 1).
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
from collections.abc import Callable
from typing import Any

import torch

import zoo
from tokenizers_img.flextok import FlexTok, to_official
from tokenizers_img.flextok.convert import official_vae_config, to_official_config
from zoo import data as zdata
from zoo import io as zio

MODELS = {"tiny": "flextok-tiny-64px", "d18-d28": "flextok-d18-d28-dfn"}
GUIDANCE = {"g1": (1.0, False), "g7.5-apg": (7.5, True)}


# ----------------------------------------------------------------------------------------------------------------
# models


def perturb_zero_params(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every all-zero parameter (official zero init) from N(0, 0.02^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_ours(key: str) -> tuple[FlexTok, str]:
    """Our model for a ``--models`` key, in eval mode on CPU, and a note on where its weights come from."""
    spec = zoo.model_info(MODELS[key])
    if key == "tiny" and zoo.hub.is_available_offline(spec):
        return zoo.load(spec.name), f"{spec.name}: bundled weights"
    fixed = {"vae_scaling_factor": 1.0}
    if key != "tiny":
        fixed["max_timestep"] = 1.0
    torch.manual_seed(0)
    model = zoo.hub.build(dataclasses.replace(spec, config={**spec.config, **fixed})).eval()
    perturb_zero_params(model)
    settings = ", ".join(f"{k} = {v}" for k, v in fixed.items())
    return model, f"{spec.name} architecture, RANDOM weights ({settings} set explicitly)"


def build_official(path: str, ours: FlexTok, device: torch.device, attention: str) -> torch.nn.Module:
    """The official FlexTok built from its own classes (Hydra), holding our weights."""
    sys.path.insert(0, path)
    from flextok import vae_wrapper
    from flextok.model.layers.attention import FlexAttention
    from hydra.utils import instantiate

    from accelerate import init_empty_weights

    sdpa = attention == "sdpa"
    vae_wrapper.VAE_BASE_CFG.update(official_vae_config(ours.config))
    # parameters on the meta device, then our tensors assigned (shared, not copied): a full-size model then needs
    # no second copy of its weights. Buffers (the FSQ tables) are built for real.
    with init_empty_weights(include_buffers=False):
        model = instantiate(to_official_config(ours.config, sdpa_masks=sdpa))
    model.load_state_dict(to_official(ours.state_dict()), strict=True, assign=True)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"official model: tensors left on the meta device: {meta[:5]}")
    if sdpa:
        for m in model.modules():
            if isinstance(m, FlexAttention):
                m.use_flex_attention = False
    return model.eval().to(device)


@torch.no_grad()
def official_tokenize(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Official `tokenize` of images in [0, 1] ``(B, 3, H, W)`` -> ids ``(B, N)``."""
    return torch.cat(model.tokenize(images * 2 - 1))


def official_detokenize(model: torch.nn.Module, ids: list[torch.Tensor], latent_size: int, steps: int, scale: float,
                        apg: bool, device: torch.device) -> torch.Tensor:
    """Official `detokenize` (noise seed 0, like ours with ``seed=0``), mapped to [0, 1] as our `decode` does."""
    images = model.detokenize(ids, vae_image_sizes=latent_size, timesteps=steps, guidance_scale=scale,
                              perform_norm_guidance=apg, generator=torch.Generator(device).manual_seed(0),
                              verbose=False)
    return ((images + 1) / 2).clamp(0, 1)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# ----------------------------------------------------------------------------------------------------------------
# measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak tensor memory above the start of one call of `fn`, in MiB (method: see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # every allocation is the self memory of the op that made it (at its start), every free a "[memory]" event
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def bench_images(size: int, batch: int) -> torch.Tensor:
    """``batch`` held-out scikit-image photographs (repeated as needed), centre-cropped: ``(B, 3, size, size)``."""
    photos = [zio.resize_center_crop(p[None], size)[0] for p in zdata.photos("test").values()]
    return torch.stack([photos[i % len(photos)] for i in range(batch)])


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=25, help="Euler steps per detokenize call")
    parser.add_argument("--guidance", nargs="+", choices=sorted(GUIDANCE), default=list(GUIDANCE))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference", default=os.environ.get("FLEXTOK_REFERENCE"),
                        help="checkout of apple/ml-flextok (official implementation)")
    parser.add_argument("--official-attention", choices=["auto", "sdpa", "flex"], default="auto",
                        help="official attention path: auto = sdpa on CPU (the official fallback), flex on CUDA")
    parser.add_argument("--bf16", action="store_true", help="also time ours with bfloat16 transformers (VAE fp32)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 1, 2 steps, 1 repeat")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batch_sizes, args.steps, args.repeats = ["tiny"], [1], 2, 1

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    attention = args.official_attention
    if attention == "auto":
        attention = "flex" if device.type == "cuda" else "sdpa"
    load_before = os.getloadavg()
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, device {device}{gpu}, {torch.get_num_threads()} threads, "
          f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}")
    print(f"run: models {args.models}, batch sizes {args.batch_sizes}, {args.steps} steps, guidance {args.guidance}, "
          f"{args.repeats} timed rounds after 1 warm-up" + (f", reference {args.reference} ({attention})"
                                                            if args.reference else ", no reference"))

    rows: list[dict[str, Any]] = []
    checks: list[str] = []
    for key in args.models:
        ours, note = build_ours(key)
        c = ours.config
        print(f"\n[{key}] {note}; {ours.num_parameters() / 1e6:.1f} M parameters, {c.image_size} px, "
              f"{c.num_registers} tokens / image")
        impls: dict[str, Any] = {"ours": ours.to(device)}
        if args.bf16:
            impls["ours-bf16"] = copy.deepcopy(ours).cast(dtype=torch.bfloat16)
        if args.reference:
            # on the CPU the official model shares our weight tensors; on an accelerator `.to` copies them
            need = (1.5 if device.type != "cpu" else 0.25) * model_bytes(ours)
            if device.type == "cpu":
                import psutil

                available = psutil.virtual_memory().available
            else:
                available = torch.cuda.mem_get_info(device)[0]
            if need > available:
                print(f"  official model skipped: needs ~{need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available")
            else:
                impls["official"] = build_official(args.reference, ours.cpu(), device, attention)
                ours.to(device)
        latent = c.image_size // c.vae_downsample

        for batch in args.batch_sizes:
            images = bench_images(c.image_size, batch).to(device)
            with torch.inference_mode():
                codes = ours.encode(images).codes
            token_list = list(codes.split(1))
            ops: dict[str, dict[str, Callable[[], Any]]] = {"tokenize": {}}
            for name, m in impls.items():
                if name == "official":
                    ops["tokenize"][name] = lambda m=m, x=images: official_tokenize(m, x)
                else:
                    ops["tokenize"][name] = lambda m=m, x=images: m.encode(x).codes
            for gname in args.guidance:
                scale, apg = GUIDANCE[gname]
                op = ops.setdefault(f"detokenize {gname}", {})
                for name, m in impls.items():
                    if name == "official":
                        op[name] = lambda m=m, s=scale, a=apg, ids=token_list, size=latent: official_detokenize(
                            m, ids, size, args.steps, s, a, device)
                    else:
                        op[name] = lambda m=m, s=scale, a=apg, ids=codes: m.decode(ids, steps=args.steps,
                                                                                guidance_scale=s, apg=a, seed=0)
            times = {(o, n): [] for o, fns in ops.items() for n in fns}
            outputs: dict[tuple[str, str], Any] = {}
            for r in range(args.repeats + 1):  # round 0 is the warm-up
                for o, fns in ops.items():
                    for n, fn in fns.items():
                        elapsed, outputs[(o, n)] = timed(fn, device)
                        if r:
                            times[(o, n)].append(elapsed)
            for (o, n), ts in times.items():
                med = statistics.median(ts)
                row = {"model": key, "batch": batch, "op": o, "impl": n, "median_s": med, "images_per_s": batch / med,
                       "times_s": ts, "steps": args.steps if o != "tokenize" else None}
                if not args.no_memory:
                    row["peak_mib"] = peak_memory_mib(ops[o][n], device)
                rows.append(row)
            if "official" in impls:
                ours_t = outputs[("tokenize", "ours")]
                off_t = outputs[("tokenize", "official")].to(ours_t.device)
                same = int((ours_t != off_t).sum())
                checks.append(f"{key} batch {batch}: tokens identical to official: {same == 0}"
                              + (f" ({same} of {ours_t.numel()} differ)" if same else ""))
                for o in ops:
                    if o != "tokenize":
                        diff = float((outputs[(o, "ours")].float() - outputs[(o, "official")].float()).abs().max())
                        checks.append(f"{key} batch {batch} {o}: images max|diff| vs official {diff:.2e}")
            print(f"  batch {batch}: done")
        del impls, ours

    def find(model, batch, op, impl):
        return next((r for r in rows if (r["model"], r["batch"], r["op"], r["impl"]) == (model, batch, op, impl)), None)

    print("\n| model | batch | op | impl | median s | images/s | x official | per-image vs batch 1 | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        off = find(r["model"], r["batch"], r["op"], "official")
        one = find(r["model"], 1, r["op"], r["impl"])
        vs = f"{off['median_s'] / r['median_s']:.2f}" if off and r["impl"] != "official" else "-"
        scaling = f"{r['images_per_s'] / one['images_per_s']:.2f}x" if one and r["batch"] > 1 else "-"
        mem = f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-"
        print(f"| {r['model']} | {r['batch']} | {r['op']} | {r['impl']} | {r['median_s']:.3f} | "
              f"{r['images_per_s']:.2f} | {vs} | {scaling} | {mem} |")
    for line in checks:
        print(line)
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "checks": checks, "args": vars(args), "torch": torch.__version__,
                       "device": str(device), "threads": torch.get_num_threads(),
                       "load_before": load_before, "load_after": load_after}, f, indent=2)


if __name__ == "__main__":
    main()
