"""Hub loading without a network: a hand-built HF cache under a temporary HF_HUB_CACHE, HF_HUB_OFFLINE=1."""

import hashlib
import json

import huggingface_hub.constants as hf_constants
import pytest
import torch

import zoo
from tokenizers_audio.wavtokenizer import WavTokenizer, WavTokenizerConfig, to_official
from zoo import registry

from conftest import TINY_OVERRIDES, init_codebook_

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def add(repo_id: str, files: dict, sha: str = SHA):
        root = cache / f"models--{repo_id.replace('/', '--')}"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(sha)
        snap = root / "snapshots" / sha
        snap.mkdir(parents=True, exist_ok=True)
        for name, write in files.items():
            write(snap / name)
        return snap

    return add


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    config = WavTokenizerConfig(**{**zoo.model_info("wavtokenizer-small-75tps").config, **TINY_OVERRIDES["wavtokenizer"]})
    return init_codebook_(WavTokenizer(config)).eval()


@pytest.fixture
def temp_spec():
    names = []

    def add(**kw):
        spec = registry.ModelSpec(family="wavtokenizer", kind="tokenizer", modality="audio",
                                  architecture="wavtokenizer", **kw)
        registry.register_model(spec)
        names.append(spec.name)
        return spec

    yield add
    for name in names:
        registry._MODELS.pop(name, None)


def test_zoo_layout_repo_loads_offline(offline_cache, tiny_model, tmp_path):
    folder = tmp_path / "export"
    tiny_model.save_pretrained(folder)
    offline_cache("tokzoo-test/tiny", {
        "config.json": lambda p: p.write_bytes((folder / "config.json").read_bytes()),
        "model.safetensors": lambda p: p.write_bytes((folder / "model.safetensors").read_bytes()),
    })
    wav = torch.randn(24000) * 0.1
    saved = tiny_model.state_dict()

    def assert_saved_weights(model):  # (a random tiny WavTokenizer gives every frame the same code: compare weights)
        assert model.state_dict().keys() == saved.keys()
        for key, value in saved.items():
            assert torch.equal(model.state_dict()[key], value), key

    for ref in ("hf-hub:tokzoo-test/tiny", f"hf-hub:tokzoo-test/tiny@{SHA}"):
        loaded = zoo.load(ref)
        assert not loaded.training
        assert_saved_weights(loaded)
        assert torch.equal(loaded.encode(wav, sample_rate=24000).codes, tiny_model.encode(wav, sample_rate=24000).codes)
    # the huggingface_hub mixin entry point resolves through the same strict loader: the saved weights, in eval mode
    mixin = WavTokenizer.from_pretrained("tokzoo-test/tiny")
    assert isinstance(mixin, WavTokenizer) and not mixin.training
    assert_saved_weights(mixin)


def test_official_checkpoint_converted_offline(offline_cache, tiny_model, temp_spec):
    def write_ckpt(path):
        torch.save({"state_dict": to_official(tiny_model.state_dict()), "global_step": 5}, path)

    snap = offline_cache("tokzoo-test/official", {"tiny.ckpt": write_ckpt})
    digest = hashlib.sha256((snap / "tiny.ckpt").read_bytes()).hexdigest()
    spec = temp_spec(name="test-official-tiny", config={**tiny_model.config.__dict__},
                     hub_file=registry.HubFile("tokzoo-test/official", "tiny.ckpt", SHA, digest),
                     filter_fn=zoo.model_info("wavtokenizer-small-75tps").filter_fn)
    assert zoo.hub.is_available_offline(spec)
    loaded = zoo.load("test-official-tiny")
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    bad = temp_spec(name="test-official-badsha", config={**tiny_model.config.__dict__},
                    hub_file=registry.HubFile("tokzoo-test/official", "tiny.ckpt", SHA, "f" * 64),
                    filter_fn=spec.filter_fn)
    with pytest.raises(zoo.CheckpointError, match="sha256 mismatch"):
        zoo.load(bad.name)


def test_missing_file_offline_says_what_and_how(offline_cache, temp_spec, tiny_model):
    offline_cache("tokzoo-test/official", {})
    temp_spec(name="test-missing", config={**tiny_model.config.__dict__},
              hub_file=registry.HubFile("tokzoo-test/official", "absent.ckpt", SHA))
    with pytest.raises(zoo.WeightsUnavailableError) as info:
        zoo.load("test-missing")
    message = str(info.value)
    for needed in ("absent.ckpt", "tokzoo-test/official", SHA, "zoo download test-missing", "HF_HUB_CACHE"):
        assert needed in message
    assert not zoo.hub.is_available_offline(zoo.model_info("test-missing"))


