"""MAR's KL-16 VAE (TokenBridge / xAR): parity with the official code (../shared/parity/tokenbridge, ``vae.*``), the
key converter, input checks, per-item sampling.

The parity model is built from the fixture's config.json (every size read from it) and loaded from the official
state dict through `checkpoint_filter_fn`.
"""

import functools
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tokenizers_img.tokenbridge import MARVAE, MARVAEConfig, config_from_official, vae_checkpoint_filter_fn
from tokenizers_img.tokenbridge.vae import to_official, unwrap
from zoo import checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4  # the fixture README's VAE tolerance


def config_from_fixture(cfg: dict) -> MARVAEConfig:
    vae = cfg["vae"]
    args, enc, dec = vae["AutoencoderKL"], vae["Encoder"], vae["Decoder"]
    assert args["use_variational"] and enc["double_z"] and not dec["give_pre_end"]
    assert enc["ch"] == dec["ch"] and enc["ch_mult"] == dec["ch_mult"] == args["ch_mult"]
    assert enc["num_res_blocks"] == dec["num_res_blocks"] and enc["resolution"] == dec["resolution"]
    assert enc["z_channels"] == dec["z_channels"] == args["embed_dim"] and dec["attn_resolutions"] == []
    assert (enc["in_channels"], enc["out_ch"], enc["dropout"]) == (3, 3, 0.0) and enc["resamp_with_conv"]
    assert vae["Normalize"] == {"num_groups": 32, "eps": 1e-06, "affine": True}
    assert vae["DiagonalGaussianDistribution"]["logvar_clamp"] == [-30.0, 20.0]
    return MARVAEConfig(embed_dim=args["embed_dim"], ch=enc["ch"], ch_mult=args["ch_mult"],
                        num_res_blocks=enc["num_res_blocks"], attn_resolutions=enc["attn_resolutions"],
                        resolution=enc["resolution"], scaling_factor=vae["latent_scale_factor"])


@functools.lru_cache(maxsize=1)
def _load(folder: str):
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    official = load_file(str(folder / "official_vae_state_dict.safetensors"))
    model = MARVAE(config_from_fixture(cfg)).eval()
    checkpoints.load_into(model, official, source="official_vae_state_dict.safetensors",
                          filter_fn=vae_checkpoint_filter_fn)
    io = {k: v for k, v in load_file(str(folder / "io.safetensors")).items() if k.startswith("vae.")}
    return cfg, official, model, io


@pytest.fixture
def fx(parity_dir):
    return _load(str(parity_dir("tokenbridge")))


def close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = ATOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    err = float((got - want).abs().max())
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol:g}"


def taps(model: MARVAE, fn):
    """Run `fn` with forward hooks on the modules the fixture recorded (official names -> outputs)."""
    enc, dec, last = model.vae.encoder, model.vae.decoder, len(model.config.ch_mult) - 1
    modules = {
        f"vae.enc.down{last}.block0": enc.down_blocks[last].resnets[0],
        f"vae.enc.down{last}.attn0": enc.down_blocks[last].attentions[0],
        f"vae.enc.down{last}.block1": enc.down_blocks[last].resnets[1],
        f"vae.enc.down{last}.attn1": enc.down_blocks[last].attentions[1],
        "vae.enc.mid.block_1": enc.mid_block.resnets[0], "vae.enc.mid.attn_1": enc.mid_block.attentions[0],
        "vae.enc.mid.block_2": enc.mid_block.resnets[1], "vae.enc.out": enc,
        "vae.dec.post_quant_conv": model.vae.post_quant_conv, "vae.dec.conv_in": dec.conv_in,
        "vae.dec.mid.block_1": dec.mid_block.resnets[0], "vae.dec.mid.attn_1": dec.mid_block.attentions[0],
        "vae.dec.mid.block_2": dec.mid_block.resnets[1],
        **{f"vae.dec.up{last}.block{i}": dec.up_blocks[0].resnets[i] for i in range(3)},  # LDM up[last] = first
    }
    seen = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().clone()))
               for name, m in modules.items()]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return result, seen


