"""The one contract: input rules, `Tokens` layouts and provenance, per-item seeds, generators, capabilities."""

import dataclasses
import os
import stat

import pytest
import torch

import zoo
from zoo import api, cli, data, hub, io as zio, registry
from zoo.api import Tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wav_tok():
    return zoo.load("wavtokenizer-tiny-75tps")


@pytest.fixture(scope="module")
def flex_tok():
    return zoo.load("flextok-tiny-64px", default_steps=3)


def speech():
    wav, sr = next(iter(data.samples("audio").values()))
    return wav[0, : sr // 2], sr  # half a second, mono (T)


# --- audio input rules ---------------------------------------------------------------------------------------------


def test_stereo_is_one_clip_with_channels_averaged(wav_tok):
    mono, sr = speech()
    other = torch.roll(mono, 2000) * 0.5                          # a different second channel
    stereo = torch.stack([mono, other])                           # (C, T): one clip
    tokens = wav_tok.encode(stereo, sample_rate=sr)
    assert len(tokens) == 1
    averaged = wav_tok.encode((mono + other) / 2, sample_rate=sr)
    first_channel = wav_tok.encode(mono, sample_rate=sr)
    assert torch.equal(tokens.codes, averaged.codes)
    assert not torch.equal(tokens.codes, first_channel.codes)    # keeping one channel would be caught
    # a (B, C, T) batch and a list of (C, T) clips are the same items
    batch = wav_tok.encode(torch.stack([stereo, stereo.flip(0)]), sample_rate=sr)
    listed = wav_tok.encode([stereo, stereo.flip(0)], sample_rate=sr)
    assert torch.equal(batch.codes, listed.codes) and torch.equal(batch.codes[0], tokens.codes[0])


def test_time_major_arrays_are_refused_not_reinterpreted(wav_tok):
    mono, sr = speech()
    stereo_tc = torch.stack([mono, mono], dim=1)                  # (T, C), what soundfile returns
    for x in (stereo_tc, stereo_tc.numpy()):
        with pytest.raises(ValueError, match=r"If it is \(T, C\) \(soundfile's layout\) pass x\.T"):
            wav_tok.encode(x, sample_rate=sr)
    assert len(wav_tok.encode(stereo_tc.numpy().T, sample_rate=sr)) == 1  # (C, T) arrays are fine
    with pytest.raises(ValueError, match="at most 8 channels"):
        wav_tok.encode(torch.zeros(9, 4000), sample_rate=sr)


def test_resampling_and_returned_rate_and_length(wav_tok):
    mono, sr = speech()                                           # 24 kHz
    at_16k = zio.resample(mono, sr, 16000)
    tokens = wav_tok.encode(at_16k, sample_rate=16000)
    assert tokens.meta["sample_rate"] == 16000 and tokens.meta["num_samples"] == [at_16k.shape[-1]]
    # the model hears the same 24 kHz signal whatever rate it came at (up to resampling error)
    direct = wav_tok.encode(zio.resample(at_16k, 16000, sr), sample_rate=sr)
    assert (tokens.codes == direct.codes).float().mean() == 1.0
    audio = wav_tok.decode(tokens)
    assert audio.shape == (1, at_16k.shape[-1])
    # decoding returns the model's 24 kHz output resampled to the input's rate
    down = zio.resample(wav_tok.decode(direct)[0], sr, 16000)[: audio.shape[-1] - 64]  # (the resampler's edge)
    assert (audio[0, : down.shape[-1]] - down).abs().max() < 1e-4


def test_cli_stereo_file_is_one_mono_clip(tmp_path, capsys, wav_tok):
    mono, sr = speech()
    stereo = torch.stack([mono, -0.5 * mono])
    zio.save_audio(tmp_path / "st.wav", stereo, sr)
    assert cli.main(["encode", "wavtokenizer-tiny-75tps", str(tmp_path / "st.wav"), "-o",
                     str(tmp_path / "st.safetensors")]) == 0
    tokens = Tokens.load(tmp_path / "st.safetensors")
    assert len(tokens) == 1 and torch.equal(tokens.codes, wav_tok.encode(zio.load_audio(tmp_path / "st.wav")[0],
                                                                         sample_rate=sr).codes)
    assert cli.main(["decode", "wavtokenizer-tiny-75tps", str(tmp_path / "st.safetensors"), "-o",
                     str(tmp_path / "out.wav")]) == 0
    wav, rate = zio.load_audio(tmp_path / "out.wav")
    assert rate == sr and wav.shape == (1, stereo.shape[-1])


# --- Tokens ----------------------------------------------------------------------------------------------------------


def test_tokens_layouts_validate_and_read_in_order():
    grid = torch.arange(12).view(1, 3, 4)
    t = Tokens(grid, "grid", (16,))
    assert torch.equal(t.to_sequence()[0, :, 0], torch.arange(12))            # raster: row by row
    assert torch.equal(Tokens.from_sequence(t.to_sequence(), "grid", (16,), (3, 4)).codes, grid)
    res = torch.arange(24).view(1, 2, 3, 4)
    r = Tokens(res, "residual_grid", (32, 32, 32, 32))
    assert r.to_sequence().shape == (1, 6, 4) and torch.equal(r.to_sequence()[0, 1], res[0, 0, 1])
    ch = Tokens(torch.zeros(2, 5, 3, dtype=torch.long), "channels", (64, 32, 16))
    assert ch.vocab_size_per_depth == (64, 32, 16)
    audio = Tokens(torch.arange(6).view(1, 2, 3), "audio", (8,), lengths=[2])
    assert torch.equal(audio.to_sequence()[0, 0], torch.tensor([0, 3])) and audio[0].codes.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="layout must be one of"):
        Tokens(grid, "raster", (16,))
    with pytest.raises(ValueError, match=r"means codes \('B', 'H', 'W'\)"):
        Tokens(grid[0], "grid", (16,))
    with pytest.raises(ValueError, match="vocab_sizes must hold 1 or 3"):
        Tokens(torch.zeros(1, 5, 3, dtype=torch.long), "channels", (4, 4))
    with pytest.raises(ValueError, match="no sequence axis"):
        Tokens(grid, "grid", (16,), lengths=[2])
    with pytest.raises(ValueError, match=r"lengths must be \(1,\) values in 1..3"):
        Tokens(torch.zeros(1, 1, 3, dtype=torch.long), "audio", (8,), lengths=[4])


