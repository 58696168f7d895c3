"""xAR: the official fixture (every size from its config.json), the entities, the KV cache, per-item seeds, bf16,
bad input, training through the shared recipe, and the command line."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from generators.xar import ENTITIES, XARConfig, XARGenerator, checkpoint_filter_fn, config_from_official, entity_order
from generators.xar.model import discretize_time
from zoo.checkpoints import load_into

pytestmark = pytest.mark.usefixtures("one_thread")
ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    from conftest import parity_folder

    folder = parity_folder("xar")
    config = json.loads((folder / "config.json").read_text())
    io = load_file(str(folder / "io.safetensors"))
    official = load_file(str(folder / "official_state_dict.safetensors"))
    args = config["model"]["xAR"]
    fields = config_from_official(official)
    # what the state dict cannot say: the class count and the regularisation
    fields.update(num_classes=args["class_num"], label_drop_prob=args["label_drop_prob"],
                  attn_dropout=args["attn_dropout"], proj_dropout=args["proj_dropout"])
    with torch.device("cpu"):
        torch.set_num_threads(1)
        model = XARGenerator(XARConfig(**fields)).eval()
    load_into(model, official, source="fixture", filter_fn=checkpoint_filter_fn)
    return config, io, model


def test_config_and_conversion(fixture):
    config, io, model = fixture
    args = config["model"]["xAR"]
    side = args["img_size"] // args["vae_stride"]
    assert model.config.grid_size == (side, side) and model.channels == args["vae_embed_dim"]
    assert model.num_entities == args["clusters"] and model.config.encoder_dim == args["encoder_embed_dim"]
    assert model.config.encoder_heads == args["encoder_num_heads"] and len(model.decoder_blocks) == args["decoder_depth"]
    assert torch.equal(model.attn_mask, io["attn_mask_allowed"])
    official = load_file(str(__import__("conftest").SHARED / "parity" / "xar" / "official_state_dict.safetensors"))
    other = XARGenerator(dataclasses.replace(model.config, entity="subsample", entity_size=2))
    with pytest.raises(ValueError, match="another grid"):  # the checked buffers catch another entity order
        checkpoint_filter_fn(official, other)
    with pytest.raises(KeyError, match="missing"):
        checkpoint_filter_fn({k: v for k, v in official.items() if k != "pred.bias"}, model)
    with pytest.raises(KeyError, match="not an xAR checkpoint"):
        checkpoint_filter_fn({"model": {"weight": torch.zeros(1)}}, model)


def test_training_forward(fixture):
    """Noisy context learning with the fixture's per-cell times, noise and label drop: velocity, loss, gradients."""
    config, io, model = fixture
    b, e = io["train.x"].shape[0], model.num_entities
    t = io["train.time_input"].view(e, b).T  # cell-major -> (B, E)
    assert torch.equal(model.to_sequence(io["train.x"]), io["train.patches"].reshape(b, -1, model.channels))
    assert torch.equal(discretize_time(io["train.time_input"], 1000), io["train.t_int"])
    cond = model.condition(io["train.labels_used"], t)  # (B, E, D)
    torch.testing.assert_close(cond.transpose(0, 1).reshape(e * b, -1), io["train.condition"], atol=ATOL, rtol=0)
    model.zero_grad()
    model.train()
    try:
        out = model(io["train.x"], io["train.labels"], t=t, noise=io["train.noises"].reshape(b, -1, model.channels),
                    drop_labels=io["train.label_drop"])
        loss = model.training_loss(out, io["train.x"])
        loss.backward()
    finally:
        model.eval()
    torch.testing.assert_close(out[0], io["train.model_output"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], io["train.model_target"], atol=ATOL, rtol=0)
    torch.testing.assert_close(loss.reshape(1), io["train.loss"], atol=ATOL, rtol=0)
    params = dict(model.named_parameters())
    grads = [k for k in io if k.startswith("train.grad.")]
    assert grads
    for key in grads:
        torch.testing.assert_close(params[key[len("train.grad."):]].grad, io[key], atol=ATOL, rtol=0)
    model.zero_grad()


def _replayed_noise(io, model):
    e, s = model.num_entities, io["sample.t_steps"].numel() - 1
    initial = torch.stack([io[f"sample.cell{c}.latents_init"] for c in range(e)], 1)  # (B, E, n, C)
    steps = torch.stack([torch.stack([io[f"sample.cell{c}.step{i}.eps"] for i in range(s - 1)], 1)
                         for c in range(e)], 1)  # (B, E, S - 1, n, C)
    return initial, steps, s


