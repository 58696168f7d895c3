"""LlamaGen VQ tokenizer: parity with the official code (../shared/parity/llamagen), converter, contract edges.

The model is built from the fixture's own config.json (every size read from it), so the same tests hold for fixtures
of other sizes made by the same official code.
"""

import copy
import fnmatch
import functools
import json
from pathlib import Path

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import zoo
from tokenizers_img.vq import LlamaGenVQ, VQConfig, adm_center_crop, checkpoint_filter_fn, to_official
from tokenizers_img.vq.convert import CODEBOOK_USED
from zoo import checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = ("vq", "vq_rect")


def config_from_fixture(cfg: dict) -> VQConfig:
    vq = cfg["vq"]
    args, enc, dec = vq["model_args"], vq["encoder_kwargs"], vq["decoder_kwargs"]
    assert enc["ch"] == dec["ch"] and enc["num_res_blocks"] == dec["num_res_blocks"]
    assert enc["ch_mult"] == args["encoder_ch_mult"] and dec["ch_mult"] == args["decoder_ch_mult"]
    assert enc["z_channels"] == dec["z_channels"] == args["z_channels"]
    assert enc["norm_type"] == "group" and enc["resamp_with_conv"]
    assert (enc["in_channels"], dec["out_channels"]) == (3, 3)
    norm = vq["hardcoded_in_official_code"]["GroupNorm"]
    assert norm["eps"] == 1e-6 and norm["affine"]
    return VQConfig(ch=enc["ch"], ch_mult=args["encoder_ch_mult"], decoder_ch_mult=args["decoder_ch_mult"],
                    z_channels=args["z_channels"], num_res_blocks=enc["num_res_blocks"],
                    codebook_size=args["codebook_size"], codebook_embed_dim=args["codebook_embed_dim"],
                    codebook_l2_norm=args["codebook_l2_norm"], norm_groups=norm["num_groups"],
                    dropout=args["dropout_p"], image_size=vq["image_size"])


@functools.lru_cache(maxsize=2)
def _load(folder: str):
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    official = load_file(str(folder / "vq_state_dict.safetensors"))
    model = LlamaGenVQ(config_from_fixture(cfg)).eval()
    checkpoints.load_into(model, official, source="vq_state_dict.safetensors", filter_fn=checkpoint_filter_fn)
    return cfg, official, model, load_file(str(folder / "io.safetensors"))


@pytest.fixture
def fx(parity_dir):
    cfg, official, model, io = _load(str(parity_dir("llamagen")))
    return cfg, official, model, io


def atol(cfg: dict, name: str) -> float:
    """The fixture's recommended max-abs tolerance for tensor `name` (keys are comma-separated glob patterns)."""
    for patterns, value in cfg["recommended_atol"].items():
        if patterns.startswith("_") or patterns == "exact":
            continue
        if any(fnmatch.fnmatchcase(name, p.strip()) for p in patterns.split(",")):
            return float(value)
    raise KeyError(f"no recommended tolerance for {name}")


def close(cfg, name, actual, expected, report=None):
    diff = (actual.float() - expected.float()).abs().max().item()
    if report is not None:
        report[name] = diff
    assert actual.shape == expected.shape, name
    assert diff <= atol(cfg, name), f"{name}: max abs diff {diff:.3g} > {atol(cfg, name)}"


def grid_of(io, case):
    """(B, h, w) of a case's latent grid, from its stored `quant` (B, D, h, w)."""
    b, _, h, w = io[f"{case}.quant"].shape
    return b, h, w


def level_output(level):
    """The module whose output the fixture calls `<enc|dec>.level<i>`: the resample, else the last attn/res block."""
    for name in ("downsample", "upsample"):
        if hasattr(level, name):
            return getattr(level, name)
    return level.attn[-1] if len(level.attn) else level.res[-1]


def hook_modules(model, io):
    """io key -> module whose forward output it stores (for the keys the fixture has)."""
    enc, dec = model.encoder, model.decoder
    table = {"vq.enc.mid": enc.mid[-1], "vq.enc.out": enc, "vq.h": model.quant_conv,
             "vq.dec.post_quant": model.post_quant_conv, "vq.dec.conv_in": dec.conv_in, "vq.dec.mid": dec.mid[-1]}
    for i, level in enumerate(enc.conv_blocks):
        table[f"vq.enc.level{i}"] = level_output(level)
    for i, level in enumerate(dec.conv_blocks):
        table[f"vq.dec.level{i}"] = level_output(level)
    present = {k: m for k, m in table.items() if k in io}
    expected = {k for k in io if k.startswith(("vq.enc.", "vq.dec.")) or k == "vq.h"}
    assert set(present) == expected, f"fixture tensors without a module here: {expected - set(present)}"
    return present


