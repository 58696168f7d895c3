"""LlamaGen GPT generation speed: ours (static KV cache) against recomputing the prefix and the official `generate`.

    python benchmarks/bench_ar.py --quick                                # tiny sizes, batch 1 and 4, 1 repeat
    python benchmarks/bench_ar.py --quick --reference /tmp/llamagen_official
    python benchmarks/bench_ar.py --reference /tmp/llamagen_official      # GPT-B + fashion, batch 1 / 16 / 64
    python benchmarks/bench_ar.py --device cuda --dtype bfloat16 --reference /tmp/llamagen_official --json ar.json

Models (``--models``), all with class-conditional generation and CFG on (``--cfg-scale``, default 2.0, the official
FID setting of GPT-B; the conditional and null-class rows run as one batch of 2B), greedy decoding (the most likely
token; no random draws), temperature 1, top-k 0, top-p 1, a full token grid per image:

* ``gpt-b``: the size of ``llamagen-gpt-b-c2i-256`` (dim 768, 12 layers, 12 heads, vocabulary 16,384, 16 x 16 = 256
  tokens, 1,000 classes; 111 M parameters), RANDOM weights. With ``--quick`` a reduced stand-in at the same grid
  (dim 64, 2 layers, 4 heads, vocabulary 1,024), so the 256-token loops still run.
* ``fashion``: the registry entry ``llamagen-gpt-tiny-fashion`` (its trained weights when they are available
  offline, otherwise its architecture with random weights), or, when that entry is not registered, a stand-in of the
  same shape (dim 192, 6 layers, 6 heads, vocabulary 512, 8 x 8 = 64 tokens, 10 classes).

Random weights follow the official init (every Linear / Embedding ~ N(0, 0.02^2)) except the output head, which the
official init sets to zero (every logit would be 0 and greedy decoding would always pick code 0): it is drawn from
N(0, 1 / dim), so logits have unit scale and the greedy tokens depend on every weight. The model is built without a
paired tokenizer: only the GPT is timed (no decoding to pixels).

Implementations, per model and batch size (``--batch-sizes``, default 1 16 64):

* ``ours``: ``ARGenerator.generate(labels, cfg_scale=, temperature=1, top_k=0, top_p=1, sample=False)``: one static
  KV cache per call, decode steps attend to the written prefix only, the head on the last position only.
* ``no-cache``: a reference loop written here: at every step the teacher-forced forward (our embeddings, our
  transformer blocks without a cache, causal attention) re-runs over the class token and the whole prefix, the head
  on the last position only (the cheapest honest no-cache loop), then the same CFG and greedy pick. It costs
  ~N/2 times the transformer work of the cached loop for N tokens, so on CPU it is timed only up to
  ``--no-cache-max-batch`` (default 1 on CPU, every batch on CUDA); 0 turns it off.
* ``official`` (``--reference PATH``: a checkout of FoundationVision/LlamaGen, commit ce98ec4 was used; its root goes
  on ``sys.path``, nothing of it is kept here): ``Transformer(ModelArgs(**to_official_config(config)))`` with its
  parameters on the meta device (``accelerate.init_empty_weights``), then ``load_state_dict(to_official(ours
  .state_dict()), strict=True, assign=True)``: it holds the very same weight tensors; then
  ``torch.manual_seed(0); generate(model, labels, N, cfg_scale=, cfg_interval=-1, temperature=1.0, top_k=0,
  top_p=1.0, sample_logits=False)`` as ``sample_c2i.py`` calls it. Ours is seeded identically (greedy decoding draws
  nothing anyway). Its decode loop enters ``torch.backends.cuda.sdp_kernel`` (deprecated: a FutureWarning, silenced
  here; on CUDA it forces the math attention kernel, on CPU it changes nothing); the rest runs on CPU unchanged.

Checks: the greedy tokens of every implementation that ran are compared exactly with ours (on the warm-up round);
any difference is reported with the first differing position and the top-1 / top-2 margin of our guided logits
there. In float32 a difference makes the script exit with status 1 (after the table) unless ``--allow-mismatch``.
In bfloat16 it is reported only: the head's bf16 outputs are quantised (steps of ~0.4 % of a logit), so the
implementations, whose roundings differ (attention over the written prefix vs a masked full cache; cached vs
recomputed), part at the first near-tie, after which the sequences differ.

Timing: one process, implementations interleaved round-robin (the order rotates every round) after one warm-up
round, ``--repeats`` timed rounds; the table gives medians; ``x no-cache`` and ``x official`` are the medians of the
per-round paired ratios t(other) / t(ours) (> 1: ours is faster). tokens/s = generated tokens (batch x N; the CFG
null-class rows are not counted) / median time; images/s = batch / median time.

Peak memory = tensor memory in use at the worst moment of one extra, untimed call beyond what was allocated before
it (the weights are excluded; the KV cache, activations and logits are counted): on CUDA
``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the call; on CPU the call runs under
``torch.profiler.profile(profile_memory=True)`` and its allocation and free events are replayed in time order (the
maximum of the running sum). The official model keeps its KV cache between calls; it is released before its memory
call so that the new one is counted in full. ``--no-memory`` skips these calls. The no-cache loop is not measured.

Timings on a shared machine are noisy: the thread count (``--threads``, default 1) and the load average before and
after are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import zoo
from generators.ar import ARConfig, ARGenerator, to_official, to_official_config
from zoo import hub

MODELS = ("gpt-b", "fashion")
FASHION_ENTRY = "llamagen-gpt-tiny-fashion"
GPT_B = dict(dim=768, n_layer=12, n_head=12, vocab_size=16384, block_size=256, grid_size=(16, 16), num_classes=1000)
GPT_B_QUICK = dict(dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=1024, block_size=256, grid_size=(16, 16),
                   num_classes=1000)
FASHION_STANDIN = dict(dim=192, n_layer=6, n_head=6, vocab_size=512, block_size=64, grid_size=(8, 8), num_classes=10)


# ----------------------------------------------------------------------------------------------------------------
# models


def randomize_head(model: ARGenerator, seed: int) -> ARGenerator:
    """Redraw the output head (zero in the official init) from N(0, 1 / dim)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.output.weight
        w.copy_(torch.randn(w.shape, generator=g) / model.config.dim ** 0.5)
    return model


