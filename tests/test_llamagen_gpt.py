"""LlamaGen's GPT (generators/ar): parity with the official code (../shared/parity/llamagen), the KV cache against
recomputing the prefix, per-item seeds, prompting, bad input, bf16, the converter, the registered entries, and the
same GPT trained on the codes of other tokenizers (FlexTok, WavTokenizer, the LlamaGen VQ)."""

import dataclasses
import fnmatch
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import zoo
from generators.ar import (ARConfig, ARGenerator, checkpoint_filter_fn, config_from_official, to_official,
                           to_official_config)
from zoo import hub, io as zio, registry
from zoo.api import Tokens
from zoo.checkpoints import CheckpointError, load_into

from conftest import REPO, SHARED, TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRIES = zoo.list_models("llamagen-gpt-*-c2i-*")


def _fixture_cases() -> list[str]:
    """The fixture's recorded `generate` cases (read at collection; the tests skip when the fixture is absent)."""
    path = SHARED / "parity" / "llamagen" / "config.json"
    return sorted(json.loads(path.read_text())["generate_cases"]) if path.is_file() else ["absent"]


CASES = _fixture_cases()


def atol(config: dict, key: str) -> float:
    """The fixture's recommended max-abs tolerance for tensor `key` (0 = exact)."""
    rec = config["recommended_atol"]
    if any(fnmatch.fnmatchcase(key, p) for p in rec["exact"]):
        return 0.0
    for patterns, value in rec.items():
        if not patterns.startswith("_") and patterns != "exact" and any(
                fnmatch.fnmatchcase(key, p.strip()) for p in patterns.split(",")):
            return float(value)
    raise KeyError(f"the fixture gives no tolerance for {key}")


@pytest.fixture
def official(parity_dir):
    """(config.json, io tensors, the fixture GPT loaded through the converter)."""
    folder = parity_dir("llamagen")
    config = json.loads((folder / "config.json").read_text())
    model = ARGenerator(ARConfig(**config_from_official(config["gpt"]["model_args"]))).eval()
    load_into(model, load_file(str(folder / "gpt_state_dict.safetensors")), source="fixture",
              filter_fn=checkpoint_filter_fn)
    return config, load_file(str(folder / "io.safetensors")), model


def case_kwargs(case: dict) -> dict:
    return dict(cfg_scale=case["cfg_scale"], cfg_interval=case["cfg_interval"], temperature=case["temperature"],
                top_k=case["top_k"], top_p=case["top_p"], sample=case["sample_logits"])


def tiny_model(seed: int = 0, **overrides) -> ARGenerator:
    """A random tiny GPT with spread-out logits (the official init zeroes the head)."""
    fields = {**dict(dim=32, n_layer=2, n_head=4, multiple_of=32, vocab_size=48, block_size=12, grid_size=(3, 4),
                     num_classes=5), **overrides}
    torch.manual_seed(seed)
    model = ARGenerator(ARConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0 / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1).add_(1.0 if p.ndim == 1 else 0.0)
        model.output.weight.mul_(3)
    return model


# --- parity with the official code ---------------------------------------------------------------------------------


