"""The FlexTok VAE entries: diffusers-layout checkpoints convert with every key checked."""

import re

import pytest
import torch

import zoo
from tokenizers_img.flextok import FlexTokVAE, FlexTokVAEConfig, vae_checkpoint_filter_fn
from zoo.checkpoints import load_into

from conftest import TINY_OVERRIDES


def tiny_vae() -> FlexTokVAE:
    fields = {k: v for k, v in TINY_OVERRIDES["flextok"].items() if k in FlexTokVAEConfig.__dataclass_fields__}
    torch.manual_seed(0)
    return FlexTokVAE(FlexTokVAEConfig(**fields)).eval()


def test_diffusers_layout_converts_exactly():
    source = tiny_vae()
    diffusers_layout = source.vae.state_dict()  # what diffusion_pytorch_model.safetensors holds: no prefix
    target = tiny_vae()
    torch.nn.init.zeros_(target.vae.encoder.conv_in.weight)
    load_into(target, diffusers_layout, source="diffusion_pytorch_model.safetensors", filter_fn=vae_checkpoint_filter_fn)
    loaded = target.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items())  # decoder too
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(target.encode(images), source.encode(images))
    broken = dict(diffusers_layout)
    broken.pop("decoder.conv_out.bias")
    broken["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        vae_checkpoint_filter_fn(broken, target)
    message = str(info.value)  # both problems are reported, each naming its key
    assert re.search(r"missing (vae\.)?decoder\.conv_out\.bias\b", message), message
    assert "unexpected encoder.extra.weight" in message, message
    reshaped = dict(diffusers_layout, **{"decoder.conv_out.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"decoder\.conv_out\.bias: shape \(5,\), expected \(3,\)"):
        vae_checkpoint_filter_fn(reshaped, target)


def test_registered_vaes():
    for channels in (4, 8, 16):
        spec = zoo.model_info(f"flextok-vae-c{channels}")
        assert spec.kind == "autoencoder" and spec.hub_file.repo_id == f"EPFL-VILAB/flextok_vae_c{channels}"
        with torch.device("meta"):
            model = zoo.hub.build(spec)
        assert model.config.vae_latent_channels == channels and model.downsample == 8
