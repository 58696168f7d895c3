"""The harness every registered model goes through, at a tiny size (timm-style, parametrized over the registry)."""

import dataclasses

import pytest
import torch

import zoo
from zoo import hub, registry

from conftest import TINY_OVERRIDES, init_codebook_

ALL = zoo.list_models()
# Accelerators (token-reduced ViTs) and autoencoders (continuous latents) have no codes: they get their own harness.
ACCELERATORS = zoo.list_models(kind="accelerator")
AUTOENCODERS = zoo.list_models(kind="autoencoder")
CODECS = [name for name in ALL if name not in ACCELERATORS + AUTOENCODERS]


def build_tiny(name):
    spec = zoo.model_info(name)
    model_cls = registry.get_architecture(spec.architecture)
    fields = {f.name for f in dataclasses.fields(model_cls.config_class)}
    overrides = {k: v for k, v in TINY_OVERRIDES.get(spec.family, {}).items() if k in fields}
    config = model_cls.config_class(**{**spec.config, **overrides})
    torch.manual_seed(0)
    model = model_cls(config)
    if hasattr(model, "quantizer"):
        init_codebook_(model)
    model.card_info["spec"] = spec
    return model.eval()


def example_input(model):
    if hasattr(model, "vit"):
        return dict(images=torch.rand(2, 3, *model.vit.patch_embed.img_size))
    if model.modality == "audio":
        return dict(audio=torch.randn(2, model.sample_rate // 2) * 0.1, sample_rate=model.sample_rate)
    return dict(x=torch.rand(2, 3, model.config.image_size, model.config.image_size))


@pytest.mark.parametrize("name", ALL)
def test_spec_facts_match_the_architecture(name):
    spec = zoo.model_info(name)
    with torch.device("meta"):
        model = hub.build(spec)
    if spec.kind == "tokenizer":
        assert model.codebook_size == spec.codebook_size
        assert model.num_codebooks == spec.num_codebooks
        if spec.modality == "audio":
            assert model.sample_rate == spec.sample_rate
            assert spec.tokens_per_item.startswith(f"{model.frame_rate:g} ")
    if spec.kind == "accelerator":
        assert (spec.input_size,) * 2 == tuple(model.vit.patch_embed.img_size)


@pytest.mark.parametrize("name", CODECS)
def test_encode_decode_shapes(name):
    model = build_tiny(name)
    inputs = example_input(model)
    tokens = model.encode(**{k: v for k, v in inputs.items()})
    x = next(iter(inputs.values()))
    assert tokens.codes.dtype == torch.int64
    assert tokens.codes.shape == (2, *model.token_shape(tuple(x.shape[1:])))
    assert int(tokens.codes.min()) >= 0 and int(tokens.codes.max()) < model.codebook_size
    out = model.decode(tokens)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", CODECS)
def test_save_load_roundtrip(name, tmp_path):
    model = build_tiny(name)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and not loaded.training
    inputs = example_input(model)
    assert torch.equal(loaded.encode(**inputs).codes, model.encode(**inputs).codes)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("name", ALL)
def test_card_renders(name):
    card = build_tiny(name).generate_model_card()
    assert card.data.library_name == "tokzoo"
    assert card.data.license == zoo.model_info(name).license
    text = str(card)
    assert f'zoo.load("{name}")' in text
    if name in CODECS:
        assert "codebook size" in text
    if zoo.model_info(name).paper:
        assert zoo.model_info(name).paper in text


@pytest.mark.parametrize("name", CODECS)
def test_bad_codes_raise(name):
    model = build_tiny(name)
    tokens = model.encode(**example_input(model))
    bad = tokens.codes.clone()
    bad.view(-1)[0] = model.codebook_size
    with pytest.raises(ValueError, match="values must be in"):
        model.decode(bad)
    with pytest.raises(ValueError, match="integer codes"):
        model.decode(tokens.codes.float())


@pytest.mark.parametrize("name", ACCELERATORS)
def test_accelerator_forward(name):
    model = build_tiny(name)
    with torch.inference_mode():
        logits = model(**example_input(model))
    assert logits.shape == (2, model.vit.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ACCELERATORS)
def test_accelerator_save_load_roundtrip(name, tmp_path):
    model = build_tiny(name)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config and type(loaded.vit) is type(model.vit)
    inputs = example_input(model)
    with torch.inference_mode():
        assert torch.equal(loaded(**inputs), model(**inputs))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_autoencoder_roundtrip(name, tmp_path):
    model = build_tiny(name)
    images = torch.rand(2, 3, model.config.image_size, model.config.image_size)
    latents = model.encode(images)
    f = model.downsample
    assert latents.shape == (2, model.config.vae_latent_channels, images.shape[-2] // f, images.shape[-1] // f)
    out = model.decode(latents)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    model.save_pretrained(tmp_path)
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and torch.equal(loaded.encode(images), latents)
    with pytest.raises(ValueError, match="latents: expected"):
        model.decode(latents[:, :1])
