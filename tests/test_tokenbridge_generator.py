"""TokenBridge: the quantizer and the generator against the official fixture (every size from its config.json),
the KV-cached head, per-item seeds, bad input."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from generators.tokenbridge import (TokenBridgeConfig, TokenBridgeGenerator, checkpoint_filter_fn,
                                    config_from_official, masked_after_step)
from tokenizers_img.tokenbridge.quantizer import GaussianQuantizer, gaussian_levels
from zoo.checkpoints import CheckpointError, load_into

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    from conftest import parity_folder

    folder = parity_folder("tokenbridge")
    config = json.loads((folder / "config.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    official = load_file(str(folder / "official_state_dict.safetensors"))
    kwargs = {k: v for k, v in config["generator"]["TokenBridge"].items() if k != "norm_layer"}
    assert "eps=1e-06" in config["generator"]["TokenBridge"]["norm_layer"]
    with torch.device("cpu"):
        torch.set_num_threads(1)
        model = TokenBridgeGenerator(TokenBridgeConfig(**config_from_official(kwargs))).eval()
    load_into(model, official, source="fixture", filter_fn=checkpoint_filter_fn)
    return config, io, model


def patchify(latents: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, h w, C)
    return latents.flatten(2).transpose(1, 2)


# --- the quantizer -------------------------------------------------------------------------------------------------


def test_quantizer_levels_and_cases(fixture):
    config, io, model = fixture
    q = config["quantizer"]
    boundaries, centroids = gaussian_levels(q["quant_levels"], q["std_range"])
    assert torch.equal(boundaries, io["quant.boundaries"]) and torch.equal(centroids, io["quant.reconstruction_values"])
    quantizer = GaussianQuantizer(q["quant_levels"], q["quant_min"], q["quant_max"], q["std_range"])
    assert torch.equal(quantizer.level_values(), io["quant.level_values"])
    for case in ("sweep", "rand", "levels"):
        codes, values = quantizer.quantize(io[f"quant.{case}.x"])
        assert torch.equal(codes, io[f"quant.{case}.indices"]) and torch.equal(values, io[f"quant.{case}.dequant"])
    assert int(quantizer.quantize(io["quant.sweep.x"][600:601])[0]) == 31  # an exact tie goes to the lower index
    codes, values = quantizer.quantize(patchify(io["vae.latents_scaled"]))
    assert torch.equal(codes, io["vae.tokens"]) and torch.equal(values, io["vae.tokens_dequant"])
    assert torch.equal(model.quantizer.reconstruction_values, io["quant.reconstruction_values"])


@pytest.mark.parametrize("bits", [1, 3, 6, 8])
def test_quantizer_is_generic_over_bits(bits):
    quantizer = GaussianQuantizer(2 ** bits)
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 10 / 6  # N(0, 1) in normalised units
    codes, values = quantizer.quantize(x)
    counts = torch.bincount(codes, minlength=2 ** bits).float() / len(x)
    assert (counts - 1 / 2 ** bits).abs().max() < 0.25 / 2 ** bits  # equal-probability bins (truncation aside)
    assert torch.equal(quantizer.dequantize(codes), values)
    assert ((x - values).abs() <= (x.abs() - 5).clamp(min=0) + 10 / 6 * 3.1).all()
    assert torch.equal(quantizer.quantize(quantizer.level_values())[0], torch.arange(2 ** bits))  # levels are fixed


def test_quantizer_bad_input():
    quantizer = GaussianQuantizer(64)
    with pytest.raises(ValueError, match="NaN"):
        quantizer.quantize(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="float tensor"):
        quantizer.quantize(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"0\.\.63"):
        quantizer.dequantize(torch.tensor([0, 64]))
    with pytest.raises(ValueError, match="levels"):
        GaussianQuantizer(1)
    with pytest.raises(ValueError, match="value_min < value_max"):
        GaussianQuantizer(64, 5.0, -5.0)


# --- the generator -------------------------------------------------------------------------------------------------


def test_training_forward(fixture):
    _, io, model = fixture
    model.zero_grad()
    codes, _ = model.quantizer.quantize(patchify(io["train.x"]))
    assert torch.equal(codes, io["train.quant_indices"])
    num_masked = int(io["train.mask"][0].sum())
    assert (io["train.mask"].sum(1) == num_masked).all()
    with torch.enable_grad():
        logits, targets = model(codes, io["train.labels"], orders=io["train.orders"], num_masked=num_masked)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, model.levels), targets.reshape(-1))
        loss.backward()
    assert torch.equal(targets, io["train.gt_tokens_permuted"][io["train.mask"].bool()])
    torch.testing.assert_close(logits, io["train.logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(loss.reshape(1), io["train.loss"], atol=ATOL, rtol=0)
    grads = {k[len("train.grad."):]: v for k, v in io.items() if k.startswith("train.grad.")}
    assert grads
    params = dict(model.named_parameters())
    for name, grad in grads.items():
        torch.testing.assert_close(params[name].grad, grad, atol=ATOL, rtol=1e-4, msg=name)
    model.zero_grad()


def official_call(config, case):
    call = config["cases"][case]["call"]
    kw = dict(num_iter=int(call.split("num_iter=")[1].split(",")[0]), cfg=float(call.split("cfg=")[1].split(",")[0]),
              schedule=call.split("cfg_schedule=")[1].split(",")[0].strip("'\""),
              temperature=float(call.split("temperature=")[1].split(")")[0]),
              torch_seed=int(call.split("torch.manual_seed(")[1].split(")")[0]))
    return kw


@pytest.mark.parametrize("case", ["sample_a", "sample_b"])
def test_sampling_runs(fixture, case):
    """The recorded sample_tokens runs: the stored orders (numpy's RNG upstream), torch's global RNG for the draws."""
    config, io, model = fixture
    kw = official_call(config, case)
    steps = []
    torch.manual_seed(kw["torch_seed"])
    greedy = kw["temperature"] == 0
    tokens = model.generate(io[f"{case}.labels"], steps=kw["num_iter"], cfg_scale=kw["cfg"],
                            cfg_schedule=kw["schedule"], temperature=1.0 if greedy else kw["temperature"],
                            sample=not greedy, orders=io[f"{case}.orders"], callback=steps.append)
    assert len(steps) == kw["num_iter"]
    for i, step in enumerate(steps):
        assert torch.equal(step["predicted"], io[f"{case}.step{i}.mask_to_pred"])
        assert torch.equal(step["tokens"], io[f"{case}.step{i}.tokens_after"])
        assert step["cfg"] == pytest.approx(float(io[f"{case}.step{i}.cfg_iter"]), abs=1e-6)
    assert torch.equal(tokens.codes, io[f"{case}.tokens"]) and tokens.layout == "channels"
    continuous = model.quantizer.dequantize(tokens.codes).transpose(1, 2).reshape(io[f"{case}.continuous_tokens"].shape)
    assert torch.equal(continuous, io[f"{case}.continuous_tokens"])


@pytest.mark.parametrize("case", ["sample_a", "sample_b"])
def test_sampling_steps_teacher_forced(fixture, case):
    """Every step's decoder features, guided head input and channel logits, feeding the recorded tokens."""
    _, io, model = fixture
    labels = io[f"{case}.labels"]
    b = len(labels)
    for i in range(len([k for k in io if k.startswith(f"{case}.step") and k.endswith(".mask_in")])):
        p = f"{case}.step{i}."
        mask = io[p + "mask_in"].bool()
        canvas = io[p + "encoder_input"]
        with torch.no_grad():
            emb = torch.cat([model.class_embedding(labels, b), model.class_embedding(None, b)])
            x = model.encode_visible(canvas.repeat(2, 1, 1), mask.repeat(2, 1), emb)
            z = model.decode_features(x, mask.repeat(2, 1))
            z_c, z_u = z.split(b)
            torch.testing.assert_close(x[:b], io[p + "encoder_out_cond"], atol=ATOL, rtol=0)
            torch.testing.assert_close(x[b:], io[p + "encoder_out_uncond"], atol=ATOL, rtol=0)
            torch.testing.assert_close(z_c, io[p + "z_cond"], atol=ATOL, rtol=0)
            torch.testing.assert_close(z_u, io[p + "z_uncond"], atol=ATOL, rtol=0)
            pred = io[p + "mask_to_pred"].bool()
            feats = io[p + "head_input"]
            scale = io[p + "cfg_iter"]
            torch.testing.assert_close(z_u[pred] + scale * (z_c[pred] - z_u[pred]), feats, atol=ATOL, rtol=0)
            logits = []
            k = int(pred[0].sum())
            model.sample_channels(feats.view(b, k, -1), [None] * b, temperature=1.0,
                                  forced=io[p + "tokens_permuted"].view(b, k, -1),
                                  callback=lambda c, lg: logits.append(lg))
        torch.testing.assert_close(torch.stack(logits, 1), io[p + "channel_logits"], atol=ATOL, rtol=0)


def test_mask_schedule_matches_the_fixture(fixture):
    config, io, model = fixture
    for case in ("sample_a", "sample_b"):
        num_iter = official_call(config, case)["num_iter"]
        masked = model.seq_len
        for i in range(num_iter):
            masked = masked_after_step(model.seq_len, num_iter, i, masked)
            assert masked == int(io[f"{case}.step{i}.mask_len"])


def test_config_from_the_fixture_and_conversion_checks(fixture):
    config, io, model = fixture
    tb = config["generator"]["TokenBridge"]
    c = model.config
    assert (c.encoder_dim, c.decoder_dim, c.channel_dim) == (tb["encoder_embed_dim"], tb["decoder_embed_dim"],
                                                             tb["channel_embed_dim"])
    assert c.grid_size == (tb["img_size"] // tb["vae_stride"],) * 2
    assert list(c.channel_order) == config["generator"]["derived"]["channel_order"]
    assert model.inv_channel_order.tolist() == config["generator"]["derived"]["inv_channel_order"]
    sd = dict(load_file(str(config_path(config, "official_state_dict.safetensors"))))
    ema = {k: v + 1 for k, v in sd.items() if k.endswith("class_emb.weight")}
    converted = checkpoint_filter_fn({"model": sd, "model_ema": ema, "epoch": 3}, model)
    assert torch.equal(converted["class_emb.weight"], sd["class_emb.weight"] + 1)  # EMA parameters win
    with pytest.raises(CheckpointError, match="missing"):
        load_into(model, {k: v for k, v in sd.items() if k != "z_proj.weight"}, source="x",
                  filter_fn=checkpoint_filter_fn)
    with pytest.raises(CheckpointError, match="causal mask"):
        load_into(model, {**sd, "channel_mask": torch.zeros(c.channels, c.channels)}, source="x",
                  filter_fn=checkpoint_filter_fn)
    with pytest.raises(CheckpointError, match="not a TokenBridge"):
        load_into(model, {"weight": torch.zeros(1)}, source="x", filter_fn=checkpoint_filter_fn)


def config_path(config, name):
    from conftest import SHARED

    return SHARED / "parity" / "tokenbridge" / name


# --- beyond the official code: per-item seeds, bad input -----------------------------------------------------------


def tiny_model(seed: int = 0, **overrides) -> TokenBridgeGenerator:
    torch.manual_seed(seed)
    fields = dict(grid_size=(3, 4), channels=4, levels=8, encoder_dim=32, encoder_depth=1, encoder_heads=2,
                  decoder_dim=32, decoder_depth=1, decoder_heads=2, channel_dim=16, channel_depth=1, channel_heads=2,
                  num_classes=5, buffer_size=2, num_iter=4, cfg_scale=2.0)
    model = TokenBridgeGenerator(TokenBridgeConfig(**{**fields, **overrides})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised AdaLN would make every channel the same
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_cached_head_matches_recomputing_the_prefix():
    model = tiny_model()
    feats = torch.randn(2, 3, model.config.decoder_dim)
    logits = []
    with torch.no_grad():
        codes = model.sample_channels(feats, [torch.Generator().manual_seed(1)] * 2, temperature=1.0,
                                      callback=lambda c, lg: logits.append(lg))
        # the official sampler: re-run the causal head over the whole prefix for every channel
        flat = codes.view(6, -1)
        cond = model.condition_proj(feats.view(6, -1))[:, None] + model.timesteps_embeddings
        seq = [cond[:, 0]] + [emb(flat[:, i]) for i, emb in enumerate(model.token_embeddings)]
        x = torch.stack(seq, 1) + model.channel_embed
        for blk in model.channel_blocks:
            x = blk(x, cond)
        x = model.channel_final(model.channel_norm(x), cond)
        ref = torch.stack([h(x[:, i]) for i, h in enumerate(model.channel_heads)], 1)
    torch.testing.assert_close(torch.stack(logits, 1), ref, atol=1e-5, rtol=0)


def test_per_item_seeds():
    model = tiny_model()
    batch = model.generate([1, 3], num_samples=2, seed=5, temperature=1.5)  # (1, 5) (1, 6) (3, 5) (3, 6)
    assert batch.meta["labels"] == [1, 1, 3, 3] and batch.meta["seeds"] == [5, 6, 5, 6]
    alone = model.generate([3], seed=6, temperature=1.5)
    assert torch.equal(alone.codes[0], batch.codes[3])
    bigger = model.generate([0, 3, 3, 1], num_samples=1, seed=[9, 5, 6, 8], temperature=1.5)
    assert torch.equal(bigger.codes[2], batch.codes[3]) and torch.equal(bigger.codes[1], batch.codes[2])
    assert not torch.equal(batch.codes[2], batch.codes[3])
    assert len(batch.codes.unique()) > 4


def test_unconditional_and_greedy():
    model = tiny_model()
    a = model.generate(None, num_samples=2, seed=0, sample=False, cfg_scale=1.0)
    b = model.generate(None, num_samples=2, seed=0, sample=False, cfg_scale=1.0)
    assert torch.equal(a.codes, b.codes) and a.codes.shape == (2, 12, 4) and "labels" not in a.meta


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[5]), r"0\.\.4"), (dict(labels=[1], steps=0), "steps"), (dict(labels=[1], temperature=0.0),
                                                                         "temperature"),
    (dict(labels=[1], cfg_schedule="cosine"), "cfg_schedule"), (dict(labels=[1], num_samples=0), "num_samples"),
    (dict(labels=[1], orders=torch.zeros(1, 12, dtype=torch.long)), "permutation"),
    (dict(labels=[1], prompt=torch.zeros(1, 2, 4, dtype=torch.long)), "prompt"),
])
def test_bad_arguments(kwargs, match):
    model = tiny_model()
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=match):
        model.generate(labels, **kwargs)