def test_teacher_forced_parity(official):
    config, io, model = official
    acts = {}
    model.tok_dropout.register_forward_hook(lambda m, i, o: acts.__setitem__("gpt.tf.h0", o))
    for n, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(f"gpt.tf.layer{n}", o))
    model.norm.register_forward_hook(lambda m, i, o: acts.__setitem__("gpt.tf.norm", o))
    with torch.no_grad():
        acts["gpt.tf.logits"] = model(io["gpt.tf.tokens"], io["gpt.tf.labels"])
        acts["gpt.tf.loss"] = model.loss(io["gpt.tf.tokens"], io["gpt.tf.labels"]).reshape(1)
    acts["gpt.freqs_cis"] = model.freqs_cis()
    expected = [k for k in io if re.fullmatch(r"gpt\.(freqs_cis|tf\.(h0|layer\d+|norm|logits|loss))", k)]
    assert set(expected) == set(acts), "every recorded intermediate is compared"
    for key in expected:
        diff = (acts[key] - io[key]).abs().max().item()
        assert diff <= atol(config, key), f"{key}: {diff:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_generate_parity(official, case):
    """The recorded official runs: the same ids with torch.manual_seed(seed) and with one shared generator; the raw
    model logits, the guided logits and the probabilities of every step within tolerance."""
    config, io, model = official
    spec = config["generate_cases"][case]
    steps = []
    torch.manual_seed(spec["seed"])
    tokens = model.generate(spec["labels"], callback=steps.append, **case_kwargs(spec))
    ids = io[f"{case}.ids"].long()
    assert tokens.layout == "grid" and tokens.codes.shape[1:] == model.config.grid_size
    assert torch.equal(tokens.codes.flatten(1), ids) and tokens.meta["labels"] == spec["labels"]
    shared = model.generate(spec["labels"], generator=torch.Generator().manual_seed(spec["seed"]),
                            **case_kwargs(spec))
    assert torch.equal(shared.codes, tokens.codes)
    assert len(steps) == ids.shape[1]
    for name, key in (("model_logits", "model_logits"), ("logits", "step_logits"), ("probs", "step_probs")):
        ref = io[f"{case}.{key}"]
        # after cfg_interval the null-class rows are no longer computed: compare the conditional rows
        diff = max((s[name] - ref[i][: len(s[name])]).abs().max().item() for i, s in enumerate(steps))
        assert diff <= atol(config, f"{case}.{key}"), f"{case}.{key}: {diff:.3g}"


# --- a slow reference: recompute the prefix every step ---------------------------------------------------------------


def official_filter(logits, top_k, top_p):
    """The official top_k_top_p_filtering, written out (in place on a copy)."""
    logits = logits.clone()
    if top_k > 0:
        logits[logits < torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]] = -float("inf")
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = 0
        logits[remove.scatter(1, sorted_idx, remove)] = -float("inf")
    return logits


@torch.no_grad()
def reference_generate(model, labels, *, cfg_scale, cfg_interval, temperature, top_k, top_p, generators,
                       sample=True, prompt=None):
    """No cache: the teacher-forced forward over the whole prefix at every step; torch.multinomial per item."""
    labels = torch.as_tensor(labels)
    codes = torch.zeros(len(labels), 0, dtype=torch.long) if prompt is None else prompt.clone()
    null = torch.full_like(labels, model.config.num_classes)
    all_logits = []
    for j in range(codes.shape[1], model.config.block_size):
        x = torch.cat([codes, torch.zeros(len(labels), 1, dtype=torch.long)], dim=1)  # position j is not read
        logits = model(x, labels)[:, j]
        if cfg_scale > 1 and not (cfg_interval > -1 and j - 1 > cfg_interval):  # the official decode-step rule
            uncond = model(x, null)[:, j]
            logits = uncond + (logits - uncond) * cfg_scale
        all_logits.append(logits)
        probs = F.softmax(official_filter(logits / max(temperature, 1e-5), top_k, top_p), dim=-1)
        if sample:
            nxt = torch.cat([torch.multinomial(probs[i: i + 1], 1, generator=g)[0] for i, g in enumerate(generators)])
        else:
            nxt = probs.argmax(-1)
        codes = torch.cat([codes, nxt[:, None]], dim=1)
    return codes, all_logits


SAMPLING = [dict(cfg_scale=4.0, cfg_interval=-1, temperature=1.0, top_k=8, top_p=1.0),
            dict(cfg_scale=2.0, cfg_interval=3, temperature=0.8, top_k=0, top_p=0.8),
            dict(cfg_scale=1.0, cfg_interval=-1, temperature=1.3, top_k=0, top_p=1.0)]


@pytest.mark.parametrize("variant", ["2d", "1d-gqa"])
@pytest.mark.parametrize("sampling", range(len(SAMPLING)))
def test_kv_cache_matches_recomputing_the_prefix(variant, sampling):
    kwargs = SAMPLING[sampling]
    model = tiny_model(1) if variant == "2d" else tiny_model(2, grid_size=None, n_kv_head=2)
    labels, seeds = [0, 3, 3], [5, 6, 7]
    steps = []
    tokens = model.generate(labels, seed=seeds, callback=steps.append, **kwargs)
    ref, ref_logits = reference_generate(model, labels, generators=[torch.Generator().manual_seed(s) for s in seeds],
                                         **kwargs)
    assert torch.equal(tokens.codes.flatten(1), ref)
    assert max((s["logits"] - r).abs().max().item() for s, r in zip(steps, ref_logits)) < 1e-4
    assert len(ref.unique()) > 4  # the samples are not degenerate