# --- parity ----------------------------------------------------------------------------------------------------


def test_encode_matches_official(fx):
    cfg, _, model, io = fx
    (mean, logvar), seen = taps(model, lambda: model.encode_moments(io["vae.images"]))
    close("vae.mean", mean, io["vae.mean"])
    close("vae.logvar", logvar, io["vae.logvar"])
    close("vae.moments", torch.cat([mean, logvar], 1), io["vae.moments"])  # logvar is not clamped here (> -30)
    close("vae.std", torch.exp(0.5 * logvar), io["vae.std"])
    for name in [k for k in io if k.startswith("vae.enc.")]:
        close(name, seen[name], io[name])
    scale = cfg["vae"]["latent_scale_factor"]
    close("vae.latents_scaled", mean * scale, io["vae.latents_scaled"])
    # the public API: [0, 1] images, scaled posterior mode
    public = model.encode((io["vae.images"] + 1) / 2, resize="none")
    close("encode() vs vae.latents_scaled", public, io["vae.latents_scaled"])


def test_posterior_sample_matches_official(fx):
    cfg, _, model, io = fx
    scale = cfg["vae"]["latent_scale_factor"]
    images = (io["vae.images"] + 1) / 2
    # one generator shared in batch order draws what torch.manual_seed(210); torch.randn(mean.shape) drew
    drawn = model.encode(images, resize="none", sample=True, generator=torch.Generator().manual_seed(210))
    close("encode(sample=True) vs vae.sample", drawn, io["vae.sample"] * scale)
    mean, logvar = model.encode_moments(io["vae.images"])
    close("mean + std * sample_eps", mean + torch.exp(0.5 * logvar) * io["vae.sample_eps"], io["vae.sample"])


def test_decode_matches_official(fx):
    _, _, model, io = fx
    recon, seen = taps(model, lambda: model.decode_raw(io["vae.latents_dequant"]))
    close("vae.recon", recon, io["vae.recon"])
    for name in [k for k in io if k.startswith("vae.dec.")]:
        close(name, seen[name], io[name])
    close("decode() in [0, 1]", model.decode(io["vae.latents_dequant"]), ((io["vae.recon"] + 1) / 2).clamp(0, 1))


def test_fixture_shapes_give_the_fixture_config(fx):
    cfg, official, model, _ = fx
    derived = MARVAEConfig(**config_from_official(official), scaling_factor=model.config.scaling_factor)
    assert derived == model.config
    assert len(official) == cfg["vae"]["state_dict_keys"]
    # the released kl16.ckpt layout: the fixture's keys plus the four the reduced widths do not create
    with torch.device("meta"):
        released = MARVAE(MARVAEConfig())
    official_keys = set(to_official(released.state_dict(), 5))
    absent = set(cfg["vae"]["released_kl16"]["keys_absent_here"])
    assert official_keys == set(official) | absent and not absent & set(official)
    assert len(official_keys) == cfg["vae"]["released_kl16"]["state_dict_keys"]
    assert released.num_parameters() == cfg["vae"]["released_kl16"]["parameters"]


# --- without the fixture ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tiny() -> MARVAE:
    torch.manual_seed(0)  # attention at level 1 (resolution 32 / 2 = 16), f = 2
    return MARVAE(MARVAEConfig(ch=32, ch_mult=(1, 2), resolution=32)).eval()


