"""The harness every registered model goes through, at a tiny size (timm-style, parametrized over the registry)."""

import dataclasses

import pytest
import torch

import zoo
from zoo import hub, registry

from conftest import TINY_OVERRIDES, TINY_PREPARE

ALL = zoo.list_models()
# Tokenizers encode and decode; accelerators (token-reduced ViTs) and classifiers map images to logits; autoencoders
# have continuous latents: each kind gets its harness.
CODECS = zoo.list_models(kind="tokenizer")
ACCELERATORS = zoo.list_models(kind="accelerator") + zoo.list_models(kind="classifier")
AUTOENCODERS = zoo.list_models(kind="autoencoder")


def build_tiny(name):
    """A registered model at its family's tiny size (conftest.TINY_OVERRIDES), randomly initialised."""
    spec = zoo.model_info(name)
    model_cls = registry.get_architecture(spec.architecture)
    fields = {f.name for f in dataclasses.fields(model_cls.config_class)}
    overrides = {k: v for k, v in TINY_OVERRIDES.get(spec.family, {}).items() if k in fields}
    torch.manual_seed(0)
    model = hub.build(spec, **overrides)
    TINY_PREPARE.get(spec.family, lambda m: m)(model)
    return model.eval()


def example_input(model):
    x, kwargs = model.example_input(batch_size=2)
    return x, kwargs


@pytest.mark.parametrize("name", ALL)
def test_spec_facts_match_the_architecture(name):
    spec = zoo.model_info(name)
    with torch.device("meta"):
        model = hub.build(spec)
    assert (model.kind, model.modality) == (spec.kind, spec.modality)
    if spec.kind == "tokenizer":
        assert model.codebook_size == spec.codebook_size
        assert model.num_codebooks == spec.num_codebooks
        if spec.sample_rate is not None:
            assert model.sample_rate == spec.sample_rate
            assert spec.tokens_per_item.startswith(f"{model.frame_rate:g} ")
    if spec.input_size is not None:
        x, _ = model.example_input()
        assert tuple(x.shape[-2:]) == (spec.input_size,) * 2


@pytest.mark.parametrize("name", CODECS)
def test_encode_decode_shapes(name):
    model = build_tiny(name)
    x, kwargs = example_input(model)
    tokens = model.encode(x, **kwargs)
    assert tokens.codes.dtype == torch.int64 and tokens.layout == model.token_layout
    assert tokens.vocab_sizes == model.vocab_sizes and tokens.meta["config_hash"] == model.config_hash
    assert tokens.codes.shape == (2, *model.token_shape(tuple(x.shape[1:])))
    assert int(tokens.codes.min()) >= 0 and int(tokens.codes.max()) < model.codebook_size
    out = model.decode(tokens, seed=0)
    assert out.shape[0] == 2 and out.shape[-1] == x.shape[-1] and torch.isfinite(out).all()
    if model.modality == "image":
        assert out.shape == x.shape


@pytest.mark.parametrize("name", CODECS)
def test_sequence_order_and_embeddings(name):
    """What a generator reads: codes in reading order and back, the quantizer's vectors per position."""
    model = build_tiny(name)
    x, kwargs = example_input(model)
    tokens = model.encode(x, **kwargs)
    seq = model.to_sequence(tokens)                                     # (B, L, K)
    assert seq.ndim == 3 and seq.shape[0] == 2 and seq.shape[2] == len(tokens.vocab_size_per_depth)
    back = model.from_sequence(seq, lengths=tokens.lengths)
    assert torch.equal(back.codes, tokens.codes) and back.layout == tokens.layout
    emb = model.codes_to_embeddings(tokens)
    assert emb.shape[:2] == seq.shape[:2] and emb.is_floating_point() and torch.isfinite(emb).all()
    # equal codes give equal vectors, and different codes different vectors (the lookup is per code)
    flat_codes, flat_emb = seq.reshape(-1, seq.shape[-1]), emb.reshape(-1, emb.shape[-1])
    first = (flat_codes == flat_codes[0]).all(-1)
    assert torch.allclose(flat_emb[first], flat_emb[0].expand_as(flat_emb[first]))


@pytest.mark.parametrize("name", CODECS)
def test_stochastic_decode_is_per_item(name):
    """A seeded item decodes to the same output alone and inside a batch, at any position."""
    model = build_tiny(name)
    x, kwargs = example_input(model)
    tokens = model.encode(x, **kwargs)
    both = model.decode(tokens, seed=7)
    alone = model.decode(tokens[1], seed=7)
    swapped = model.decode(tokens, seed=[3, 7])
    assert torch.allclose(both[1:2, ..., : alone.shape[-1]], alone, atol=1e-5)
    assert torch.allclose(swapped[1], both[1], atol=1e-5)
    if model.stochastic_decode:
        assert not torch.allclose(model.decode(tokens[1], seed=8), alone, atol=1e-3)


