"""Token-Shuffle's cost side: training tokens/s and sampling images/s of the plain tiny GPT (s = 1) and its
Token-Shuffle twin (s = 2, same width and depth), measured in the same run.

    python benchmarks/bench_token_shuffle.py                       # the two bundled Fashion-MNIST models, CPU
    python benchmarks/bench_token_shuffle.py --threads 2 --repeats 5 --json ts.json
    python benchmarks/bench_token_shuffle.py --device cuda

Models (``--models``, registry names; default ``llamagen-gpt-tiny-fashion`` and ``token-shuffle-gpt-tiny-fashion``):
their bundled weights when present, else their architecture with random weights (the timings do not depend on the
weights: every sample has the full token grid).

* **training**: one optimizer step of the recipe (`generators/ar/train.py`: teacher-forced cross-entropy over all
  64 tokens, backward, gradient clipping, AdamW) on a batch of ``--train-batch`` (64) real Fashion-MNIST code grids
  of the paired tokenizer (its train split's first images); tokens/s = batch x 64 / median step time.
* **sampling**: ``generate`` (codes only) and ``sample`` (codes, then the VQ decoder) at batch 1 and 64, the model's
  defaults (CFG 2.0: conditional and null-class rows in one batch), per-item seeds; images/s = batch / median time.

Implementations are interleaved round-robin after one warm-up round; ratios are medians of per-round ratios
``t(first model) / t(other)`` (> 1: the other is faster). The load average before and after is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

import zoo
from generators.ar.train import fashion_mnist_images, param_groups
from zoo import hub

DEFAULT = ("llamagen-gpt-tiny-fashion", "token-shuffle-gpt-tiny-fashion")


def load(name: str, device: str):
    spec = zoo.model_info(name)
    try:
        return zoo.load(name, device=device), "trained weights"
    except (FileNotFoundError, OSError, ValueError):
        return hub.build(spec).to(device).eval(), "RANDOM weights (no trained weights available)"


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, load average before "
          f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())}")

    models = {}
    for name in args.models:
        gen, what = load(name, args.device)
        c = gen.config
        print(f"{name}: {what}; {sum(p.numel() for p in gen.parameters()) / 1e6:.2f} M parameters, dim {c.dim}, "
              f"{c.n_layer} layers, window {c.shuffle_window} ({c.seq_len} positions, {c.slots} tokens per step)")
        models[name] = gen
    tok = next(iter(models.values())).paired_model()
    images, labels = fashion_mnist_images("train")
    with torch.no_grad():
        codes = tok.to_sequence(tok.encode(images[: args.train_batch].to(args.device)))[..., 0].clone()
    labels = labels[: args.train_batch].to(args.device)

    def train_step(name: str):
        model = trainers[name]
        opt = optimizers[name]

        def step():
            logits = model(codes, labels)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return step

    trainers = {n: hub.build(zoo.model_info(n)).to(args.device).train() for n in models}
    optimizers = {n: torch.optim.AdamW(param_groups(m, 0.05), lr=1e-4, betas=(0.9, 0.95)) for n, m in trainers.items()}
    tasks = {("train", args.train_batch): {n: train_step(n) for n in models}}
    for b in args.batch_sizes:
        lab = torch.arange(b) % 10
        tasks[("generate", b)] = {n: (lambda g=g, lab=lab, b=b: g.generate(lab, seed=list(range(b)))) for n, g in models.items()}
        tasks[("sample", b)] = {n: (lambda g=g, lab=lab, b=b: g.sample(lab, seed=list(range(b)))) for n, g in models.items()}

    rows = []
    first = args.models[0]
    for (what, batch), fns in tasks.items():
        times = {n: [] for n in fns}
        names = list(fns)
        for r in range(args.repeats + 1):
            order = names[r % len(names):] + names[: r % len(names)]
            for n in order:
                t = timed(fns[n])
                if r:
                    times[n].append(t)
        for n in names:
            med = statistics.median(times[n])
            ratio = statistics.median(a / b for a, b in zip(times[first], times[n]))
            per_s = batch * 64 / med if what == "train" else batch / med
            unit = "tokens/s" if what == "train" else "images/s"
            rows.append({"task": what, "batch": batch, "model": n, "median_s": med, unit: per_s,
                         f"speed vs {first}": ratio})
            print(f"{what:9s} batch {batch:3d}  {n:34s} {med * 1000:9.1f} ms  {per_s:10.1f} {unit:8s}  "
                  f"x{ratio:.2f} vs {first}")
    print(f"load average after {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