def test_tokens_files_record_their_model(tmp_path, wav_tok, flex_tok):
    mono, sr = speech()
    tokens = wav_tok.encode(mono, sample_rate=sr)
    assert tokens.meta["model"] == "wavtokenizer-tiny-75tps" and tokens.meta["config_hash"] == wav_tok.config_hash
    tokens.save(tmp_path / "t.safetensors")
    loaded = Tokens.load(tmp_path / "t.safetensors")
    assert (loaded.layout, loaded.vocab_sizes, loaded.meta) == (tokens.layout, tokens.vocab_sizes, tokens.meta)
    assert torch.equal(loaded.codes, tokens.codes) and torch.equal(loaded.lengths, tokens.lengths)
    # another model refuses them: another layout, another config, another registered name
    with pytest.raises(ValueError, match="layout 'audio'"):
        flex_tok.decode(loaded)
    other_config = hub.build(zoo.model_info("wavtokenizer-tiny-75tps"), num_layers=1)
    with pytest.raises(ValueError, match="made by wavtokenizer-tiny-75tps"):
        other_config.decode(loaded)
    same_config = zoo.load("wavtokenizer-tiny-75tps")
    same_config.name = "wavtokenizer-small-75tps"  # as if another registered model with this config
    with pytest.raises(ValueError, match="decode them with it"):
        same_config.decode(loaded)
    # an inference-only setting does not change what the codes mean
    assert zoo.load("wavtokenizer-tiny-75tps", chunk_seconds=12.0).config_hash == wav_tok.config_hash


def test_cli_decode_with_another_model_is_an_error(tmp_path, capsys):
    zio.save_image(tmp_path / "p.png", torch.rand(3, 64, 64))
    assert cli.main(["encode", "flextok-tiny-64px", str(tmp_path / "p.png"), "-o", str(tmp_path / "p.safetensors")]) == 0
    capsys.readouterr()
    code = cli.main(["decode", "wavtokenizer-tiny-75tps", str(tmp_path / "p.safetensors"), "-o", str(tmp_path / "x.wav")])
    assert code == 2 and "layout 'sequence'" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


# --- per-item seeds ------------------------------------------------------------------------------------------------