def test_sampling_run_with_the_recorded_noise(fixture):
    """Every Euler-Maruyama state of the 4-cell run (float64), each cell's sample and the output tokens."""
    config, io, model = fixture
    initial, steps, num_steps = _replayed_noise(io, model)
    assert torch.equal(model.time_grid(num_steps), io["sample.t_steps"])
    cfg = float(io["sample.cfg"])
    scales = model.cfg_scales(cfg, "linear")
    assert scales == [float(io[f"sample.cell{c}.cfg_scale"]) for c in range(model.num_entities)]
    states = {}
    out = model.generate(io["sample.labels"], cfg_scale=cfg, steps=num_steps, initial_noise=initial, step_noise=steps,
                         callback=lambda d: states.__setitem__((d["entity"], d["step"]), d["x"].clone()))
    for c in range(model.num_entities):
        for i in range(num_steps - 1):
            torch.testing.assert_close(states[(c, i)], io[f"sample.cell{c}.step{i}.x_next"], atol=ATOL, rtol=0)
        torch.testing.assert_close(states[(c, num_steps - 1)].float(), io[f"sample.cell{c}.z_sample"], atol=ATOL,
                                   rtol=0)
    torch.testing.assert_close(out.latents, io["sample.tokens"], atol=ATOL, rtol=0)
    assert out.meta["labels"] == io["sample.labels"].tolist()


def test_sampling_run_from_the_official_seed(fixture):
    """With one shared generator (torch's RNG) the draws are the official ones: the same run from its seed."""
    config, io, model = fixture
    torch.manual_seed(int(config["cases"]["sample"]["call"].split("manual_seed(")[1].split(")")[0]))
    out = model.generate(io["sample.labels"], cfg_scale=float(io["sample.cfg"]),
                         steps=io["sample.t_steps"].numel() - 1)
    torch.testing.assert_close(out.latents, io["sample.tokens"], atol=ATOL, rtol=0)


# --- entities ------------------------------------------------------------------------------------------------------


def test_entity_orders():
    cells = entity_order((4, 6), "cell", 2)
    assert cells.shape == (6, 4) and cells[0].tolist() == [0, 1, 6, 7] and cells[1].tolist() == [2, 3, 8, 9]
    sub = entity_order((4, 6), "subsample", 2)
    assert sub.shape == (4, 6) and sub[0].tolist() == [0, 2, 4, 12, 14, 16] and sub[3].tolist() == [7, 9, 11, 19, 21, 23]
    assert torch.equal(entity_order((4, 6), "token"), torch.arange(24)[:, None])
    assert torch.equal(entity_order((4, 6), "token"), entity_order((4, 6), "cell", 1))
    assert torch.equal(entity_order((4, 6), "image"), torch.arange(24)[None])
    for entity, size in [("cell", 2), ("subsample", 2), ("token", 1), ("image", 1)]:
        assert torch.equal(entity_order((4, 6), entity, size).flatten().sort().values, torch.arange(24))
    with pytest.raises(ValueError, match="does not tile"):
        entity_order((4, 6), "cell", 4)
    with pytest.raises(ValueError, match="entity must be one of"):
        entity_order((4, 4), "scale", 2)


