"""WavTokenizer speed: ours vs the official implementation (same weights), EnCodec and SNAC (random weights).

    python benchmarks/bench_wavtokenizer.py --reference /path/to/WavTokenizer --threads 2
    python benchmarks/bench_wavtokenizer.py --lengths 1 10 --batches 1 8 --repeats 5 --json out.json

Encode and decode are timed separately, in one process, with the runs of every implementation interleaved
(ours, official, ours, ...), after a warm-up; the table gives medians and ratios. Our timing goes through the
public API (`encode(wav, sample_rate=24000)` / `decode(tokens)`, input checks and trimming included); the official
one calls `encode_infer` and `decode(codes_to_features(codes))`. The official model is loaded with our weights
converted back to its layout (`to_official`), codebook ``inited`` set so no k-means runs, and its codes are checked
to be identical to ours. EnCodec (24 kHz, 1.5 kbit/s) and SNAC (24 kHz) use random weights: speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import zoo
from tokenizers_audio.wavtokenizer import WavTokenizer, WavTokenizerConfig, to_official


def official_model(path: str, ours: WavTokenizer):
    """The official WavTokenizer built from its own classes, holding our weights."""
    sys.path.insert(0, path)
    from decoder.feature_extractors import EncodecFeatures
    from decoder.heads import ISTFTHead
    from decoder.models import VocosBackbone
    from decoder.pretrained import WavTokenizer as Official

    c = ours.config
    model = Official(
        feature_extractor=EncodecFeatures(encodec_model="encodec_24khz", bandwidths=[6.6] * 4, train_codebooks=True,
                                          num_quantizers=1, dowmsamples=list(c.downsamples),
                                          vq_bins=c.codebook_size, vq_kmeans=200),
        backbone=VocosBackbone(input_channels=c.dimension, dim=c.backbone_dim, intermediate_dim=c.intermediate_dim,
                               num_layers=c.num_layers, adanorm_num_embeddings=c.num_bandwidths),
        head=ISTFTHead(dim=c.backbone_dim, n_fft=c.n_fft, hop_length=c.hop_length, padding="same"),
    )
    missing, unexpected = model.load_state_dict(to_official(ours.state_dict()), strict=False)
    assert not unexpected and all(k.startswith("feature_extractor.encodec.decoder.") for k in missing), missing
    return model.eval()


def peers():
    out = {}
    try:
        from encodec import EncodecModel

        enc = EncodecModel.encodec_model_24khz(pretrained=False).eval()
        enc.set_target_bandwidth(1.5)
        out["encodec-24k-1.5kbps"] = (lambda w: enc.encode(w[:, None]), lambda f: enc.decode(f))
    except ImportError:
        print("encodec not installed: skipped (pip install encodec)")
    try:
        from snac import SNAC

        snac = SNAC(sampling_rate=24000, encoder_dim=48, encoder_rates=[2, 4, 8, 8], decoder_dim=1024,
                    decoder_rates=[8, 8, 4, 2], attn_window_size=None, codebook_size=4096, codebook_dim=8,
                    vq_strides=[4, 2, 1]).eval()
        out["snac-24k"] = (lambda w: snac.encode(w[:, None]), lambda c: snac.decode(c))
    except ImportError:
        print("snac not installed: skipped (pip install snac)")
    return out


def timed(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="wavtokenizer-small-75tps", help="registry entry giving the config")
    parser.add_argument("--reference", default=os.environ.get("WAVTOKENIZER_REFERENCE"),
                        help="checkout of jishengpeng/WavTokenizer (official implementation)")
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--peer-max-seconds", type=float, default=10.0,
                        help="time EnCodec / SNAC only up to this clip length (SNAC is slow on CPU)")
    parser.add_argument("--bf16", action="store_true", help="also time ours in bfloat16 (codebook stays fp32)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = zoo.model_info(args.model)
    ours = WavTokenizer(WavTokenizerConfig(**spec.config)).eval()
    cb = ours.quantizer._codebook
    cb.embed.data.normal_(0, 0.1)
    cb.initted.data.fill_(True)
    ref = official_model(args.reference, ours).to(device) if args.reference else None
    ours.to(device)
    ours_bf16 = None
    if args.bf16:
        import copy

        ours_bf16 = copy.deepcopy(ours).cast(dtype=torch.bfloat16)
    others = {} if args.no_peers else peers()
    bw = torch.tensor([0], device=device)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, load average {load[0]:.2f}, "
          f"model {args.model} ({ours.num_parameters() / 1e6:.1f} M params, random weights)")

    rows = []
    with torch.inference_mode():
        for seconds in args.lengths:
            for batch in args.batches:
                wav = (torch.randn(batch, int(seconds * 24000), generator=torch.Generator().manual_seed(1)) * 0.1)
                wav = wav.to(device)
                impls = {"ours": (lambda w: ours.encode(w, sample_rate=24000), ours.decode)}
                if ref is not None:
                    impls["official"] = (lambda w: ref.encode_infer(w, bandwidth_id=bw)[1],
                                         lambda c: ref.decode(ref.codes_to_features(c), bandwidth_id=bw))
                if ours_bf16 is not None:
                    impls["ours-bf16"] = (lambda w: ours_bf16.encode(w, sample_rate=24000), ours_bf16.decode)
                if seconds <= args.peer_max_seconds:
                    impls.update(others)
                times = {name: {"encode": [], "decode": []} for name in impls}
                codes = {}
                for r in range(args.repeats + 1):  # the first round is the warm-up
                    for name, (enc, dec) in impls.items():
                        t_enc, code = timed(enc, wav)
                        t_dec, _ = timed(dec, code)
                        codes[name] = code
                        if r:
                            times[name]["encode"].append(t_enc)
                            times[name]["decode"].append(t_dec)
                same = None
                if ref is not None:
                    same = torch.equal(codes["ours"].codes[:, 0], codes["official"][0])
                for name, t in times.items():
                    row = {"seconds": seconds, "batch": batch, "impl": name,
                           "encode_s": statistics.median(t["encode"]), "decode_s": statistics.median(t["decode"])}
                    if name == "ours" and same is not None:
                        row["codes_identical"] = same
                    rows.append(row)
                print(f"{seconds:g} s x {batch}: done" + (f" (codes identical to official: {same})" if same is not None else ""))

    def find(s, b, impl):
        return next((r for r in rows if r["seconds"] == s and r["batch"] == b and r["impl"] == impl), None)

    lines = ["| audio | batch | impl | encode s | decode s | encode x official | decode x official | "
             "per-clip speed-up vs batch 1 (enc / dec) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        off = find(r["seconds"], r["batch"], "official")
        one = find(r["seconds"], 1, r["impl"])
        vs = f"{off['encode_s'] / r['encode_s']:.2f} | {off['decode_s'] / r['decode_s']:.2f}" if off else "- | -"
        per_clip = (f"{one['encode_s'] * r['batch'] / r['encode_s']:.2f} / {one['decode_s'] * r['batch'] / r['decode_s']:.2f}"
                    if one and r["batch"] > 1 else "-")
        lines.append(f"| {r['seconds']:g} s | {r['batch']} | {r['impl']} | {r['encode_s']:.3f} | {r['decode_s']:.3f} | "
                     f"{vs} | {per_clip} |")
    scaling = []
    for impl in sorted({r["impl"] for r in rows}):
        a, b = find(10, 1, impl), find(60, 1, impl)
        if a and b:
            scaling.append(f"{impl}: 60 s / 10 s time = {b['encode_s'] / a['encode_s']:.2f} (encode), "
                           f"{b['decode_s'] / a['decode_s']:.2f} (decode)")
    print("\n".join(lines))
    print("\n".join(scaling))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "threads": args.threads, "load": load, "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
