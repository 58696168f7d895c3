"""TokenBridge sampling speed: ours against the official ``sample_tokens`` on the same weights, orders and draws.

    python benchmarks/bench_tokenbridge.py --reference /tmp/tokenbridge_official --quick
    python benchmarks/bench_tokenbridge.py --reference /tmp/tokenbridge_official --threads 2
    python benchmarks/bench_tokenbridge.py --reference /tmp/tokenbridge_official --device cuda --json tb.json

``--reference``: a checkout of YuqingWang1029/TokenBridge (commit 3ede281 was used); its root goes on ``sys.path``
and ``models/tokenbridge.py`` is imported from it, nothing of it is kept here. It hard-codes ``.cuda()``; on CPU the
benchmark replaces ``torch.Tensor.cuda`` by the identity for its own process (the fixture's patch P1), nothing else
is changed.

Models (``--models``):

* ``tokenbridge-l``: the size of ``tokenbridge-l`` (encoder / decoder 1024 wide, 16 blocks, 16 heads; head 1024
  wide, 4 blocks, 8 heads; 16 x 16 positions x 16 channels, 64 levels, buffer 64, 1,000 classes; 486 M parameters),
  RANDOM weights: the official init, then N(0, 0.02^2) added to every AdaLN projection and bias (zero in the
  official init, which would make every head block an identity and every channel's logits alike). With ``--quick``
  a reduced stand-in (width 64, 2 + 2 blocks, head 32 x 2) at the same grid.
* ``fashion``: the registry entry ``tokenbridge-tiny-fashion`` (trained weights when available offline, otherwise
  its architecture with random weights as above). It has 8 channels: the official model's ``channel_order`` /
  ``inv_channel_order`` (plain attributes, hard-coded for 16) are set to ours, the identity.

Per model, batch size (``--batch-sizes``) and iteration count (``--num-iter``): CFG ``--cfg-scale`` with the linear
schedule, temperature ``--temperature``; the orders come from numpy's RNG (``np.random.seed(batch)``, the official
``sample_orders``) and are handed to ours (``orders=``), the draws from torch's global RNG (``torch.manual_seed``
before each call; ours with ``generator=None`` draws as ``torch.multinomial`` does), so both make the same codes
unless float rounding tips a draw.

* ``ours``: ``TokenBridgeGenerator.generate`` (conditional and unconditional passes as one batch, the channel head
  with a KV cache).
* ``official``: ``TokenBridge.sample_tokens`` holding the very same weight tensors (``load_state_dict(...,
  assign=True)``; the quantizer buffers and the causal mask are handed over as the official checkpoint stores them).

Timing: one warm-up call each, then ``--repeats`` rounds alternating the two (the order rotates); medians; ``x
official`` is the median of per-round ratios t(official) / t(ours). Peak memory: as in ``bench_ar.py`` (tensor
memory above the start of one extra call; CUDA allocator statistics or the CPU profiler's allocation events).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zoo
from generators.tokenbridge import TokenBridgeConfig, TokenBridgeGenerator
from zoo import hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ar import load_line, peak_memory_mib, timed  # noqa: E402

FASHION_ENTRY = "tokenbridge-tiny-fashion"
LARGE = dict(grid_size=(16, 16), encoder_dim=1024, encoder_depth=16, encoder_heads=16, decoder_dim=1024,
             decoder_depth=16, decoder_heads=16, channel_dim=1024, channel_depth=4, channel_heads=8, buffer_size=64,
             num_classes=1000)
LARGE_QUICK = dict(LARGE, encoder_dim=64, encoder_depth=2, encoder_heads=4, decoder_dim=64, decoder_depth=2,
                   decoder_heads=4, channel_dim=32, channel_depth=2, channel_heads=4)
OFFICIAL_ARGS = {"encoder_dim": "encoder_embed_dim", "encoder_depth": "encoder_depth",
                 "encoder_heads": "encoder_num_heads", "decoder_dim": "decoder_embed_dim",
                 "decoder_depth": "decoder_depth", "decoder_heads": "decoder_num_heads",
                 "channel_dim": "channel_embed_dim", "channel_depth": "channel_depth",
                 "channel_heads": "channel_heads", "mlp_ratio": "mlp_ratio", "levels": "quant_levels",
                 "channels": "vae_embed_dim", "num_classes": "class_num", "buffer_size": "buffer_size",
                 "value_min": "quant_min", "value_max": "quant_max", "std_range": "std_range"}


def randomize_adaln(model: TokenBridgeGenerator, seed: int = 0) -> TokenBridgeGenerator:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def build_ours(key: str, quick: bool) -> tuple[TokenBridgeGenerator, str]:
    if key == "tokenbridge-l":
        torch.manual_seed(0)
        model = TokenBridgeGenerator(TokenBridgeConfig(**(LARGE_QUICK if quick else LARGE)))
        what = "reduced stand-in (--quick)" if quick else "TokenBridge-L size"
        return randomize_adaln(model).eval(), f"{what}, RANDOM weights"
    spec = zoo.model_info(FASHION_ENTRY)
    if hub.is_available_offline(spec):
        return zoo.load(spec.name, tokenizer=None).eval(), f"{spec.name}: trained weights"
    torch.manual_seed(0)
    return randomize_adaln(hub.build(spec, tokenizer=None)).eval(), f"{spec.name} architecture, RANDOM weights"


def build_official(path: str, ours: TokenBridgeGenerator, device: torch.device):
    root = Path(path)
    if not (root / "models" / "tokenbridge.py").is_file():
        raise SystemExit(f"--reference {path}: no models/tokenbridge.py there (a TokenBridge checkout?)")
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official code's hard-coded .cuda() calls
    sys.path.insert(0, str(root))
    from functools import partial

    from models.tokenbridge import TokenBridge

    c = ours.config
    kwargs = {theirs: getattr(c, mine) for mine, theirs in OFFICIAL_ARGS.items()}
    model = TokenBridge(img_size=c.grid_size[0] * 16, vae_stride=16, patch_size=1, vae_embed_dim=c.channels,
                        norm_layer=partial(torch.nn.LayerNorm, eps=c.norm_eps),
                        **{k: v for k, v in kwargs.items() if k != "vae_embed_dim"})
    state = {k.removeprefix("quantizer."): v for k, v in ours.state_dict().items()}
    state["channel_mask"] = model.channel_mask
    model.load_state_dict(state, strict=True, assign=True)
    # plain attributes hard-coded for 16 channels: a model of another channel count gets ours (the identity)
    model.channel_order, model.inv_channel_order = ours.channel_order.cpu(), ours.inv_channel_order.cpu()
    return model.to(device).eval()


def numpy_orders(batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """The official ``sample_orders`` after ``np.random.seed(seed)``."""
    np.random.seed(seed)
    orders = []
    for _ in range(batch):
        order = np.arange(seq_len)
        np.random.shuffle(order)
        orders.append(order)
    return torch.as_tensor(np.array(orders)).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("tokenbridge-l", "fashion"), default=["tokenbridge-l",
                                                                                               "fashion"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--num-iter", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--cfg-scale", type=float, default=3.1)
    parser.add_argument("--temperature", type=float, default=0.96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference", required=True, help="checkout of YuqingWang1029/TokenBridge")
    parser.add_argument("--skip", nargs="*", default=[], metavar="MODEL:BATCH:ITER",
                        help="combinations not to run (e.g. tokenbridge-l:64:256 on CPU)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="reduced sizes, batch 1 and 4, 8 iterations, 1 round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.num_iter, args.repeats = [1, 4], [8], 1
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, float32, {torch.get_num_threads()} threads")
    load_line("before")
    rows: list[dict[str, Any]] = []
    mismatches = []
    for key in args.models:
        ours, note = build_ours(key, args.quick)
        ours = ours.to(device)
        official = build_official(args.reference, ours, device)
        c = ours.config
        print(f"\n[{key}] {note}; {ours.num_parameters() / 1e6:.1f} M parameters; {c.grid_size[0]} x "
              f"{c.grid_size[1]} x {c.channels} codes, encoder / decoder {c.encoder_dim} x {c.encoder_depth} / "
              f"{c.decoder_dim} x {c.decoder_depth}, head {c.channel_dim} x {c.channel_depth}")
        for batch in args.batch_sizes:
            labels = torch.randint(c.num_classes, (batch,), generator=torch.Generator().manual_seed(batch)).to(device)
            orders = numpy_orders(batch, c.seq_len, batch).to(device)
            for num_iter in args.num_iter:
                if f"{key}:{batch}:{num_iter}" in args.skip:
                    continue
                kw = dict(cfg=args.cfg_scale, temperature=args.temperature, num_iter=num_iter)

                def run_ours():
                    torch.manual_seed(1)
                    with torch.inference_mode():
                        return ours.generate(labels, steps=num_iter, cfg_scale=kw["cfg"], cfg_schedule="linear",
                                             temperature=kw["temperature"], orders=orders).codes

                def run_official():
                    np.random.seed(batch)
                    torch.manual_seed(1)
                    with torch.inference_mode():
                        return official.sample_tokens(batch, num_iter=num_iter, cfg=kw["cfg"],
                                                      cfg_schedule="linear", labels=labels,
                                                      temperature=kw["temperature"])  # dequantised latents

                impls = {"ours": run_ours, "official": run_official}
                outs = {name: fn() for name, fn in impls.items()}  # warm-up, and the outputs compared
                outs["official"] = ours.quantizer.quantize(outs["official"].flatten(2).transpose(1, 2))[0]
                same = torch.equal(outs["ours"], outs["official"])
                if not same:
                    diff = (outs["ours"] != outs["official"]).any(-1).float().mean().item()
                    mismatches.append(f"{key} batch {batch} iter {num_iter}: {diff:.1%} of positions differ")
                times: dict[str, list[float]] = {name: [] for name in impls}
                for r in range(args.repeats):
                    for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                        times[name].append(timed(impls[name], device)[0])
                ratio = statistics.median(o / u for o, u in zip(times["official"], times["ours"]))
                row = {"model": key, "batch": batch, "num_iter": num_iter, "same_codes": same,
                       "ours_s": statistics.median(times["ours"]), "official_s": statistics.median(times["official"]),
                       "x_official": ratio}
                if not args.no_memory:
                    row["ours_peak_mib"] = peak_memory_mib(run_ours, device)
                    row["official_peak_mib"] = peak_memory_mib(run_official, device)
                rows.append(row)
                mem = (f", peak MiB ours {row['ours_peak_mib']:.0f} / official {row['official_peak_mib']:.0f}"
                       if "ours_peak_mib" in row else "")
                print(f"  batch {batch:3d}, {num_iter:3d} iterations: ours {row['ours_s']:.2f} s "
                      f"({batch / row['ours_s']:.2f} images/s), official {row['official_s']:.2f} s "
                      f"({batch / row['official_s']:.2f} images/s): {ratio:.2f}x; same codes: {same}{mem}",
                      flush=True)
    load_line("after")
    if mismatches:
        print("codes differ (float rounding tipping a draw):\n  " + "\n  ".join(mismatches))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
