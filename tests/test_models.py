"""The harness every registered model goes through, at a tiny size (timm-style, parametrized over the registry)."""

import pytest
import torch

import zoo
from zoo import hub, registry

from conftest import TINY_OVERRIDES, init_codebook_

ALL = zoo.list_models()


def build_tiny(name):
    spec = zoo.model_info(name)
    model_cls = registry.get_architecture(spec.architecture)
    config = model_cls.config_class(**{**spec.config, **TINY_OVERRIDES.get(spec.family, {})})
    torch.manual_seed(0)
    model = model_cls(config)
    if hasattr(model, "quantizer"):
        init_codebook_(model)
    model.card_info["spec"] = spec
    return model.eval()


def example_input(model):
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


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
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
    assert f'zoo.load("{name}")' in text and "codebook size" in text
    if zoo.model_info(name).paper:
        assert zoo.model_info(name).paper in text


@pytest.mark.parametrize("name", ALL)
def test_bad_codes_raise(name):
    model = build_tiny(name)
    tokens = model.encode(**example_input(model))
    bad = tokens.codes.clone()
    bad.view(-1)[0] = model.codebook_size
    with pytest.raises(ValueError, match="values must be in"):
        model.decode(bad)
    with pytest.raises(ValueError, match="integer codes"):
        model.decode(tokens.codes.float())