def random_model(fields: dict[str, Any], seed: int = 0) -> ARGenerator:
    torch.manual_seed(seed)
    return randomize_head(ARGenerator(ARConfig(**fields)).eval(), seed)


def build_ours(key: str, quick: bool) -> tuple[ARGenerator, str]:
    """Our model for a ``--models`` key (CPU, float32, eval, no paired tokenizer) and a note on its weights."""
    if key == "gpt-b":
        fields = GPT_B_QUICK if quick else GPT_B
        what = "reduced GPT-B stand-in (--quick)" if quick else "GPT-B size (llamagen-gpt-b-c2i-256)"
        return random_model(fields), f"{what}, RANDOM weights (official init, head ~ N(0, 1/dim))"
    try:
        spec = zoo.model_info(FASHION_ENTRY)
    except KeyError:
        return (random_model(FASHION_STANDIN),
                f"{FASHION_ENTRY} is not registered: a stand-in of its shape, RANDOM weights")
    if hub.is_available_offline(spec):
        model = zoo.load(spec.name, tokenizer=None)
        return model.eval(), f"{spec.name}: trained weights"
    torch.manual_seed(0)
    model = randomize_head(hub.build(spec, tokenizer=None).eval(), 0)
    return model, f"{spec.name} architecture (no weights available offline), RANDOM weights"


def build_official(path: str, ours: ARGenerator) -> tuple[torch.nn.Module, Callable]:
    """The official ``Transformer`` holding our weight tensors (shared, not copied), and the official ``generate``."""
    root = Path(path)
    if not (root / "autoregressive" / "models" / "gpt.py").is_file():
        raise SystemExit(f"--reference {path}: no autoregressive/models/gpt.py there (a LlamaGen checkout?)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt import ModelArgs, Transformer

    args = ModelArgs(**to_official_config(ours.config))
    try:
        from accelerate import init_empty_weights
    except ImportError:  # a real (random) init, then replaced
        model = Transformer(args)
    else:
        # parameters on the meta device (its non-parameter tensors, freqs_cis and the drop-path schedule, are real)
        with init_empty_weights(include_buffers=False):
            model = Transformer(args)
    model.load_state_dict(to_official(ours.state_dict()), strict=True, assign=True)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"official model: tensors left on the meta device: {meta[:5]}")
    return model.eval(), generate


def release_official_caches(model: torch.nn.Module) -> None:
    """Drop the KV caches and mask that the official `generate` leaves on the model."""
    for layer in model.layers:
        layer.attention.kv_cache = None
    if hasattr(model, "causal_mask"):
        model.causal_mask = None


# ----------------------------------------------------------------------------------------------------------------
# the three generation loops (greedy, CFG)