def tiny_model(seed: int = 0, **overrides) -> XARGenerator:
    torch.manual_seed(seed)
    fields = dict(grid_size=(4, 4), channels=3, entity="cell", entity_size=2, encoder_dim=32, encoder_depth=2,
                  encoder_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2, num_classes=5, attn_dropout=0.0,
                  proj_dropout=0.0, num_steps=3, cfg_scale=2.5)
    model = XARGenerator(XARConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():  # random adaLN / positions so that every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("entity, size", [("cell", 2), ("subsample", 2), ("token", 1), ("image", 1)])
def test_kv_cache_matches_the_block_causal_recompute(entity, size):
    """An entity's velocity through the cache of the earlier (clean, t = 0) entities equals the uncached block-causal
    pass over the whole prefix (what training computes)."""
    model = tiny_model(entity=entity, entity_size=size)
    e_count, n = model.num_entities, model.entity_len
    x = torch.randn(2, model.seq_len, model.channels)
    labels = torch.tensor([1, model.config.null_label])
    for e in range(min(e_count, 3)):
        t = torch.zeros(2, e + 1)
        t[:, e] = torch.tensor([0.7, 0.3])
        prefix = x[:, : (e + 1) * n]
        full = model.velocity(prefix, model.condition(labels, t), mask=model.attn_mask[: len(prefix[0]), : len(prefix[0])])
        caches = model._new_caches(2)
        for j in range(e):
            model.velocity(x[:, j * n: (j + 1) * n], model.condition(labels, t[:, j: j + 1]), j, caches=caches,
                           head=False)
        cached = model.velocity(x[:, e * n: (e + 1) * n], model.condition(labels, t[:, e:]), e, caches=caches)
        torch.testing.assert_close(cached, full[:, e * n:], atol=1e-5, rtol=0)


def uncached_reference(model, labels, cfg_scale, schedule, steps, initial, step_noise):
    """The sampler written plainly: every step recomputes the whole block-causal prefix (earlier entities clean at
    t = 0), no cache, conditional and unconditional rows as the scales say."""
    b, n = len(labels), model.entity_len
    null = torch.full((b,), model.config.null_label)
    scales, grid, done = model.cfg_scales(cfg_scale, schedule), model.time_grid(steps), []
    for e in range(model.num_entities):
        rows = torch.cat([labels, null]) if scales[e] > 1 else labels
        x = initial[:, e].double()
        for i in range(steps):
            t_cur, dt = grid[i], grid[i + 1] - grid[i]
            seq = torch.cat(done + [x.float()], 1).repeat(len(rows) // b, 1, 1)
            t = torch.zeros(len(rows), e + 1, dtype=torch.float64)
            t[:, e] = t_cur
            v = model.velocity(seq, model.condition(rows, t), mask=model.attn_mask[: seq.shape[1], : seq.shape[1]])
            d = model.drift(v[:, -n:].double(), x.repeat(len(rows) // b, 1, 1),
                            torch.full((len(rows), 1, 1), float(t_cur), dtype=torch.float64))
            if scales[e] > 1:
                d_c, d_u = d.chunk(2)
                d = d_u + scales[e] * (d_c - d_u)
            x = x + dt * d if i == steps - 1 else x + d * dt + torch.sqrt(2 * t_cur) * (step_noise[:, e, i] *
                                                                                        torch.sqrt(dt.abs()))
        done.append(x.float())
    return model.from_sequence(torch.cat(done, 1))


@pytest.mark.parametrize("layout", [dict(entity="cell", entity_size=2, grid_size=(4, 6)),
                                    dict(entity="subsample", entity_size=2, grid_size=(4, 6)),
                                    dict(entity="token", grid_size=(2, 3)), dict(entity="image", grid_size=(2, 3)),
                                    dict(entity="cell", entity_size=2, channels=5)])
@pytest.mark.parametrize("schedule, cfg_scale", [("linear", 2.5), ("constant", 2.5), ("linear", 1.0),
                                                 ("linear", 1 + 2 ** -52)])  # the last: entities unguided, unguided, guided
def test_sampler_matches_the_uncached_reference(layout, schedule, cfg_scale):
    """`generate` (KV cache, batched rows, cache written once per entity) against the plain block-causal recompute,
    for every entity, both schedules, 1, 2 and 4 steps, and a guidance pattern that switches on after two entities."""
    model = tiny_model(**layout)
    labels = torch.tensor([0, 3, 4])
    b, e, n, c = 3, model.num_entities, model.entity_len, model.channels
    for steps in (1, 2, 4):
        g = torch.Generator().manual_seed(steps)
        initial = torch.randn(b, e, n, c, generator=g)
        step_noise = torch.randn(b, e, steps - 1, n, c, dtype=torch.float64, generator=g)
        with torch.inference_mode():
            ref = uncached_reference(model, labels, cfg_scale, schedule, steps, initial, step_noise)
        out = model.generate(labels, cfg_scale=cfg_scale, cfg_schedule=schedule, steps=steps, initial_noise=initial,
                             step_noise=step_noise)
        torch.testing.assert_close(out.latents, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("entity, size", [("cell", 2), ("subsample", 2), ("token", 1), ("image", 1)])
def test_every_entity_trains_and_samples(entity, size):
    model = tiny_model(entity=entity, entity_size=size)
    loss = model.train().loss(torch.randn(3, 3, 4, 4), torch.tensor([0, 2, 4]))
    loss.backward()
    assert torch.isfinite(loss) and model.pred.weight.grad is not None
    model.eval()
    out = model.generate([0, 4], seed=0)
    assert out.latents.shape == (2, 3, 4, 4) and torch.isfinite(out.latents).all()


def test_guidance_ramp_and_the_unguided_first_entity():
    model = tiny_model()  # 4 cells
    assert model.cfg_scales(2.5, "linear") == [1.0, 1.5, 2.0, 2.5]
    assert model.cfg_scales(2.5, "constant") == [2.5] * 4
    assert tiny_model(entity="image").cfg_scales(2.5, "linear") == [2.5]  # one entity: the whole scale
    scales = []
    model.generate([1], seed=0, callback=lambda d: scales.append(d["cfg"]))
    assert scales == [1.0] * 3 + [1.5] * 3 + [2.0] * 3 + [2.5] * 3
    guided = model.generate([1], seed=0).latents
    plain = model.generate([1], seed=0, cfg_scale=1.0).latents
    first = model.order[: model.entity_len]  # the unguided first cell is the same either way
    torch.testing.assert_close(guided.flatten(2)[..., first], plain.flatten(2)[..., first], atol=1e-6, rtol=0)
    assert not torch.allclose(guided, plain)


def test_per_item_seeds_and_batched_guidance():
    model = tiny_model()
    batch = model.generate([0, 3, 4], num_samples=2, seed=7)
    alone = model.generate([4], num_samples=2, seed=7)
    torch.testing.assert_close(batch.latents[4:], alone.latents, atol=1e-5, rtol=0)
    reordered = model.generate([4, 0], seed=[8, 7])
    torch.testing.assert_close(reordered.latents[0], batch.latents[5], atol=1e-5, rtol=0)
    assert batch.meta["seeds"] == [7, 8] * 3 and batch.meta["labels"] == [0, 0, 3, 3, 4, 4]
    assert not torch.allclose(batch.latents[0], batch.latents[1])
    unconditional = model.generate(None, num_samples=2, seed=0)
    assert unconditional.latents.shape == (2, 3, 4, 4) and "labels" not in unconditional.meta


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_any_step_count(steps):
    """The official sampler breaks below 3 steps (a second prefill, or a NameError); ours takes any count >= 1."""
    model = tiny_model()
    seen = []
    out = model.generate([2], seed=0, steps=steps, callback=lambda d: seen.append(d["t"]))
    assert torch.isfinite(out.latents).all() and len(seen) == steps * model.num_entities
    assert seen[0] == 1.0 and (steps == 1 or abs(seen[steps - 1] - model.config.t_last) < 1e-12)


def test_bfloat16_follows_float32():
    model = tiny_model()
    ref = model.generate([1, 2], seed=3).latents
    latents, labels = torch.randn(3, 3, 4, 4), torch.tensor([0, 1, 2])
    t = torch.rand(3, model.num_entities)
    ref_loss = model.loss(latents, labels, t=t, noise=torch.zeros(3, 16, 3))
    low_model = model.cast(dtype=torch.bfloat16)
    low = low_model.generate([1, 2], seed=3).latents
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    low_loss = low_model.loss(latents, labels, t=t, noise=torch.zeros(3, 16, 3))
    assert low_loss.dtype == torch.bfloat16 and abs(low_loss.item() - ref_loss.item()) < 0.05 * ref_loss.item()


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[5]), "class ids"),
    (dict(labels=[1], steps=0), "num_steps"),
    (dict(labels=[1], steps=2.5), "num_steps"),
    (dict(labels=[1], temperature=0.9), "flow matching"),
    (dict(labels=[1], cfg_schedule="cosine"), "cfg_schedule"),
    (dict(labels=[1], cfg_scale=float("nan")), "cfg_scale"),
    (dict(labels=[1], initial_noise=torch.zeros(1, 4, 4, 2)), "initial_noise"),
    (dict(labels=[1], initial_noise=torch.full((1, 4, 4, 3), float("nan"))), "initial_noise"),
    (dict(labels=[1], step_noise=torch.zeros(1, 4, 1, 4, 3)), "step_noise"),
    (dict(labels=None, cfg_scale=2.0), "guidance needs labels"),
])
def test_bad_arguments(kwargs, match):
    model = tiny_model()
    labels = kwargs.pop("labels")
    with pytest.raises(ValueError, match=match):
        model.generate(labels, **kwargs)