def test_greedy_is_deterministic_and_matches_the_reference():
    model = tiny_model(3)
    a = model.generate([1, 3], cfg_scale=3.0, sample=False, seed=0)
    b = model.generate([1, 3], cfg_scale=3.0, sample=False, seed=123)
    torch.manual_seed(1)
    c = model.generate([1, 3], cfg_scale=3.0, sample=False)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.codes, c.codes)
    ref, _ = reference_generate(model, [1, 3], cfg_scale=3.0, cfg_interval=-1, temperature=1.0, top_k=0, top_p=1.0,
                                generators=[None, None], sample=False)
    assert torch.equal(a.codes.flatten(1), ref)


def test_small_batch_products_give_the_same_samples():
    """Batch-1 decoding with CFG (2 rows) routes its products through `zoo.small_batch`; off, the same tokens."""
    model = tiny_model(3)
    model.small_batch_min_width = 0  # route even this tiny model's products
    kw = dict(cfg_scale=3.0, top_k=20, seed=4)
    steps_on, steps_off = [], []
    fast = model.generate([2], callback=steps_on.append, **kw)
    model.small_batch_rows = 0
    try:
        plain = model.generate([2], callback=steps_off.append, **kw)
    finally:
        del model.small_batch_rows
    assert torch.equal(fast.codes, plain.codes)
    assert max((a["logits"] - b["logits"]).abs().max().item() for a, b in zip(steps_on, steps_off)) < 1e-4


# --- per-item seeds ------------------------------------------------------------------------------------------------


def test_per_item_seeds():
    """An item's tokens depend on its label and seed only: alone, at another position, in a bigger batch."""
    model = tiny_model(3)
    kw = dict(cfg_scale=4.0, top_k=20, top_p=0.95, cfg_interval=6)
    batch = model.generate([1, 3], num_samples=2, seed=5, **kw)       # (1, 5) (1, 6) (3, 5) (3, 6)
    assert batch.meta["labels"] == [1, 1, 3, 3] and batch.meta["seeds"] == [5, 6, 5, 6]
    alone = model.generate([3], seed=6, **kw)
    assert torch.equal(alone.codes[0], batch.codes[3])
    moved = model.generate([3, 1], seed=[6, 5], **kw)
    assert torch.equal(moved.codes[0], batch.codes[3]) and torch.equal(moved.codes[1], batch.codes[0])
    bigger = model.generate([0, 3, 2, 1], num_samples=2, seed=5, **kw)
    assert torch.equal(bigger.codes[3], batch.codes[3]) and torch.equal(bigger.codes[6], batch.codes[0])
    own = model.generate([3], generator=[torch.Generator().manual_seed(6)], **kw)
    assert torch.equal(own.codes[0], batch.codes[3])
    assert not torch.equal(batch.codes[2], batch.codes[3])  # different seeds, different samples


# --- prompting -----------------------------------------------------------------------------------------------------