def ours_generate(model: ARGenerator, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    torch.manual_seed(0)
    tokens = model.generate(labels, cfg_scale=cfg_scale, cfg_interval=-1, cfg_schedule="constant", temperature=1.0,
                            top_k=0, top_p=1.0, sample=False)  # the official rule, whatever the model's default
    return tokens.codes.flatten(1)


@torch.no_grad()
def no_cache_generate(model: ARGenerator, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Greedy generation without a cache: the teacher-forced forward over the whole prefix at every step."""
    n, b = model.config.block_size, len(labels)
    guided = cfg_scale > 1.0
    rows = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    cos, sin = model.rope(labels.device)
    cls = model.cls_embedding.embedding_table(rows)[:, None]
    codes = torch.empty(b, 0, dtype=torch.long, device=labels.device)
    for j in range(n):
        prefix = codes.repeat(2, 1) if guided else codes
        h = torch.cat([cls, model.tok_embeddings(prefix)], dim=1)  # (rows, 1 + j, D)
        for layer in model.layers:
            h = layer(h, cos[: j + 1], sin[: j + 1])
        logits = model.output(model.norm(h[:, -1:]))[:, 0].float()
        if guided:
            cond, uncond = logits.split(b, dim=0)
            logits = uncond + (cond - uncond) * cfg_scale
        probs = F.softmax(logits / 1.0, dim=-1)
        codes = torch.cat([codes, torch.topk(probs, k=1, dim=-1)[1]], dim=1)
    return codes


def official_generate(generate: Callable, model: torch.nn.Module, labels: torch.Tensor, n: int,
                      cfg_scale: float) -> torch.Tensor:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*sdp_kernel.*", category=FutureWarning)
        ids = generate(model, labels, n, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0,
                       sample_logits=False)
    return ids.long()


def first_difference(ours_ids: torch.Tensor, other: torch.Tensor, model: ARGenerator, labels: torch.Tensor,
                     cfg_scale: float) -> str:
    """Where two greedy runs part, and our top-1 / top-2 margin there (a near-tie: float rounding)."""
    differ = (ours_ids != other).any(1)
    row = int(differ.nonzero()[0])
    pos = int((ours_ids[row] != other[row]).nonzero()[0])
    margins = {}

    def grab(step):
        if step["index"] == pos:
            top = torch.topk(step["logits"][row], 2).values
            margins["gap"] = float(top[0] - top[1])

    torch.manual_seed(0)
    model.generate(labels, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0, sample=False,
                   callback=grab)
    return (f"{int(differ.sum())} of {len(differ)} images differ; first: image {row}, token {pos} "
            f"(ours {int(ours_ids[row, pos])}, other {int(other[row, pos])}; our top-1 / top-2 logit gap there "
            f"{margins.get('gap', float('nan')):.2e})")


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
    """Peak tensor memory above the start of one call of `fn`, in MiB (see the module docstring)."""
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


def load_line(when: str) -> tuple[float, float, float]:
    load = os.getloadavg()
    print(f"load average {when} {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    return load


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--cfg-scale", type=float, default=2.0, help="CFG scale (> 1: guided, 2B rows)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="weights and activations of every implementation (logits, RoPE, norms stay float32)")
    parser.add_argument("--reference", default=os.environ.get("LLAMAGEN_REFERENCE"),
                        help="checkout of FoundationVision/LlamaGen (the official generate); skipped when not given")
    parser.add_argument("--no-cache-max-batch", type=int, default=None,
                        help="time the no-cache loop up to this batch size (default: 1 on CPU, all on CUDA; 0: off)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    parser.add_argument("--allow-mismatch", action="store_true", help="report differing greedy tokens, exit 0")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, batch 1 and 4, 1 repeat")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.repeats = [1, 4], 1
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device)
    if args.no_cache_max_batch is None:
        args.no_cache_max_batch = 1 if device.type == "cpu" and not args.quick else max(args.batch_sizes)
    dtype = getattr(torch, args.dtype)

    torch.set_num_threads(args.threads)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, device {device}{gpu}, {args.dtype}, {torch.get_num_threads()} threads")
    load_before = load_line("before")
    print(f"run: models {args.models}, batch sizes {args.batch_sizes}, cfg {args.cfg_scale:g}, greedy, "
          f"{args.repeats} timed rounds after 1 warm-up, no-cache up to batch {args.no_cache_max_batch}"
          + (f", reference {args.reference}" if args.reference else ""))
    if not args.reference:
        print("official generate: skipped (give --reference PATH, a checkout of FoundationVision/LlamaGen)")

    rows: list[dict[str, Any]] = []
    checks: list[str] = []
    failures: list[str] = []
    for key in args.models:
        ours, note = build_ours(key, args.quick)
        ours = ours.cast(device=device, dtype=dtype)
        c = ours.config
        n = c.block_size
        print(f"\n[{key}] {note}; {ours.num_parameters() / 1e6:.1f} M parameters, dim {c.dim}, {c.n_layer} layers, "
              f"{c.n_head} heads, vocabulary {c.vocab_size}, {n} tokens / image, {c.num_classes} classes")
        official = None
        if args.reference:
            official = build_official(args.reference, ours)  # on `device` already: it shares our tensors

        for batch in args.batch_sizes:
            labels = torch.randint(c.num_classes, (batch,), generator=torch.Generator().manual_seed(batch)).to(device)
            fns: dict[str, Callable[[], torch.Tensor]] = {
                "ours": lambda: ours_generate(ours, labels, args.cfg_scale)}
            if batch <= args.no_cache_max_batch:
                fns["no-cache"] = lambda: no_cache_generate(ours, labels, args.cfg_scale)
            if official is not None:
                model, generate = official
                fns["official"] = lambda: official_generate(generate, model, labels, n, args.cfg_scale)
            names = list(fns)
            times: dict[str, list[float]] = {name: [] for name in names}
            outputs: dict[str, torch.Tensor] = {}
            with torch.inference_mode():
                for r in range(args.repeats + 1):  # round 0 is the warm-up
                    order = names[r % len(names):] + names[: r % len(names)]
                    for name in order:
                        elapsed, out = timed(fns[name], device)
                        if r == 0:
                            outputs[name] = out
                        else:
                            times[name].append(elapsed)
                peaks = {}
                if not args.no_memory:
                    peaks["ours"] = peak_memory_mib(fns["ours"], device)
                    if official is not None:
                        release_official_caches(official[0])
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        peaks["official"] = peak_memory_mib(fns["official"], device)
                for name in names[1:]:
                    same = torch.equal(outputs[name].cpu(), outputs["ours"].cpu())
                    line = f"{key} batch {batch}: greedy tokens identical, ours vs {name}: {same}"
                    if not same:
                        line += " (" + first_difference(outputs["ours"], outputs[name].to(device), ours, labels,
                                                        args.cfg_scale) + ")"
                        if dtype == torch.float32:
                            failures.append(line)
                        else:
                            line += " [bfloat16: parts at a near-tie, not a failure]"
                    checks.append(line)
            if official is not None:
                release_official_caches(official[0])
            med = {name: statistics.median(ts) for name, ts in times.items()}
            row = {"model": key, "batch": batch, "tokens_per_image": n, "dtype": args.dtype, "device": str(device),
                   "parameters": ours.num_parameters(),
                   "ours_s": med["ours"], "ours_tokens_per_s": batch * n / med["ours"],
                   "ours_images_per_s": batch / med["ours"], "times_s": times,
                   "distinct_tokens": int(outputs["ours"].unique().numel())}
            for name in names[1:]:
                row[f"{name}_s"] = med[name]
                row[f"{name}_tokens_per_s"] = batch * n / med[name]
                row[f"x_{name}"] = statistics.median(o / s for o, s in zip(times[name], times["ours"]))
                row[f"{name}_tokens_identical"] = torch.equal(outputs[name].cpu(), outputs["ours"].cpu())
            for name, mib in peaks.items():
                row[f"{name}_peak_mib"] = mib
            rows.append(row)
            print(f"  batch {batch}: ours {med['ours']:.3f} s"
                  + "".join(f", {name} {med[name]:.3f} s" for name in names[1:]))
        del ours, official

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "-"

    print(f"\ncfg {args.cfg_scale:g}, greedy, {args.dtype}, {device}{gpu}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} rounds")
    print("| model | batch | ours s | ours tokens/s | ours images/s | no-cache s | x no-cache | official s "
          "| x official | ours peak MiB | official peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['ours_s']:.3f} | {r['ours_tokens_per_s']:.1f} | "
              f"{r['ours_images_per_s']:.3f} | {cell(r, 'no-cache_s', '.3f')} | {cell(r, 'x_no-cache', '.1f')} | "
              f"{cell(r, 'official_s', '.3f')} | {cell(r, 'x_official', '.2f')} | {cell(r, 'ours_peak_mib', '.1f')} | "
              f"{cell(r, 'official_peak_mib', '.1f')} |")
    for line in checks:
        print(line)
    load_after = load_line("after")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "checks": checks, "failures": failures, "args": vars(args),
                       "torch": torch.__version__, "device": str(device) + gpu, "threads": torch.get_num_threads(),
                       "load_before": load_before, "load_after": load_after}, f, indent=2)
    if failures and not args.allow_mismatch:
        print(f"FAILED: {len(failures)} greedy-token mismatches (--allow-mismatch to report only)")
        sys.exit(1)


if __name__ == "__main__":
    main()