def test_bad_config_and_training_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="does not tile"):
        XARConfig(grid_size=(6, 6), entity="cell", entity_size=4)
    with pytest.raises(ValueError, match="must be equal"):
        XARConfig(encoder_dim=64, decoder_dim=32, encoder_heads=4, decoder_heads=2)
    with pytest.raises(ValueError, match="multiple of 4"):
        XARConfig(encoder_dim=48, decoder_dim=48, encoder_heads=8, decoder_heads=8)
    with pytest.raises(ValueError, match="null_label"):
        XARConfig(num_classes=10, null_label=3)
    with pytest.raises(ValueError, match="latents"):
        model.loss(torch.randn(2, 4, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        model.loss(torch.full((2, 3, 4, 4), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class ids"):
        model.loss(torch.randn(2, 3, 4, 4), torch.tensor([0, 5]))
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="t: expected"):
        model.loss(x, y, t=torch.rand(2, 3))
    with pytest.raises(ValueError, match="t: expected"):
        model.loss(x, y, t=torch.full((2, 4), 5.0))
    with pytest.raises(ValueError, match="drop_labels"):
        model.loss(x, y, drop_labels=torch.tensor([True]))
    with pytest.raises(ValueError, match="noise"):
        model.loss(x, y, noise=torch.full((2, 16, 3), float("nan")))
    with pytest.raises(ValueError, match="label dropout"):
        tiny_model(label_drop_prob=0.0).generate([1], cfg_scale=2.0)
    assert set(ENTITIES) == {"token", "cell", "subsample", "image"}


# --- trained through the shared recipe, sampled through the paired autoencoder ----------------------------------


def test_trains_on_autoencoder_latents_and_samples_images(tmp_path):
    """`generators.trainer` on the latents of a (random, tiny) KL VAE: the loss falls, the EMA model samples
    `Latents` the VAE decodes; the run's checkpoint reads back (`zoo eval --checkpoint`)."""
    import zoo
    from conftest import TINY_OVERRIDES
    from generators.trainer import GeneratorTrainConfig, model_from_checkpoint, train
    from zoo import hub

    torch.manual_seed(0)
    vae = hub.build(zoo.model_info("mar-kl-tiny-fashion"), **TINY_OVERRIDES["tokenbridge"]).eval()
    spec = zoo.model_info("xar-tiny-fashion")
    config = XARConfig(**hub.spec_config(spec, **TINY_OVERRIDES["xar"]))
    tc = GeneratorTrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, train_items=64, save_every=30,
                              log_every=100)
    result = train(tc, config, vae, tmp_path / "run")
    assert result.tokens.codes.shape == (64, 4, 8, 8) and result.tokens.codes.is_floating_point()
    assert sum(result.losses[-5:]) < 0.9 * sum(result.losses[:5]), result.losses
    gen = result.ema.pair(vae)
    out = gen.generate([0, 3], seed=0, steps=2)
    assert out.latents.shape == (2, 4, 8, 8) and out.meta["labels"] == [0, 3]
    assert gen.sample([1], seed=0, steps=2).shape == (1, 3, 32, 32)
    reread = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint_0", spec)
    assert all(torch.equal(v, result.ema.state_dict()[k]) for k, v in reread.state_dict().items())
    with pytest.raises(ValueError, match="channels"):
        XARGenerator.check_training_codes(dataclasses.replace(config, channels=8), result.tokens)
    assert train(tc, config, vae, tmp_path / "run", resume=True).tokens.reused


def test_zoo_generate_and_generate_image_script(tmp_path, monkeypatch):
    """`zoo generate` and scripts/generate_image.py run xAR unchanged (the bundled tiny model)."""
    import importlib.util

    import numpy as np

    from conftest import REPO
    from zoo import cli

    assert cli.main(["generate", "xar-tiny-fashion", "--class", "Dress", "Sneaker", "-n", "2", "--seed", "0",
                     "--steps", "4", "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    spec = importlib.util.spec_from_file_location("generate_image", REPO / "scripts" / "generate_image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    out = module.main(["xar-tiny-fashion", "-n", "3", "--out", str(tmp_path / "set"), "--batch-size", "2",
                       "--steps", "4", "--seed", "1", "--npz", str(tmp_path / "s.npz"), "--threads", "1"])
    assert out["written"] == 3
    packed = np.load(tmp_path / "s.npz")
    assert packed["images"].shape == (3, 32, 32, 3) and packed["labels"].tolist() == [0, 1, 2]