def test_unknown_repo_offline(offline_cache):
    with pytest.raises(zoo.WeightsUnavailableError, match="tokzoo-test/nothing"):
        zoo.load("hf-hub:tokzoo-test/nothing")


def test_official_entries_need_the_hub_offline(offline_cache):
    with pytest.raises(zoo.WeightsUnavailableError, match="WavTokenizer_small_320_24k_4096.ckpt"):
        zoo.load("wavtokenizer-small-75tps")


def test_bad_hub_refs():
    with pytest.raises(ValueError, match="hf-hub:org/repo"):
        zoo.load("hf-hub:justaname")
    with pytest.raises(FileNotFoundError):
        zoo.load("local-dir:/no/such/folder")


def test_local_dir_with_hostile_config(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"architecture": "subprocess.Popen", "args": ["rm"]}')
    with pytest.raises(ValueError, match="may only name a registered architecture"):
        zoo.load(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text('{"architecture": "wavtokenizer", "__class__": "x"}')
    with pytest.raises(zoo.CheckpointError, match="does not fit"):
        zoo.load(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text('{"architecture": "wavtokenizer", "hop_length": 7}')
    with pytest.raises(zoo.CheckpointError, match=r"config\.json: config does not fit.*hop_length"):
        zoo.load(f"local-dir:{tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(zoo.CheckpointError, match="not valid JSON"):
        zoo.load(f"local-dir:{tmp_path}")


def test_official_flextok_entry_loads_and_encodes_with_its_own_config(offline_cache, parity_dir, tmp_path, capsys):
    """A registered official FlexTok name resolves the checkpoint's own config (safetensors metadata, and the config
    of the Hub VAE it names) inside `zoo.load` and `zoo convert`: the registry sizes are not what gets built."""
    import ast

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from zoo import cli

    folder = parity_dir("flextok")
    source = folder / "official_state_dict.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
    vae = ast.literal_eval(metadata["vae"])
    vae["hf_hub_path"] = "EPFL-VILAB/flextok_vae_c16"  # the released layout: the VAE architecture comes from its repo
    metadata["vae"] = str(vae)
    state = load_file(source)
    spec = zoo.model_info("flextok-d12-d12-in1k")
    offline_cache(spec.hub_file.repo_id, {"model.safetensors": lambda p: save_file(state, str(p), metadata=metadata)})
    offline_cache("EPFL-VILAB/flextok_vae_c16",
                  {"config.json": lambda p: p.write_text((folder / "vae_config.json").read_text())})
    io = load_file(folder / "io.safetensors")
    model = zoo.load(spec.name)
    hydra = json.loads((folder / "config.json").read_text())
    assert model.config.vae_scaling_factor == hydra["vae"]["scaling_factor"]
    assert model.config.encoder_depth != spec.config["encoder_depth"] or model.config.encoder_dim != spec.config[
        "encoder_dim"]  # the fixture's sizes, not the registry's
    tokens = model.encode((io["images"] + 1) / 2, resize="none")  # the fixture's own image size
    assert torch.equal(tokens.codes, io["tokens"]) and tokens.meta["model"] == spec.name
    # zoo convert takes the same path from a local official file
    local = tmp_path / "official.safetensors"
    save_file(state, str(local), metadata=metadata)
    assert cli.main(["convert", spec.name, str(local), str(tmp_path / "converted")]) == 0, capsys.readouterr().err
    converted = zoo.load(f"local-dir:{tmp_path / 'converted'}")
    assert torch.equal(converted.encode((io["images"] + 1) / 2, resize="none").codes, io["tokens"])


def test_revision_reads_another_commit(offline_cache, tiny_model, temp_spec):
    """`zoo.load(name, revision=)` reads the entry's file at another commit (and skips the pinned sha256)."""
    other = "fedcba9876543210fedcba9876543210fedcba98"
    changed = {k: v.clone() for k, v in to_official(tiny_model.state_dict()).items()}
    key = next(k for k in changed if k.endswith("weight") and changed[k].is_floating_point())
    changed[key] += 1
    offline_cache("tokzoo-test/revs", {"tiny.ckpt": lambda p: torch.save({"state_dict": to_official(
        tiny_model.state_dict())}, p)})
    offline_cache("tokzoo-test/revs", {"tiny.ckpt": lambda p: torch.save({"state_dict": changed}, p)}, sha=other)
    temp_spec(name="test-revs", config={**tiny_model.config.__dict__},
              hub_file=registry.HubFile("tokzoo-test/revs", "tiny.ckpt", SHA, "0" * 64),
              filter_fn=zoo.model_info("wavtokenizer-small-75tps").filter_fn)
    with pytest.raises(zoo.CheckpointError, match="sha256 mismatch"):
        zoo.load("test-revs")  # the pinned revision, with its pinned hash
    loaded = zoo.load("test-revs", revision=other)
    assert torch.equal(to_official(loaded.state_dict())[key], changed[key]) and loaded.name == "test-revs"


def test_zoo_download_prints_the_cached_file_or_says_what_is_missing(offline_cache, temp_spec, tiny_model, capsys):
    from zoo import cli

    snap = offline_cache("tokzoo-test/official", {
        "tiny.ckpt": lambda path: torch.save({"state_dict": to_official(tiny_model.state_dict())}, path)})
    digest = hashlib.sha256((snap / "tiny.ckpt").read_bytes()).hexdigest()
    config = {**tiny_model.config.__dict__}
    temp_spec(name="test-download", config=config,
              hub_file=registry.HubFile("tokzoo-test/official", "tiny.ckpt", SHA, digest))
    assert cli.main(["download", "test-download"]) == 0
    out = capsys.readouterr().out
    assert f"tokzoo-test/official@{SHA}/tiny.ckpt -> {snap / 'tiny.ckpt'}" in out, out  # where the file is
    # not in the cache (offline): exit status 2 and one message naming the repo, the file and the revision
    temp_spec(name="test-download-absent", config=config,
              hub_file=registry.HubFile("tokzoo-test/official", "absent.ckpt", SHA))
    assert cli.main(["download", "test-download-absent"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("zoo download: error: ")
    for needed in ("'tokzoo-test/official'", "'absent.ckpt'", f"revision {SHA}"):
        assert needed in captured.err, captured.err
    # cached, but not the pinned bytes
    temp_spec(name="test-download-badsha", config=config,
              hub_file=registry.HubFile("tokzoo-test/official", "tiny.ckpt", SHA, "0" * 64))
    assert cli.main(["download", "test-download-badsha"]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    # a bundled model: nothing to fetch, the command names its folder
    spec = zoo.model_info("wavtokenizer-tiny-75tps")
    assert cli.main(["download", spec.name]) == 0
    out = capsys.readouterr().out
    folder = zoo.hub.bundled_dir(spec)
    assert f"{spec.name} is bundled: {folder}" in out and (folder / "model.safetensors").is_file()


def test_zoo_download_fetches_what_the_flextok_config_names(offline_cache, parity_dir, capsys):
    """An official FlexTok checkpoint names its VAE's Hub repo in its config: `zoo download` fetches that config too,
    and says which one it lacks."""
    import ast

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from zoo import cli

    folder = parity_dir("flextok")
    source = folder / "official_state_dict.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = dict(f.metadata())
    vae = ast.literal_eval(metadata["vae"])
    vae["hf_hub_path"] = "EPFL-VILAB/flextok_vae_c16"
    metadata["vae"] = str(vae)
    spec = zoo.model_info("flextok-d12-d12-in1k")
    state = load_file(source)
    snap = offline_cache(spec.hub_file.repo_id,
                         {"model.safetensors": lambda p: save_file(state, str(p), metadata=metadata)})
    assert cli.main(["download", spec.name]) == 2  # the checkpoint is cached, the config of its VAE is not
    err = capsys.readouterr().err
    assert "EPFL-VILAB/flextok_vae_c16" in err and "config.json" in err, err
    offline_cache("EPFL-VILAB/flextok_vae_c16",
                  {"config.json": lambda p: p.write_text((folder / "vae_config.json").read_text())})
    assert cli.main(["download", spec.name]) == 0
    assert f"-> {snap / 'model.safetensors'}" in capsys.readouterr().out


def test_official_xar_entry_loads_offline_and_samples_the_fixture(offline_cache, parity_dir):
    """The registered xar-b entry (its Hub repo and file name) reads a plain official state dict pickled as
    ``xAR-B.pth`` from the cache, here at the fixture's size (config overrides), and replays the fixture's run."""
    from safetensors.torch import load_file

    from generators.xar import config_from_official

    folder = parity_dir("xar")
    state = load_file(folder / "official_state_dict.safetensors")
    spec = zoo.model_info("xar-b")
    offline_cache(spec.hub_file.repo_id, {spec.hub_file.filename: lambda p: torch.save(state, p)})
    fixture = json.loads((folder / "config.json").read_text())
    model = zoo.load("xar-b", **config_from_official(state), num_classes=fixture["model"]["xAR"]["class_num"])
    io = load_file(folder / "io.safetensors")
    torch.manual_seed(int(fixture["cases"]["sample"]["call"].split("manual_seed(")[1].split(")")[0]))
    out = model.generate(io["sample.labels"], cfg_scale=float(io["sample.cfg"]), steps=io["sample.t_steps"].numel() - 1)
    torch.testing.assert_close(out.latents, io["sample.tokens"], atol=1e-5, rtol=0)
    assert out.meta["model"] == "mar-kl16-vae"