@pytest.mark.parametrize("name", CODECS)
def test_save_load_roundtrip(name, tmp_path):
    model = build_tiny(name)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and not loaded.training
    x, kwargs = example_input(model)
    assert torch.equal(loaded.encode(x, **kwargs).codes, model.encode(x, **kwargs).codes)
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
        assert "vocabulary" in text and "token layout" in text
    if zoo.model_info(name).paper:
        assert zoo.model_info(name).paper in text


@pytest.mark.parametrize("name", CODECS)
def test_bad_codes_raise(name):
    model = build_tiny(name)
    x, kwargs = example_input(model)
    tokens = model.encode(x, **kwargs)
    bad = tokens.codes.clone()
    bad.view(-1)[0] = model.codebook_size
    with pytest.raises(ValueError, match="values must be in"):
        model.decode(bad)
    with pytest.raises(ValueError, match="integer codes"):
        model.decode(tokens.codes.float())


@pytest.mark.parametrize("name", ACCELERATORS)
def test_accelerator_forward(name):
    model = build_tiny(name)
    x, kwargs = example_input(model)
    with torch.inference_mode():
        logits = model(x, **kwargs)
    assert logits.shape[0] == 2 and logits.ndim == 2 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ACCELERATORS)
def test_accelerator_save_load_roundtrip(name, tmp_path):
    model = build_tiny(name)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    x, kwargs = example_input(model)
    with torch.inference_mode():
        assert torch.equal(loaded(x, **kwargs), model(x, **kwargs))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_autoencoder_roundtrip(name, tmp_path):
    model = build_tiny(name)
    images, kwargs = example_input(model)
    latents = model.encode(images, **kwargs)
    assert latents.shape[0] == 2 and latents.is_floating_point()
    out = model.decode(latents)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    model.save_pretrained(tmp_path)
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert type(loaded) is type(model) and torch.equal(loaded.encode(images), latents)
    with pytest.raises(ValueError, match="latents: expected"):
        model.decode(latents[:, :1])


@pytest.mark.parametrize("name", ALL)
def test_capabilities(name):
    """Every model says what it is and what it can do; the CLI and demo ask these instead of family names."""
    model = build_tiny(name)
    caps = model.capabilities()
    assert caps["kind"] == zoo.model_info(name).kind and caps["modality"] == zoo.model_info(name).modality
    if caps["kind"] == "tokenizer":
        assert caps["token_layout"] in zoo.api.LAYOUTS
        assert isinstance(caps["prefix_decodable"], bool) and isinstance(caps["stochastic_decode"], bool)
        assert set(caps["default_decode_kwargs"]) <= set(__import__("inspect").signature(model.decode).parameters)


GENERATORS = zoo.list_models(kind="generator")


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_samples_through_its_tokenizer(name, tmp_path):
    """Every generator at its tiny size, paired with its registered tokenizer at that family's tiny size: codes in
    the tokenizer's layout, decoded samples, per-item seeds, and a save / load of the generator's own weights."""
    gen = build_tiny(name)
    tok = build_tiny(zoo.model_info(name).tokenizer)
    gen.pair(tok)
    labels = [0, 1] if gen.num_classes else None
    per_label = 1 if labels else 2
    tokens = gen.generate(labels, num_samples=per_label, seed=0)
    if isinstance(tokens, zoo.Latents):  # continuous generators: latents of the paired autoencoder
        assert tok.kind == "autoencoder" and len(tokens) == 2
        assert tokens.latents.shape[1] == tok.capabilities()["latent_channels"]
    else:
        assert tokens.layout == tok.token_layout and len(tokens) == 2 and tokens.vocab_sizes == tok.vocab_sizes
    out = gen.sample(labels, num_samples=per_label, seed=0)
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    alone = gen.generate([1] if labels else None, seed=0 if labels else 1)  # the second item, alone
    if isinstance(tokens, zoo.Latents):
        torch.testing.assert_close(alone.latents[0], tokens.latents[1], atol=1e-5, rtol=0)
    else:
        assert torch.equal(alone.codes[0], tokens.codes[1])
    gen.save_pretrained(tmp_path)
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert loaded.state_dict().keys() == build_tiny(name).state_dict().keys()  # no tokenizer weights inside
    for key, value in gen.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