def test_flextok_decode_is_per_item(flex_tok):
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = flex_tok.encode(images)
    prefix = dataclasses.replace(tokens, lengths=torch.tensor([16, 16, 16]))
    batch = flex_tok.decode(prefix, seed=5)
    for i in range(3):
        alone = flex_tok.decode(prefix[i], seed=5)
        assert torch.allclose(batch[i], alone[0], atol=1e-5), i
    # the same tokens at two positions of one batch decode to the same image
    twice = dataclasses.replace(tokens, codes=tokens.codes[[0, 0]], lengths=torch.tensor([16, 16]))
    out = flex_tok.decode(twice, seed=5)
    assert torch.allclose(out[0], out[1], atol=1e-5) and torch.allclose(out[0], batch[0], atol=1e-5)
    # per-item seeds as a list; another seed gives another image
    mixed = flex_tok.decode(prefix, seed=[9, 5, 9])
    assert torch.allclose(mixed[1], batch[1], atol=1e-5)
    assert (mixed[0] - batch[0]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="one per item"):
        flex_tok.decode(prefix, seed=[1, 2])


def test_item_generators():
    gens = api.item_generators(3, seed=4)
    noise = api.randn_per_item((5,), gens)
    assert torch.equal(noise[0], noise[2]) and torch.equal(noise[0], torch.randn(5, generator=torch.Generator()
                                                                               .manual_seed(4)))
    shared = torch.Generator().manual_seed(4)
    drawn = api.randn_per_item((5,), api.item_generators(2, generator=shared))
    assert not torch.equal(drawn[0], drawn[1])  # one generator: items draw in batch order (official behaviour)
    with pytest.raises(ValueError, match="either seed or generator"):
        api.item_generators(2, seed=1, generator=shared)


# --- generators ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class UnigramConfig:
    architecture: str = "test-unigram"
    num_classes: int = 3
    tokenizer: str | None = None


class UnigramGenerator(api.Generator):
    """A class-conditional unigram model over a 1-D token sequence: enough to exercise the base contract."""

    config_class = UnigramConfig
    modality = "image"

    def __init__(self, config):
        super().__init__(config)
        self.num_classes = config.num_classes
        self.logits = torch.nn.Parameter(torch.randn(config.num_classes, 64000) * 3)

    def generate(self, labels=None, *, prompt=None, num_samples=1, cfg_scale=None, temperature=None, top_k=None,
                 top_p=None, steps=None, seed=None, progress=False):
        api.check_sampling_args(num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                                cfg_scale=cfg_scale, steps=steps)
        labels, seeds = self.item_labels_and_seeds(labels, num_samples, seed)
        tok = self.paired_model()
        n = 16
        u = api.rand_per_item((n,), api.item_generators(len(labels), seed=seeds))      # (B, n)
        cdf = self.logits[labels].softmax(-1).cumsum(-1)                                 # (B, V)
        codes = torch.searchsorted(cdf, u.contiguous()).clamp_max(63999)                 # inverse-CDF sampling
        return tok.from_sequence(codes[..., None], lengths=torch.full((len(labels),), n),
                                 labels=labels.tolist(), seeds=seeds, image_size=[64, 64])


@pytest.fixture
def unigram():
    registry.register_architecture("test-unigram", UnigramGenerator)
    spec = registry.ModelSpec(name="test-unigram", family="test", kind="generator", modality="image",
                              architecture="test-unigram", tokenizer="flextok-tiny-64px")
    registry.register_model(spec)
    yield hub.load("test-unigram", pretrained=False)
    registry._MODELS.pop("test-unigram")
    registry._ARCHITECTURES.pop("test-unigram")


def test_generator_pairs_through_the_registry(unigram):
    assert unigram.config.tokenizer == "flextok-tiny-64px" and unigram.tokenizer_name == "flextok-tiny-64px"
    torch.manual_seed(0)
    tokens = unigram.generate(labels=[0, 2], num_samples=2, seed=11)
    assert tokens.layout == "sequence" and tokens.meta["model"] == "flextok-tiny-64px"
    assert tokens.meta["labels"] == [0, 0, 2, 2] and tokens.meta["seeds"] == [11, 12, 11, 12]
    images = unigram.sample(labels=[0, 2], num_samples=2, seed=11, decode_kwargs={"steps": 2})
    assert images.shape == (4, 3, 64, 64)
    # per item: sample k of a label depends on (label, seed + k) only, not on the rest of the batch
    alone = unigram.generate(labels=[2], seed=12)
    assert torch.equal(alone.codes[0], tokens.codes[3])
    assert torch.allclose(unigram.sample(labels=[2], seed=12, decode_kwargs={"steps": 2})[0], images[3], atol=1e-5)
    assert not torch.equal(tokens.codes[2], tokens.codes[3])
    explicit = unigram.generate(labels=[2, 0], seed=[12, 11])
    assert torch.equal(explicit.codes[0], tokens.codes[3]) and torch.equal(explicit.codes[1], tokens.codes[0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[3]), r"class ids must be in 0..2"),
    (dict(labels=[-1]), r"class ids must be in 0..2"),
    (dict(labels=[0.5]), "integer class ids"),
    (dict(labels=None), "class-conditional"),
    (dict(labels=[0], num_samples=0), "num_samples"),
    (dict(labels=[0], top_p=0.0), "top_p"),
    (dict(labels=[0], top_p=1.5), "top_p"),
    (dict(labels=[0], top_k=-1), "top_k"),
    (dict(labels=[0], temperature=0.0), "temperature"),
    (dict(labels=[0], steps=0), "steps"),
    (dict(labels=[0], num_samples=2, seed=[1]), "one per output item"),
])
def test_generator_bad_arguments(unigram, kwargs, match):
    with pytest.raises(ValueError, match=match):
        unigram.generate(**kwargs)