def test_prefix_prompting():
    model = tiny_model(3)
    kw = dict(cfg_scale=3.0, cfg_interval=4, sample=False)
    full = model.generate([1, 3], **kw).codes.flatten(1)
    for k in (1, 5, model.block_size - 1):
        cont = model.generate([1, 3], prompt=full[:, :k], **kw).codes.flatten(1)
        assert torch.equal(cont, full), k  # greedy: the prompt is kept and continued as if drawn
    prompt = torch.tensor([1, 2, 3, 4, 5, 6])
    sampled = model.generate([1, 3], num_samples=2, prompt=prompt, seed=0).codes.flatten(1)
    assert torch.equal(sampled[:, :6], prompt.expand(4, -1))
    as_tokens = Tokens(prompt.expand(4, -1).contiguous(), "sequence", (model.config.vocab_size,))
    assert torch.equal(model.generate([1, 3], num_samples=2, prompt=as_tokens, seed=0).codes.flatten(1), sampled)
    partial = model.generate([3], prompt=prompt[:2], steps=5, seed=0)  # no full grid: a sequence
    assert partial.layout == "sequence" and partial.codes.shape == (1, 7)


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [  # tiny_model(): 5 classes, 48 codes, 12 tokens per item
    (dict(labels=[5]), r"class ids must be in 0\.\.4"),
    (dict(labels=[-1]), r"class ids must be in 0\.\.4"),
    (dict(labels=None), "class-conditional"),
    (dict(labels=[0.5]), "integer class ids"),
    (dict(labels=[0], num_samples=0), "num_samples"),
    (dict(labels=[0], top_p=0.0), "top_p"),
    (dict(labels=[0], top_p=1.5), "top_p"),
    (dict(labels=[0], top_k=-1), "top_k"),
    (dict(labels=[0], temperature=0.0), "temperature"),
    (dict(labels=[0], cfg_scale=float("nan")), "cfg_scale"),
    (dict(labels=[0], steps=0), "steps"),
    (dict(labels=[0], steps=13), "exceed block_size"),
    (dict(labels=[0], prompt=[[0, 48]]), r"prompt: values must be in \[0, 48\)"),
    (dict(labels=[0], prompt=[[1.5]]), "integer codes"),
    (dict(labels=[0], prompt=torch.zeros(1, 12, dtype=torch.long)), "leave nothing to generate"),
    (dict(labels=[0, 1], prompt=torch.zeros(3, 2, dtype=torch.long)), "one per output item"),
    (dict(labels=[0], num_samples=2, seed=[1]), "one per output item"),
    (dict(labels=[0], seed=1, generator=torch.Generator()), "either seed or generator"),
    (dict(labels=[0], cfg_interval="4"), "cfg_interval"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().generate(**kwargs)


def test_bad_models_and_labels():
    model = tiny_model(class_dropout_prob=0.0)  # no null-class row: no guidance
    with pytest.raises(ValueError, match="needs a null class"):
        model.generate([0], cfg_scale=2.0)
    assert model.generate([0], cfg_scale=1.0, seed=0).codes.shape == (1, 3, 4)
    uncond = tiny_model(num_classes=0)
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond.generate([0])
    with pytest.raises(ValueError, match="cfg_scale 2.0 > 1 needs a null class"):
        ARGenerator(ARConfig(**{**dataclasses.asdict(uncond.config), "cfg_scale": 2.0})).generate(seed=0)
    assert uncond.generate(num_samples=3, cfg_scale=1.0, seed=0).codes.shape == (3, 3, 4)
    with pytest.raises(ValueError, match=r"class ids must be in 0\.\.5 \(5 = the null class\)"):
        tiny_model()(torch.zeros(1, 4, dtype=torch.long), [6])
    for bad, match in ((dict(grid_size=(4, 4)), "rows \\* cols == block_size"), (dict(n_head=3), "multiple of"),
                       (dict(cls_token_num=2), "one class token"), (dict(dim=24, n_head=4), "multiple of 4")):
        with pytest.raises(ValueError, match=match):
            ARConfig(**{**dict(dim=32, n_head=4, vocab_size=8, block_size=12, grid_size=(3, 4)), **bad})


# --- bf16 ----------------------------------------------------------------------------------------------------------


def test_bfloat16_agrees_with_float32(official):
    """bf16 weights and cache (RMSNorm statistics, rotary and logits in float32): most greedy choices agree."""
    _, io, model = official
    with torch.no_grad():
        fp32 = model(io["gpt.tf.tokens"], io["gpt.tf.labels"])
        half = model.cast(dtype=torch.bfloat16)
        assert half.tok_embeddings.weight.dtype == torch.bfloat16
        bf16 = half(io["gpt.tf.tokens"], io["gpt.tf.labels"])
    assert bf16.dtype == torch.float32
    teacher_forced = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()  # measured: 0.97 (62 / 64)
    assert teacher_forced >= 0.85 and (bf16 - fp32).abs().max() < 0.5  # measured: 0.15 (logits up to 14)
    labels = list(range(model.num_classes))
    a = half.generate(labels, cfg_scale=3.0, sample=False).codes.flatten(1)
    b = model.cast(dtype=torch.float32).generate(labels, cfg_scale=3.0, sample=False).codes.flatten(1)
    first_token = (a[:, 0] == b[:, 0]).float().mean().item()  # measured: 1.0
    every_token = (a == b).float().mean().item()  # measured: 0.875 (a sequence diverges after its first flip)
    assert first_token >= 0.8 and every_token >= 0.6 and int(a.max()) < model.config.vocab_size


# --- converter -----------------------------------------------------------------------------------------------------


def test_converter_wrappers_and_checks(official, parity_dir):
    _, _, model = official
    sd = load_file(str(parity_dir("llamagen") / "gpt_state_dict.safetensors"))
    ours = model.state_dict()
    for wrapped in ({"model": sd}, {"module": sd}, {"state_dict": sd}, dict(sd),
                    {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
                    {**sd, "freqs_cis": model.freqs_cis(),
                     **{f"layers.{i}.attention.kv_cache.{n}_cache": torch.zeros(2, 4, 24, 16)  # left by generate
                        for i in range(model.config.n_layer) for n in "kv"}}):
        converted = checkpoint_filter_fn(wrapped, model)
        assert converted.keys() == ours.keys() and all(torch.equal(converted[k], ours[k]) for k in ours)
    assert to_official(ours).keys() == sd.keys() and all(torch.equal(to_official(ours)[k], sd[k]) for k in sd)
    with pytest.raises(KeyError, match="unrecognised key 'layers.0.attention.wq.weight'"):
        checkpoint_filter_fn({**sd, "layers.0.attention.wq.weight": torch.zeros(1)}, model)
    with pytest.raises(KeyError, match="text-to-image"):
        checkpoint_filter_fn({**sd, "cls_embedding.cap_proj.fc1.weight": torch.zeros(1)}, model)
    with pytest.raises(KeyError, match="1 missing keys"):
        checkpoint_filter_fn({k: v for k, v in sd.items() if k != "norm.weight"}, model)
    with pytest.raises(ValueError, match="shape mismatches"):
        checkpoint_filter_fn({**sd, "output.weight": torch.zeros(3, 5)}, model)
    other_grid = torch.zeros(model.freqs_cis().shape[0] + 9, *model.freqs_cis().shape[1:])
    with pytest.raises(ValueError, match="made for another token grid"):
        checkpoint_filter_fn({**sd, "freqs_cis": other_grid}, model)
    with pytest.raises(KeyError, match="not a LlamaGen GPT checkpoint"):
        checkpoint_filter_fn({"ema": sd}, model)
    with pytest.raises(CheckpointError, match="cannot convert"):
        load_into(model, {"model": {"x": torch.zeros(1)}}, source="bad.pt", filter_fn=checkpoint_filter_fn)


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_official_pickle_loads_through_the_registry(layout, tmp_path):
    """An official-format ``.pt`` (``{"model": ...}`` from DDP, the raw FSDP dict) -> `zoo.hub.load_official` with a
    registered entry at a tiny size: read with weights_only=True, converted, strictly loaded."""
    spec = zoo.model_info(ENTRIES[0])
    torch.manual_seed(0)
    source = hub.build(spec, **TINY_OVERRIDES["ar"])
    official_sd = to_official(source.state_dict())
    torch.save({"model": official_sd} if layout == "ddp" else official_sd, tmp_path / "c2i.pt")
    loaded = hub.load_official(spec, tmp_path / "c2i.pt", **TINY_OVERRIDES["ar"])
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(CheckpointError, match="layers"):
        hub.load_official(spec, tmp_path / "c2i.pt", **{**TINY_OVERRIDES["ar"], "n_layer": 2})


def test_official_config_roundtrip(official):
    config, _, model = official
    args = config["gpt"]["model_args"]
    back = to_official_config(model.config)
    assert {k: v for k, v in back.items() if k in args} == {k: args[k] for k in back if k in args}
    with pytest.raises(ValueError, match="only class-conditional"):
        config_from_official({**args, "model_type": "t2i"})


# --- the registered entries ------------------------------------------------------------------------------------------


PARAMS = {"b": 111e6, "l": 343e6, "xl": 775e6, "xxl": 1.4e9, "3b": 3.1e9}  # the official README


@pytest.mark.parametrize("name", ENTRIES)
def test_registered_entry(name):
    spec = zoo.model_info(name)
    size, image_size = re.fullmatch(r"llamagen-gpt-(\w+)-c2i-(\d+)", name).groups()
    assert spec.kind == "generator" and spec.tokenizer == "llamagen-vq-ds16-c2i" and spec.license == "mit"
    assert len(spec.hub_file.revision) == 40 and spec.hub_file.repo_id == "FoundationVision/LlamaGen"
    assert spec.hub_file.filename.lower() == f"c2i_{size}_{image_size}.pt"
    with torch.device("meta"):
        model = hub.build(spec)
    assert model.config.tokenizer == spec.tokenizer and model.num_classes == 1000
    assert model.config.block_size == (int(image_size) // 16) ** 2
    assert abs(model.num_parameters() / PARAMS[size] - 1) < 0.03, model.num_parameters()
    assert model.config.cfg_scale == {"b": 2.0, "l": 2.0, "xl": 1.75, "xxl": 1.75, "3b": 1.65}[size]


def tiny_paired(name):
    """A registered entry at the family's tiny size, paired with its tokenizer at that tokenizer's tiny size."""
    spec = zoo.model_info(name)
    tok_spec = zoo.model_info(spec.tokenizer)
    tok_cls = registry.get_architecture(tok_spec.architecture)
    tok_fields = {f.name for f in dataclasses.fields(tok_cls.config_class)}
    torch.manual_seed(0)
    tok = hub.build(tok_spec, **{k: v for k, v in TINY_OVERRIDES.get(tok_spec.family, {}).items()
                                 if k in tok_fields}).eval()
    tok.name = spec.tokenizer
    gen = hub.build(spec, **{**TINY_OVERRIDES["ar"], "vocab_size": tok.codebook_size}).eval()
    with torch.no_grad():
        gen.output.weight.normal_(0, 1.0)  # the official init zeroes the head: spread the logits
    return gen.pair(tok), tok


@pytest.mark.parametrize("name", ENTRIES)
def test_registered_entry_at_tiny_size(name, tmp_path):
    """What tests/test_models.py does for tokenizers, for these generators: generate, decode, per-item seeds,
    save / load, the card."""
    gen, tok = tiny_paired(name)
    tokens = gen.generate([1, 2], num_samples=2, seed=0)
    assert tokens.layout == tok.token_layout and tokens.meta["model"] == tok.name
    assert tokens.meta["config_hash"] == tok.config_hash and tokens.codes.shape == (4, *gen.config.grid_size)
    assert torch.equal(gen.generate([2], seed=1).codes[0], tokens.codes[3])
    images = gen.sample([1, 2], num_samples=2, seed=0)
    assert images.shape[:2] == (4, 3) and torch.allclose(images, tok.decode(tokens))
    gen.save_pretrained(tmp_path)
    loaded = zoo.load(f"local-dir:{tmp_path}")
    assert isinstance(loaded, ARGenerator) and loaded.config == gen.config
    assert torch.equal(loaded.pair(tok).generate([1, 2], num_samples=2, seed=0).codes, tokens.codes)
    text = str(gen.generate_model_card())
    assert f'zoo.load("{name}")' in text and "vocabulary" in text and "token layout" in text
    assert zoo.model_info(name).paper in text and "pinned to commit" in text


# --- generic over tokenizers: train a tiny GPT a few steps on real codes ---------------------------------------------


def train_tiny(seq: torch.Tensor, labels: torch.Tensor, vocab: int, grid=None, steps: int = 40, **overrides):
    """A tiny GPT trained with AdamW on (B, L) codes; returns it (eval mode) and the first / last loss."""
    torch.manual_seed(0)
    config = ARConfig(dim=32, n_layer=2, n_head=2, multiple_of=32, vocab_size=vocab, block_size=seq.shape[1],
                      grid_size=grid, num_classes=int(labels.max()) + 1, class_dropout_prob=0.1, token_dropout_p=0.0,
                      resid_dropout_p=0.0, ffn_dropout_p=0.0, cfg_scale=1.5, **overrides)
    model = ARGenerator(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model.loss(seq, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses[0], losses[-1]


def photos():
    return [zio.load_image(REPO / "zoo" / "samples" / f"{n}.png") for n in ("astronaut", "coffee", "chelsea")]


def test_generic_over_a_1d_tokenizer_flextok():
    tok = zoo.load("flextok-tiny-64px")
    tokens = tok.encode(photos())
    seq = tok.to_sequence(tokens)[:, :32, 0].clone()          # (3, 32): the first 32 tokens (any prefix decodes)
    # 64,000 codes: a few steps only (each costs a 64,000-way softmax); measured 11.07 -> 5.69 nats in 12 steps
    gen, first, last = train_tiny(seq, torch.tensor([0, 1, 0]), tok.codebook_size, grid=None, steps=12)
    assert last < 0.7 * first, (first, last)
    gen.pair(tok)
    out = gen.generate([0, 1], seed=0)
    assert out.layout == "sequence" and out.meta["model"] == "flextok-tiny-64px" and out.codes.shape == (2, 32)
    prefix = gen.generate([0, 1], seed=0, steps=8)
    assert prefix.codes.shape == (2, 8) and torch.equal(prefix.codes, out.codes[:, :8])
    images = gen.sample([0, 1], seed=0, decode_kwargs={"steps": 2})
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_generic_over_audio_wavtokenizer():
    tok = zoo.load("wavtokenizer-tiny-75tps")
    clips = []
    for i in range(3):
        wav, sr = zio.load_audio(REPO / "zoo" / "samples" / f"speech_{i}.wav")
        clips.append(wav[:, sr // 2: sr // 2 + sr // 2])                                # 0.5 s of speech each
    tokens = tok.encode(clips, sample_rate=sr)
    seq = tok.to_sequence(tokens)[..., 0].clone()                                       # (3, T) in time order
    gen, first, last = train_tiny(seq, torch.tensor([0, 1, 2]), tok.codebook_size, grid=None, modality="audio",
                                  steps=80)
    assert last < 0.1 * first, (first, last)  # measured: 6.93 -> 0.0025 nats in 80 steps
    gen.pair(tok)
    greedy = gen.generate([1], cfg_scale=1.0, sample=False).codes[0, 0]
    assert (greedy == seq[1]).float().mean() > 0.5  # trained on it: mostly reproduces class 1's clip
    out = gen.generate([2, 0], num_samples=2, seed=3)
    assert out.layout == "audio" and out.codes.shape == (4, 1, seq.shape[1]) and out.meta["seeds"] == [3, 4, 3, 4]
    audio = gen.sample([2, 0], num_samples=2, seed=3)
    assert audio.shape == (4, seq.shape[1] * tok.hop_length) and torch.isfinite(audio).all()
    assert gen.modality == "audio"


def test_generic_over_a_grid_tokenizer_llamagen_vq():
    if "llamagen-vq-ds16-c2i" not in zoo.list_models():
        pytest.skip("the LlamaGen VQ tokenizer is not registered")
    gen0, tok = tiny_paired(ENTRIES[0])
    tokens = tok.encode(photos())
    seq = tok.to_sequence(tokens)[..., 0].clone()                                       # (3, h * w) raster order
    grid = tuple(tokens.codes.shape[1:])
    gen, first, last = train_tiny(seq, torch.tensor([0, 1, 0]), tok.codebook_size, grid=grid)
    assert last < 0.5 * first, (first, last)
    gen.pair(tok)
    out = gen.generate([0, 1], seed=0)
    assert out.layout == "grid" and out.codes.shape == (2, *grid) and out.meta["model"] == tok.name
    images = gen.sample([0, 1], seed=0)
    assert images.shape == (2, 3, *tokens.meta["image_size"])