def test_key_conversion_round_trip_and_errors():
    model = _tiny()
    official = to_official(model.state_dict(), len(model.config.ch_mult))
    assert "encoder.down.1.attn.0.q.weight" in official and official["encoder.down.1.attn.0.q.weight"].shape[2:] == (1, 1)
    assert "decoder.up.0.block.0.nin_shortcut.weight" in official and "decoder.up.0.upsample.conv.weight" not in official
    assert "decoder.up.1.upsample.conv.weight" in official and "encoder.mid.block_2.conv2.bias" in official
    for source in (official, {"model": official}):  # bare, or kl16.ckpt's {"model": ...}
        converted = vae_checkpoint_filter_fn(source, model)
        assert converted.keys() == model.state_dict().keys()
        assert all(torch.equal(converted[k], v) for k, v in model.state_dict().items())
    assert vae_checkpoint_filter_fn(official).keys() == converted.keys()  # the model built from the shapes
    assert MARVAEConfig(**config_from_official(official), scaling_factor=0.2325) == MARVAEConfig(
        ch=32, ch_mult=(1, 2), attn_resolutions=(128,), resolution=256)  # the same modules, named at 256
    broken = dict(official)
    broken.pop("decoder.conv_out.bias")
    broken["encoder.down.1.attn.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        vae_checkpoint_filter_fn(broken, model)
    assert re.search(r"missing decoder\.conv_out\.bias\b", str(info.value)), info.value
    assert "unexpected encoder.down.1.attn.0.extra.weight" in str(info.value)
    reshaped = dict(official, **{"post_quant_conv.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"post_quant_conv\.bias: shape \(5,\), expected \(16,\)"):
        vae_checkpoint_filter_fn(reshaped, model)
    with pytest.raises(checkpoints.CheckpointError, match="missing decoder.conv_out.bias"):
        checkpoints.load_into(_tiny(), broken, source="kl16.ckpt", filter_fn=vae_checkpoint_filter_fn)
    with pytest.raises(ValueError, match="not an official MAR"):
        config_from_official({"weight": torch.zeros(1)})
    assert unwrap({"model": official}) is official


def test_bad_inputs_raise():
    model = _tiny()
    x, _ = model.example_input(batch_size=2)
    assert x.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"expected shape \(B, 3, H, W\)"):
        model.encode_moments(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode(torch.rand(1, 3, 33, 32), resize="none")
    with pytest.raises(ValueError, match="NaN"):
        model.encode(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match=r"values in \[-1, 1\]"):
        model.encode_moments(torch.full((1, 3, 32, 32), 5.0))
    with pytest.raises(ValueError, match=r"expected values in \[0, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), -0.5))
    with pytest.raises(ValueError, match=r"latents: expected a float \(B, 16, h, w\)"):
        model.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="latents: contain NaN"):
        model.decode(torch.full((1, 16, 4, 4), float("inf")))
    with pytest.raises(ValueError, match="sample=True only"):
        model.encode(x, seed=0)


def test_sampling_is_per_item_and_decode_range():
    model = _tiny()
    x, _ = model.example_input(batch_size=2)
    mode = model.encode(x)
    assert mode.shape == (2, 16, 16, 16) and torch.allclose(model.encode(x[1:]), mode[1:], atol=1e-6)
    both = model.encode(x, sample=True, seed=[3, 7])
    alone = model.encode(x[1:], sample=True, seed=7)
    assert torch.allclose(both[1:], alone, atol=1e-6) and not torch.allclose(both, mode, atol=1e-4)
    assert not torch.allclose(model.encode(x[1:], sample=True, seed=8), alone, atol=1e-4)
    out = model.decode(mode)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_registered_entry():
    spec = zoo.model_info("mar-kl16-vae")
    assert (spec.kind, spec.architecture, spec.hub_file.filename) == ("autoencoder", "mar-kl16-vae", "kl16.ckpt")
    assert len(spec.hub_file.revision) == 40 and spec.filter_fn is vae_checkpoint_filter_fn
    with torch.device("meta"):
        model = zoo.hub.build(spec)
    assert model.downsample == 16 and model.config.embed_dim == 16 and model.config.scaling_factor == 0.2325
    assert model.example_input()[0].shape == (1, 3, spec.input_size, spec.input_size)