def test_generator_spec_needs_its_tokenizer():
    with pytest.raises(ValueError, match="names its paired tokenizer"):
        registry.ModelSpec(name="g", family="f", kind="generator", modality="image", architecture="a")


# --- CLI: outputs and kinds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, match", [
    (["encode", "wavtokenizer-tiny-75tps", "{a}", "{b}", "-o", "{tmp}/two.safetensors"], "names one file but there are 2"),
    (["encode", "wavtokenizer-tiny-75tps", "{a}", "-o", "{tmp}/out.jpg"], "writes .safetensors files"),
    (["decode", "wavtokenizer-tiny-75tps", "{t}", "-o", "{tmp}/out.mp3"], "writes .wav / .flac / .ogg files"),
    (["encode", "vit-tiny-digits", "{a}", "-o", "{tmp}/v"], "vit-tiny-digits is an accelerator, not a tokenizer"),
    (["encode", "flextok-vae-tiny-64px", "{a}", "-o", "{tmp}/v"], "is an autoencoder, not a tokenizer"),
])
def test_cli_refuses_in_one_line(tmp_path, capsys, argv, match):
    mono, sr = speech()
    zio.save_audio(tmp_path / "a.wav", mono, sr)
    zio.save_audio(tmp_path / "b.wav", mono, sr)
    zoo.load("wavtokenizer-tiny-75tps").encode(mono, sample_rate=sr).save(tmp_path / "t.safetensors")
    before = set(tmp_path.iterdir())
    paths = dict(a=tmp_path / "a.wav", b=tmp_path / "b.wav", t=tmp_path / "t.safetensors", tmp=tmp_path)
    code = cli.main([arg.format(**paths) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == before  # nothing written, no folder named like a file


# --- loading -------------------------------------------------------------------------------------------------------


def test_load_overrides_and_revision():
    model = zoo.load("flextok-tiny-64px", default_steps=3)
    assert model.config.default_steps == 3 and model.default_decode_kwargs()["steps"] == 3
    with pytest.raises(zoo.CheckpointError, match="shape mismatch"):
        zoo.load("flextok-tiny-64px", encoder_dim=64, encoder_head_dim=32)
    with pytest.raises(ValueError, match="revision= applies to Hub models only"):
        zoo.load("flextok-tiny-64px", revision="abc")
    with pytest.raises(ValueError, match="unexpected keyword argument 'no_such_field'"):
        zoo.load("flextok-tiny-64px", pretrained=False, no_such_field=1)


def test_bundled_weights_are_verified(tmp_path, monkeypatch):
    for name in zoo.list_models():
        spec = zoo.model_info(name)
        if spec.bundled:
            assert zoo.checkpoints.sha256_of(hub.bundled_dir(spec) / "model.safetensors") == spec.sha256, name
    spec = zoo.model_info("wavtokenizer-tiny-75tps")
    root = tmp_path / "weights"
    import shutil

    shutil.copytree(hub.bundled_dir(spec), root / spec.bundled)
    weights = root / spec.bundled / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 4096] = bytes(b ^ 0xFF for b in data[middle: middle + 4096])  # 4 KiB flipped
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("TOKZOO_WEIGHTS", str(root))
    with pytest.raises(zoo.CheckpointError, match=rf"{weights}: sha256 mismatch"):
        zoo.load("wavtokenizer-tiny-75tps")


def test_written_files_are_world_readable(tmp_path):
    old = os.umask(0o077)
    try:
        zoo.load("wavtokenizer-tiny-75tps").save_pretrained(tmp_path / "out")
        Tokens(torch.zeros(1, 1, 2, dtype=torch.long), "audio", (4,)).save(tmp_path / "t.safetensors")
    finally:
        os.umask(old)
    for path in [*(tmp_path / "out").iterdir(), tmp_path / "t.safetensors"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_offline_is_detected_once_and_downloads_go_local(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants
    import socket

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "_offline", None)
    probes = []

    def refuse(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", refuse)
    calls = []
    real = hub.hf_hub_download
    monkeypatch.setattr(hub, "hf_hub_download", lambda **kw: calls.append(kw) or real(**kw))
    for _ in range(2):
        with pytest.raises(zoo.WeightsUnavailableError, match="HF_HUB_OFFLINE"):
            zoo.load("wavtokenizer-small-75tps")
    assert len(probes) == 1 and probes[0][1] <= 2       # one short probe per process
    assert [c["local_files_only"] for c in calls] == [True, True]


def test_a_broken_family_does_not_take_the_zoo_down(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)
    broken = importlib.metadata.EntryPoint(name="broken", value="tokzoo_no_such_family", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [*real, broken])
    monkeypatch.setattr(registry, "_families_loaded", False)
    monkeypatch.setattr(registry, "FAILED_FAMILIES", {})
    with pytest.warns(RuntimeWarning, match="family 'broken'.*failed to import"):
        names = zoo.list_models()
    assert "wavtokenizer-tiny-75tps" in names and "broken" in registry.FAILED_FAMILIES
    with pytest.raises(zoo.UnknownModelError, match="families that failed to import: broken"):
        zoo.model_info("brokn-model")


def test_zoo_list_does_not_import_heavy_packages():
    import subprocess
    import sys

    code = ("import sys, zoo; zoo.list_models(); "
            "print(sorted(m for m in ('diffusers', 'transformers', 'vector_quantize_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


@pytest.fixture
def bundled_unigram(unigram, tmp_path, monkeypatch):
    """The unigram generator as a bundled model (weights/ in a temporary root beside the real bundled tokenizer)."""
    root = tmp_path / "weights"
    unigram.save_pretrained(root / "test-unigram")
    (root / "flextok-tiny-64px").symlink_to(hub.bundled_dir(zoo.model_info("flextok-tiny-64px")))
    digest = zoo.checkpoints.sha256_of(root / "test-unigram" / "model.safetensors")
    splits = {"train": "random init", "validation": "none", "test": "none"}  # a test double, trained on nothing
    spec = dataclasses.replace(zoo.model_info("test-unigram"), bundled="test-unigram", sha256=digest, splits=splits)
    monkeypatch.setitem(registry._MODELS, "test-unigram", spec)
    monkeypatch.setenv("TOKZOO_WEIGHTS", str(root))
    return hub.load("test-unigram")


def test_zoo_generate_writes_a_labelled_grid(bundled_unigram, tmp_path, capsys):
    code = cli.main(["generate", "test-unigram", "--class", "0", "2", "-n", "2", "--seed", "3", "--steps", "2",
                     "-o", str(tmp_path / "grid.png")])
    assert code == 0, capsys.readouterr().err
    grid = zio.load_image(tmp_path / "grid.png")
    assert grid.shape == (3, 2 + 64 + 12 + 2, 2 + 4 * (64 + 2))  # one row of 4 captioned tiles
    expected = bundled_unigram.sample([0, 2], num_samples=2, seed=3, steps=2)
    first = grid[:, 2: 66, 2: 66]
    assert (first - expected[0]).abs().max() <= 1 / 255 + 1e-6  # the first tile is class 0, seed 3
    code = cli.main(["generate", "test-unigram", "--class", "5", "-o", str(tmp_path / "x.png")])
    assert code == 2 and "class ids must be in 0..2" in capsys.readouterr().err
    code = cli.main(["generate", "flextok-tiny-64px", "-o", str(tmp_path / "x.png")])
    assert code == 2 and "is a tokenizer, not a generator" in capsys.readouterr().err


def test_demo_shows_bundled_generators(bundled_unigram, tmp_path):
    from zoo.demo import run_demo

    rows = run_demo(tmp_path / "demo", names=["test-unigram"])
    assert rows[0]["model"] == "test-unigram" and rows[0]["samples/s"] > 0
    grid = zio.load_image(tmp_path / "demo" / "test-unigram" / "grid.png")
    assert grid.shape[-1] == 2 + 6 * (64 + 2)  # 2 samples x 3 classes in one row
    assert len(list((tmp_path / "demo" / "test-unigram").glob("sample_*.png"))) == 6
