"""TokenBridge's tokenizer (KL VAE + per-channel Gaussian quantizer): the official tokenizer path of the fixture
(images -> posterior mode x 0.2325 -> codes -> dequantised latents -> decoded images), input checks."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from tokenizers_img.tokenbridge import TokenBridgeTokenizer, TokenBridgeTokenizerConfig, checkpoint_filter_fn
from zoo import checkpoints
from zoo.api import Tokens

from test_mar_vae import config_from_fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(request):
    from conftest import parity_folder

    folder = parity_folder("tokenbridge")
    cfg = json.loads((folder / "config.json").read_text())
    q = cfg["quantizer"]
    vae = dataclasses.asdict(config_from_fixture(cfg))
    vae.pop("architecture")
    config = TokenBridgeTokenizerConfig(**vae, bits=q["quant_bits"], value_min=q["quant_min"],
                                        value_max=q["quant_max"], std_range=q["std_range"])
    tok = TokenBridgeTokenizer(config).eval()
    checkpoints.load_into(tok, load_file(str(folder / "official_vae_state_dict.safetensors")), source="fixture",
                          filter_fn=checkpoint_filter_fn)
    io = load_file(str(folder / "io.safetensors"))
    return tok, io


def test_the_official_tokenizer_path(official):
    tok, io = official
    images = (io["vae.images"] + 1) / 2  # the official [-1, 1] input, as the zoo's [0, 1]
    tokens = tok.encode(images, resize="none")
    assert tokens.layout == "channels" and tokens.vocab_size_per_depth == (64,) * 16
    assert torch.equal(tokens.codes, io["vae.tokens"])
    torch.testing.assert_close(tok.codes_to_latents(tokens), io["vae.latents_dequant"], atol=1e-6, rtol=0)
    torch.testing.assert_close(tok.decode(tokens), ((io["vae.recon"] + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)
    assert torch.equal(tok.quantizer.reconstruction_values, io["quant.reconstruction_values"])


def test_sampled_posterior_is_per_item(official):
    tok, io = official
    images = (io["vae.images"] + 1) / 2
    a = tok.encode(images, resize="none", sample=True, seed=[3, 4])
    b = tok.encode(images[1:], resize="none", sample=True, seed=[4])
    assert torch.equal(a.codes[1:], b.codes) and not torch.equal(a.codes, tok.encode(images, resize="none").codes)


def test_bad_input(official):
    tok, io = official
    codes = io["vae.tokens"]
    with pytest.raises(ValueError, match="16 channels"):
        tok.decode(codes[..., :8])
    with pytest.raises(ValueError, match=r"0\.\.63|codes"):
        tok.decode(codes.clone().fill_(64))
    with pytest.raises(ValueError, match="NaN"):
        tok.quantize_latents(torch.full((1, 16, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="layout"):
        tok.decode(Tokens(torch.zeros(1, 4, 4, dtype=torch.long), "grid", (64,)))
    with pytest.raises(ValueError, match="bits"):
        TokenBridgeTokenizerConfig(bits=0)
    for factor in (0.0, -0.2325, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scaling_factor"):
            TokenBridgeTokenizerConfig(scaling_factor=factor)