# ----------------------------------------------------------------------------------------------------------------
# parity


def test_fixture_keys_are_the_models(fx):
    cfg, official, model, io = fx
    assert set(model.state_dict()) == set(official) - {CODEBOOK_USED}
    assert official[CODEBOOK_USED].shape == (cfg["vq"]["hardcoded_in_official_code"]["codebook_used_buffer_len"],)
    f = model.downsample_factor
    assert f == cfg["vq"]["downsample_factor"]
    assert list(model.grid_size()) == cfg["vq"]["latent_grid"]
    assert [s // f for s in cfg["vq"]["rect_case"]["input_hw"]] == cfg["vq"]["rect_case"]["latent_hw"]


def test_encoder_latents_ids_and_decoder_match_the_official(fx):
    cfg, _, model, io = fx
    acts, report = {}, {}
    handles = [m.register_forward_hook(lambda mod, inp, out, k=k: acts.__setitem__(k, out.detach()))
               for k, m in hook_modules(model, io).items()]
    try:
        with torch.no_grad():
            h = model.encode_latents(io["vq.input"])
            quant, ids = model.quantize(h)
            flat = model.quantize.prepare(h.permute(0, 2, 3, 1)).reshape(-1, h.shape[1])
            dist = model.quantize.distances(flat)
            decoded = model.decode_code(ids)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(ids.flatten(), io["vq.indices"])
    assert torch.equal(dist.argmin(dim=1), io["vq.indices"])
    for name, value in acts.items():
        close(cfg, name, value, io[name], report)
    close(cfg, "vq.dist", dist, io["vq.dist"], report)
    close(cfg, "vq.quant", quant, io["vq.quant"], report)
    close(cfg, "vq.codebook_normalized", model.quantize.codebook(), io["vq.codebook_normalized"], report)
    close(cfg, "vq.decoded", decoded, io["vq.decoded"], report)
    print("max abs diff per tensor:", {k: f"{v:.2g}" for k, v in sorted(report.items())})


@pytest.mark.parametrize("case", CASES)
def test_ids_quant_and_decode_code_per_case(fx, case):
    """Square and non-square (4 x 6 grid) inputs: exact ids, the straight-through quant, decode_code."""
    cfg, _, model, io = fx
    b, h, w = grid_of(io, case)
    assert io[f"{case}.input"].shape[-2:] == (h * model.downsample_factor, w * model.downsample_factor)
    with torch.no_grad():
        quant, ids = model.quantize(model.encode_latents(io[f"{case}.input"]))
        decoded = model.decode_code(io[f"{case}.indices"].reshape(b, h, w))
    assert ids.shape == (b, h, w) and torch.equal(ids.flatten(), io[f"{case}.indices"])
    close(cfg, f"{case}.quant", quant, io[f"{case}.quant"])
    close(cfg, f"{case}.decoded", decoded, io[f"{case}.decoded"])


def test_generated_ids_decode_like_the_official(fx):
    """The generation cases' ids decode through decode_code as in sample_c2i.py."""
    cfg, _, model, io = fx
    h, w = cfg["vq"]["latent_grid"]
    for key in (k for k in io if k.endswith(".decoded") and f"{k[:-len('.decoded')]}.ids" in io):
        ids = io[f"{key[:-len('.decoded')]}.ids"].long()
        with torch.no_grad():
            close(cfg, key, model.decode_code(ids.reshape(len(ids), h, w)), io[key])


@pytest.mark.parametrize("case", CASES)
def test_public_encode_decode_and_embeddings(fx, case):
    cfg, _, model, io = fx
    b, h, w = grid_of(io, case)
    images = (io[f"{case}.input"] + 1) / 2
    tokens = model.encode(images, resize="none")
    assert tokens.layout == "grid" and tokens.vocab_sizes == (cfg["vq"]["model_args"]["codebook_size"],)
    assert torch.equal(tokens.codes, io[f"{case}.indices"].reshape(b, h, w))
    assert tokens.meta["image_size"] == list(images.shape[-2:])
    assert model.token_shape(tuple(images.shape[1:]), resize="none") == (h, w)
    out = model.decode(tokens, seed=123)  # seeds are accepted and ignored
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    expected = ((io[f"{case}.decoded"] + 1) / 2).clamp(0, 1)
    assert (out - expected).abs().max() <= atol(cfg, f"{case}.decoded")
    assert torch.equal(model.decode(tokens.codes), out)
    emb = model.codes_to_embeddings(tokens)
    assert emb.shape == (b, h * w, cfg["vq"]["model_args"]["codebook_embed_dim"]) and not emb.requires_grad
    rows = io["vq.codebook_normalized"][io[f"{case}.indices"]].reshape(b, h * w, -1)
    close(cfg, "vq.codebook_normalized", emb, rows)
    # an item encodes the same alone and in a batch
    assert torch.equal(model.encode(images[-1], resize="none").codes, tokens.codes[-1:])


def test_adm_preprocessing_reproduces_the_official_inputs(fx):
    """`adm_center_crop` is ADM's center_crop_arr: the fixture's 8-bit inputs byte for byte, then the same ids."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    cfg, _, model, io = fx
    size = cfg["vq"]["image_size"]
    photos = [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee())]  # the fixture's README
    crops = torch.stack([torch.from_numpy(np.array(adm_center_crop(p, size))) for p in photos])
    assert torch.equal(crops, io["vq.input_uint8"])
    b, h, w = grid_of(io, "vq")
    assert torch.equal(model.encode(photos, resize="adm").codes, io["vq.indices"].reshape(b, h, w))
    # the zoo's default crop is a different (torch bicubic) rule: a few 8-bit levels away, same size
    default = model.encode(photos)
    assert default.codes.shape == (b, h, w) and default.meta["image_size"] == [size, size]


# ----------------------------------------------------------------------------------------------------------------
# converter


def test_to_official_round_trip_and_wrappers(fx, tmp_path):
    cfg, official, model, io = fx
    back = to_official(model.state_dict())
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)  # codebook_used: official zeros
    for i, wrapped in enumerate([back, {"ema": back}, {"model": back, "optimizer": {}}, {"state_dict": back},
                                 {"model": {"bogus": torch.zeros(1)}, "ema": back},  # ema first, as the official
                                 {"model": {f"module.{k}": v for k, v in back.items()}}]):
        path = tmp_path / f"ckpt{i}.pt"
        torch.save(wrapped, path)
        fresh = LlamaGenVQ(model.config).eval()
        checkpoints.load_into(fresh, checkpoints.read_state_dict(path), source=str(path),
                              filter_fn=checkpoint_filter_fn)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    b, h, w = grid_of(io, "vq")
    assert torch.equal(fresh.encode((io["vq.input"] + 1) / 2, resize="none").codes,
                       io["vq.indices"].reshape(b, h, w))


def test_filter_rejects_wrong_checkpoints(fx):
    cfg, official, model, _ = fx
    key = "encoder.conv_in.weight"
    with pytest.raises(ValueError, match="missing keys.*encoder.conv_in.weight"):
        checkpoint_filter_fn({k: v for k, v in official.items() if k != key}, model)
    with pytest.raises(ValueError, match="not part of a LlamaGen VQModel.*discriminator"):
        checkpoint_filter_fn({**official, "discriminator.w": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="codebook usage"):
        checkpoint_filter_fn({**official, CODEBOOK_USED: torch.zeros(2, 2)}, model)
    bigger = LlamaGenVQ(VQConfig(**{**vars(model.config), "codebook_size": model.codebook_size * 2}))
    with pytest.raises(checkpoints.CheckpointError, match="shape mismatches.*quantize.embedding.weight"):
        checkpoints.load_into(bigger, official, source="x.pt", filter_fn=checkpoint_filter_fn)


# ----------------------------------------------------------------------------------------------------------------
# contract edges


def test_bad_inputs_raise(fx):
    cfg, _, model, io = fx
    b, h, w = grid_of(io, "vq")
    codes = io["vq.indices"].reshape(b, h, w)
    with pytest.raises(ValueError, match=r"values must be in \[0, "):
        model.decode(torch.full_like(codes, model.codebook_size))
    with pytest.raises(ValueError, match="values must be in"):
        model.decode(codes - codes.max() - 1)
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        model.decode(codes.flatten(1))
    with pytest.raises(ValueError, match="integer codes"):
        model.decode(codes.float())
    with pytest.raises(ValueError, match="expected 3 dimensions"):
        model.codes_to_embeddings(codes[0, 0])
    f = model.downsample_factor
    with pytest.raises(ValueError, match=f"multiples of the downsampling factor {f}"):
        model.encode(torch.rand(3, h * f, w * f - 4), resize="none")
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        model.encode(io["vq.input"], resize="none")  # [-1, 1] images
    with pytest.raises(ValueError, match="resize must be one of"):
        model.encode(torch.rand(3, h * f, w * f), resize="stretch")
    other = LlamaGenVQ(VQConfig(**{**vars(model.config), "codebook_l2_norm": False}))
    with pytest.raises(ValueError, match="decode them with the model that made them"):
        other.decode(model.encode(torch.rand(3, h * f, w * f), resize="none"))
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(ch=24, ch_mult=(1, 2), norm_groups=32, image_size=64)


def test_bfloat16_keeps_the_codebook_fp32(fx):
    cfg, _, model, io = fx
    low = copy.deepcopy(model).cast(dtype=torch.bfloat16)
    assert low.quantize.embedding.weight.dtype == torch.float32 and low.quant_conv.weight.dtype == torch.float32
    assert low.encoder.conv_in.weight.dtype == torch.bfloat16 and low.decoder.conv_out.weight.dtype == torch.bfloat16
    agree = total = 0
    for case in CASES:
        images = (io[f"{case}.input"] + 1) / 2
        codes = low.encode(images, resize="none").codes
        agree += int((codes == model.encode(images, resize="none").codes).sum())
        total += codes.numel()
        out = low.decode(codes)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # measured on the fixture (1 thread): 31 / 32 square and 20 / 24 rect positions (91 %); the fixture's random
    # weights make bf16 noise large relative to the 4.6e-3 distance margins
    assert agree / total >= 0.8, f"bf16 codes agree with fp32 on {agree} / {total}"
    with torch.no_grad():
        ref, out = model.decode(io["vq.indices"].reshape(grid_of(io, "vq"))), low.decode(
            io["vq.indices"].reshape(grid_of(io, "vq")))
    assert (ref - out).abs().mean() < 0.03  # measured 0.008


# ----------------------------------------------------------------------------------------------------------------
# registry


def test_registered_entries_are_the_official_sizes(fx):
    """The two entries carry the official VQ_16 / VQ_8 arguments (config.json's full-size values)."""
    cfg = fx[0]["vq"]
    official = cfg["model_args_official_VQ_16"]
    for name, ch_mult, factor in (("llamagen-vq-ds16-c2i", official["encoder_ch_mult"], 16),
                                  ("llamagen-vq-ds8-c2i", [1, 2, 2, 4], 8)):
        spec = zoo.model_info(name)
        c = VQConfig(**{**spec.config})
        assert list(c.ch_mult) == ch_mult and c.decoder_ch_mult is None and c.downsample_factor == factor
        assert (c.ch, c.z_channels, c.codebook_size, c.codebook_embed_dim, c.codebook_l2_norm) == (
            cfg["official_encoder_decoder_ch"], official["z_channels"], official["codebook_size"],
            official["codebook_embed_dim"], official["codebook_l2_norm"])
        assert spec.hub_file.repo_id == "FoundationVision/LlamaGen" and len(spec.hub_file.revision) == 40
        assert spec.tokens_per_item == f"{(c.image_size // factor) ** 2} / image"
        assert spec.filter_fn is checkpoint_filter_fn and spec.license == "mit"


def test_zoo_load_reads_the_pinned_hub_file_offline(fx, tmp_path, monkeypatch):
    """zoo.load of a registered entry: the pinned file from the HF cache, converted (here a fixture-sized .pt under
    the real file name, with the fixture's sizes as overrides); the ds8 entry's pinned sha256 refuses other bytes."""
    cfg, official, model, io = fx
    cache = tmp_path / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sizes = {k: v for k, v in vars(model.config).items() if k != "architecture"}
    for name in ("llamagen-vq-ds16-c2i", "llamagen-vq-ds8-c2i"):
        hub_file = zoo.model_info(name).hub_file
        snap = cache / f"models--{hub_file.repo_id.replace('/', '--')}" / "snapshots" / hub_file.revision
        snap.mkdir(parents=True, exist_ok=True)
        torch.save({"model": official}, snap / hub_file.filename)
    loaded = zoo.load("llamagen-vq-ds16-c2i", **sizes)
    b, h, w = grid_of(io, "vq")
    tokens = loaded.encode((io["vq.input"] + 1) / 2, resize="none")
    assert tokens.meta["model"] == "llamagen-vq-ds16-c2i" and torch.equal(tokens.codes,
                                                                            io["vq.indices"].reshape(b, h, w))
    with pytest.raises(checkpoints.CheckpointError, match="sha256 mismatch"):
        zoo.load("llamagen-vq-ds8-c2i", **sizes)
