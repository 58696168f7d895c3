"""xAR sampling speed: ours against the official ``sample_tokens`` on the same weights and noise.

    python benchmarks/bench_xar.py --reference /tmp/xar_official --quick
    python benchmarks/bench_xar.py --reference /tmp/xar_official --threads 2 --json xar.json
    python benchmarks/bench_xar.py --reference /tmp/xar_official --device cuda --models xar-b --batch-sizes 1 64

``--reference``: a checkout of OliverRensu/xAR (commit 121e9c9 was used); its root goes on ``sys.path`` and
``models/xar.py`` is imported from it, nothing of it is kept here. Two runtime patches, the parity fixture's: on CPU
``torch.Tensor.cuda`` becomes the identity for this process (its hard-coded ``.cuda()`` calls), and a stand-in
``flash_attn`` module is installed if the real one is missing (imported, never called, by ``models/xar.py``).
Nothing else is changed.

Models (``--models``):

* ``xar-b``: the size of ``xar-b`` (two stacks of 8 blocks, 768 wide, 12 heads; 16 x 16 x 16 latents, 4 cells of
  8 x 8; 172.6 M parameters), RANDOM weights (the official init). With ``--quick``: width 64, 2 + 2 blocks.
* ``fashion-width``: the width and depth of ``xar-tiny-fashion`` (two stacks of 3 blocks, 128 wide, 4 heads) at the
  official geometry (16 x 16 x 16, 4 cells of 8 x 8): the official code runs no other geometry, so the tiny model
  itself (8 x 8 x 8, cells of 4 x 4) cannot be timed against it. RANDOM weights.
* ``fashion``: ``xar-tiny-fashion`` itself (trained weights when available), ours only.

Per model and batch size: CFG ``--cfg-scale`` (linear over cells), ``--steps`` per cell. Both draw their noise from
torch's global RNG after ``torch.manual_seed(1)`` (ours with one shared generator draws the official numbers in the
official order), so both return the same latents up to float rounding (the largest difference is printed).

* ``ours``: ``XARGenerator.generate`` (cache written once per cell into preallocated buffers, no unconditional rows
  for the unguided first cell, AdaLN broadcast).
* ``official``: ``xAR.sample_tokens`` holding the same weight tensors (``load_state_dict(..., assign=True)``; its own
  mask and RoPE buffers).

Timing: one warm-up call each, then ``--repeats`` rounds alternating the two (the order rotates); medians; ``x
official`` is the median of per-round ratios t(official) / t(ours). Peak memory as in ``bench_ar.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import torch

import zoo
from generators.xar import XARConfig, XARGenerator
from zoo import hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ar import load_line, peak_memory_mib, timed  # noqa: E402

GEOMETRY = dict(grid_size=(16, 16), channels=16, entity="cell", entity_size=8, num_classes=1000, attn_dropout=0.0,
                proj_dropout=0.0)
SIZES = {
    "xar-b": dict(encoder_dim=768, encoder_depth=8, encoder_heads=12, decoder_dim=768, decoder_depth=8,
                  decoder_heads=12),
    "fashion-width": dict(encoder_dim=128, encoder_depth=3, encoder_heads=4, decoder_dim=128, decoder_depth=3,
                          decoder_heads=4),
}
QUICK = dict(encoder_dim=64, encoder_depth=2, encoder_heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=4)
FASHION_ENTRY = "xar-tiny-fashion"


def build_ours(key: str, quick: bool) -> tuple[XARGenerator, str]:
    if key == "fashion":
        spec = zoo.model_info(FASHION_ENTRY)
        if hub.is_available_offline(spec):
            return zoo.load(spec.name).eval(), f"{spec.name}: trained weights"
        torch.manual_seed(0)
        return hub.build(spec).eval(), f"{spec.name} architecture, RANDOM weights"
    torch.manual_seed(0)
    size = QUICK if quick else SIZES[key]
    what = "reduced stand-in (--quick)" if quick else f"{key} size"
    return XARGenerator(XARConfig(**GEOMETRY, **size)).eval(), f"{what} at the official geometry, RANDOM weights"


def build_official(path: str, ours: XARGenerator, device: torch.device):
    root = Path(path)
    if not (root / "models" / "xar.py").is_file():
        raise SystemExit(f"--reference {path}: no models/xar.py there (an xAR checkout?)")
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the official code's hard-coded .cuda() calls
    installed = False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("flash_attn")

        def flash_attn_func(*args, **kwargs):
            raise RuntimeError("the flash_attn stand-in was called")

        stand_in.flash_attn_func = flash_attn_func
        sys.modules["flash_attn"], installed = stand_in, True
    sys.path.insert(0, str(root))
    from models.xar import xAR

    if installed:  # only the official module holds it: other packages (diffusers) probe for the real one
        del sys.modules["flash_attn"]

    c = ours.config
    model = xAR(img_size=c.grid_size[0] * 16, vae_stride=16, patch_size=1, encoder_embed_dim=c.encoder_dim,
                encoder_depth=c.encoder_depth, encoder_num_heads=c.encoder_heads, decoder_embed_dim=c.decoder_dim,
                decoder_depth=c.decoder_depth, decoder_num_heads=c.decoder_heads, mlp_ratio=c.mlp_ratio,
                vae_embed_dim=c.channels, class_num=c.num_classes, attn_dropout=0.0, proj_dropout=0.0, clusters=4)
    result = model.load_state_dict(ours.state_dict(), strict=False, assign=True)
    buffers = {name for name, _ in model.named_buffers()}
    if result.unexpected_keys or set(result.missing_keys) - buffers:
        raise SystemExit(f"weights do not transfer: {result}")
    return model.to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("xar-b", "fashion-width", "fashion"),
                        default=["xar-b", "fashion-width", "fashion"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--steps", type=int, default=40, help="steps per cell (xAR-B's README: 40)")
    parser.add_argument("--cfg-scale", type=float, default=2.7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reference", required=True, help="checkout of OliverRensu/xAR")
    parser.add_argument("--skip", nargs="*", default=[], metavar="MODEL:BATCH",
                        help="combinations not to run (e.g. xar-b:64 on CPU)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="reduced sizes, batch 1 and 4, 4 steps, 1 round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.steps, args.repeats = [1, 4], 4, 1
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, float32, {torch.get_num_threads()} threads, "
          f"{args.steps} steps per cell, cfg {args.cfg_scale}")
    load_line("before")
    rows: list[dict[str, Any]] = []
    for key in args.models:
        ours, note = build_ours(key, args.quick)
        ours = ours.to(device)
        official = None if key == "fashion" else build_official(args.reference, ours, device)
        c = ours.config
        print(f"\n[{key}] {note}; {ours.num_parameters() / 1e6:.1f} M parameters; {c.grid_size[0]} x "
              f"{c.grid_size[1]} x {c.channels} latents, {ours.num_entities} cells of {ours.entity_len}, "
              f"{c.encoder_depth} + {c.decoder_depth} blocks x {c.encoder_dim}")
        for batch in args.batch_sizes:
            if f"{key}:{batch}" in args.skip:
                continue
            labels = torch.randint(c.num_classes, (batch,), generator=torch.Generator().manual_seed(batch)).to(device)

            def run_ours():
                torch.manual_seed(1)
                return ours.generate(labels, steps=args.steps, cfg_scale=args.cfg_scale).latents

            def run_official():
                torch.manual_seed(1)
                with torch.inference_mode():
                    return official.sample_tokens(args.steps, cfg=args.cfg_scale, label=labels)

            impls = {"ours": run_ours} if official is None else {"ours": run_ours, "official": run_official}
            outs = {name: fn() for name, fn in impls.items()}  # warm-up, and the outputs compared
            times: dict[str, list[float]] = {name: [] for name in impls}
            for r in range(args.repeats):
                for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                    times[name].append(timed(impls[name], device)[0])
            row: dict[str, Any] = {"model": key, "batch": batch, "steps": args.steps,
                                   "ours_s": statistics.median(times["ours"])}
            if official is not None:
                row["max_abs_diff"] = (outs["ours"] - outs["official"].to(outs["ours"])).abs().max().item()
                row["official_s"] = statistics.median(times["official"])
                row["x_official"] = statistics.median(o / u for o, u in zip(times["official"], times["ours"]))
            if not args.no_memory:
                row.update({f"{name}_peak_mib": peak_memory_mib(fn, device) for name, fn in impls.items()})
            rows.append(row)
            line = f"  batch {batch:3d}: ours {row['ours_s']:.2f} s ({batch / row['ours_s']:.2f} images/s)"
            if official is not None:
                line += (f", official {row['official_s']:.2f} s ({batch / row['official_s']:.2f} images/s): "
                         f"{row['x_official']:.2f}x; max |ours - official| {row['max_abs_diff']:.1e}")
            if "ours_peak_mib" in row:
                line += f"; peak MiB ours {row['ours_peak_mib']:.0f}" + (
                    f" / official {row['official_peak_mib']:.0f}" if official is not None else "")
            print(line, flush=True)
    load_line("after")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