def test_bad_training_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="codes"):
        model.loss(torch.full((2, 12, 4), 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class ids"):
        model.loss(torch.zeros(2, 12, 4, dtype=torch.long), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="channel_order"):
        TokenBridgeConfig(channels=4, channel_order=(0, 1, 1, 2))
    loss = model.train().loss(torch.randint(0, 8, (2, 12, 4)), torch.tensor([0, 1]))
    assert math.isfinite(loss.item())


# --- trained through the shared recipe, sampled through the paired tokenizer -------------------------------------


def test_trains_on_tokenizer_codes_and_samples_images(tmp_path):
    """`generators.trainer` on the codes of a (random, tiny) TokenBridge tokenizer: the loss falls, the EMA model
    samples `Tokens` the tokenizer decodes; the run's checkpoint reads back (`zoo eval --checkpoint`)."""
    import zoo
    from conftest import TINY_OVERRIDES
    from generators.tokenbridge.train import model_from_checkpoint
    from generators.trainer import GeneratorTrainConfig, train
    from zoo import hub

    torch.manual_seed(0)
    tok = hub.build(zoo.model_info("tokenbridge-kl-tiny-fashion"), **TINY_OVERRIDES["tokenbridge"]).eval()
    spec = zoo.model_info("tokenbridge-tiny-fashion")
    config = TokenBridgeConfig(**hub.spec_config(spec, **TINY_OVERRIDES["tokenbridge_generator"]))
    tc = GeneratorTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, train_items=64, save_every=30,
                              log_every=100)
    result = train(tc, config, tok, tmp_path / "run")
    assert result.tokens.codes.shape == (64, 64, 4) and result.tokens.grid_size == (8, 8)
    assert sum(result.losses[-5:]) < 0.8 * sum(result.losses[:5]), result.losses
    gen = result.ema.pair(tok)
    tokens = gen.generate([0, 3], seed=0, steps=4)
    assert tokens.layout == "channels" and tokens.codes.shape == (2, 64, 4) and tokens.meta["labels"] == [0, 3]
    assert gen.sample([1], seed=0, steps=4).shape == (1, 3, 32, 32)
    reread = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_0", spec)
    assert all(torch.equal(v, result.ema.state_dict()[k]) for k, v in reread.state_dict().items())
    with pytest.raises(ValueError, match="channels"):
        TokenBridgeGenerator.check_training_codes(dataclasses.replace(config, channels=8, channel_order=None),
                                                  result.tokens)


def test_zoo_generate_and_generate_image_script(tmp_path, monkeypatch):
    """`zoo generate` and scripts/generate_image.py run TokenBridge unchanged (the bundled tiny model)."""
    import importlib.util

    import numpy as np

    from conftest import REPO
    from zoo import cli

    assert cli.main(["generate", "tokenbridge-tiny-fashion", "--class", "Dress", "Sneaker", "-n", "2", "--seed",
                     "0", "--steps", "4", "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    spec = importlib.util.spec_from_file_location("generate_image", REPO / "scripts" / "generate_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = module.main(["tokenbridge-tiny-fashion", "-n", "3", "--out", str(tmp_path / "set"), "--batch-size", "2",
                       "--steps", "4", "--seed", "1", "--npz", str(tmp_path / "s.npz"), "--threads", "1"])
    assert out["written"] == 3
    packed = np.load(tmp_path / "s.npz")
    assert packed["images"].shape == (3, 32, 32, 3) and packed["labels"].tolist() == [0, 1, 2]
