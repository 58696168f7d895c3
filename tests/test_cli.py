"""The `zoo` command, run for real (in-process through `main`, and once through the installed console script)."""

import dataclasses
import json
import shutil
import subprocess

import pytest
import torch

import zoo
from zoo import cli, io as zio, registry
from tokenizers_audio.wavtokenizer import WavTokenizer, WavTokenizerConfig
from tokenizers_img.flextok import FlexTok, FlexTokConfig

from conftest import TINY_OVERRIDES, init_codebook_


@pytest.fixture
def bundled_tiny(tmp_path, monkeypatch):
    """A weights/ folder holding a tiny model under the bundled name, so the CLI runs fast and offline."""
    torch.manual_seed(0)
    spec = zoo.model_info("wavtokenizer-tiny-75tps")
    model = init_codebook_(WavTokenizer(WavTokenizerConfig(**{**spec.config, **TINY_OVERRIDES["wavtokenizer"]})))
    root = tmp_path / "weights"
    model.card_info["spec"] = spec
    model.eval().save_pretrained(root / spec.bundled)
    image_spec = zoo.model_info("flextok-tiny-64px")
    image_model = FlexTok(FlexTokConfig(**{**image_spec.config, **TINY_OVERRIDES["flextok"]}))
    image_model.card_info["spec"] = image_spec
    image_model.eval().save_pretrained(root / image_spec.bundled)
    monkeypatch.setenv("TOKZOO_WEIGHTS", str(root))
    for s in (spec, image_spec):  # the registry records the bundled files' sha256: point it at these
        digest = zoo.checkpoints.sha256_of(root / s.bundled / "model.safetensors")
        monkeypatch.setitem(registry._MODELS, s.name, dataclasses.replace(s, sha256=digest))
    return model


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys, bundled_tiny):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "modality", "codebook", "tokens", "offline"]
    row = next(line for line in lines if line.startswith("wavtokenizer-tiny-75tps")).split()
    assert row[-1] == "yes" and row[3] == "1024"
    assert next(line for line in lines if line.startswith("wavtokenizer-small-75tps")).split()[-1] == "no"
    code, out, _ = run(capsys, "list", "wavtokenizer*small*")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["wavtokenizer-small-40tps", "wavtokenizer-small-75tps"]
    code, out, _ = run(capsys, "list", "wavtokenizer-small-75tps", "--params")
    assert out.splitlines()[0].split()[-1] == "params"
    with torch.device("meta"):
        params = zoo.hub.build(zoo.model_info("wavtokenizer-small-75tps")).num_parameters()
    assert out.splitlines()[2].split()[-1] == f"{params / 1e6:.1f}M"


def test_info_prints_card(capsys, bundled_tiny):
    code, out, _ = run(capsys, "info", "wavtokenizer-small-40tps")
    assert code == 0 and "library_name: tokzoo" in out and "40" in out and "novateur/WavTokenizer" in out
    code, _, err = run(capsys, "info", "wavtokenizer-smal-40tps")
    assert code == 2 and "Did you mean" in err


def test_encode_decode_files_and_folders(capsys, bundled_tiny, tmp_path):
    src = tmp_path / "in"
    for i, sr in enumerate((16000, 24000, 44100)):
        zio.save_audio(src / f"clip{i}.wav", torch.randn(1, sr // 2) * 0.1, sr)
    code, out, _ = run(capsys, "encode", "wavtokenizer-tiny-75tps", str(src / "clip0.wav"), "-o", str(tmp_path / "a.safetensors"))
    assert code == 0
    tokens = zoo.Tokens.load(tmp_path / "a.safetensors")
    assert tokens.codes.shape == (1, 1, 38) and tokens.meta["sample_rate"] == 16000
    assert tokens.meta["model"] == "wavtokenizer-tiny-75tps"
    code, _, _ = run(capsys, "decode", "wavtokenizer-tiny-75tps", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "a.wav"))
    wav, sr = zio.load_audio(tmp_path / "a.wav")
    assert code == 0 and sr == 16000 and wav.shape == (1, 8000)
    # folders in, folders out
    assert run(capsys, "encode", "wavtokenizer-tiny-75tps", str(src), "-o", str(tmp_path / "codes"))[0] == 0
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == [f"clip{i}.safetensors" for i in range(3)]
    assert run(capsys, "decode", "wavtokenizer-tiny-75tps", str(tmp_path / "codes"), "-o", str(tmp_path / "wavs"))[0] == 0
    for i, sr in enumerate((16000, 24000, 44100)):
        wav, rate = zio.load_audio(tmp_path / "wavs" / f"clip{i}.wav")
        assert rate == sr and wav.shape[-1] == sr // 2


def test_export_roundtrip(capsys, bundled_tiny, tmp_path):
    code, out, _ = run(capsys, "export", "wavtokenizer-tiny-75tps", str(tmp_path / "exported"))
    assert code == 0
    loaded = zoo.load(f"local-dir:{tmp_path / 'exported'}")
    for key, value in bundled_tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "library_name: tokzoo" in card


def test_convert_official_checkpoint(capsys, tmp_path, monkeypatch, parity_dir):
    from tests_helpers import parity_checkpoint

    ckpt, config = parity_checkpoint(parity_dir("wavtokenizer") / "frame75", tmp_path)
    # register nothing: convert via a registered name whose config is swapped for the fixture's sizes
    spec = zoo.model_info("wavtokenizer-small-75tps")
    monkeypatch.setitem(registry._MODELS, spec.name, dataclasses.replace(spec, config=config))
    code, out, err = run(capsys, "convert", spec.name, str(ckpt), str(tmp_path / "converted"))
    assert code == 0, err
    model = zoo.load(f"local-dir:{tmp_path / 'converted'}")
    # the converted codebook is the fixture's official one (its size read from the weights, not assumed)
    official = torch.load(ckpt, weights_only=True)["state_dict"]
    embed = official["feature_extractor.encodec.quantizer.vq.layers.0._codebook.embed"]
    assert model.codebook_size == embed.shape[0] == config["codebook_size"]
    assert torch.equal(model.codebook, embed)


def test_image_encode_and_coarse_to_fine_grid(capsys, bundled_tiny, tmp_path):
    name = "flextok-tiny-64px"
    zio.save_image(tmp_path / "photo.png", torch.rand(3, 20, 30))  # not square: centre-cropped to 16 x 16
    code, out, err = run(capsys, "encode", name, str(tmp_path / "photo.png"), "-o", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    assert "codes (1, 8)" in out
    code, _, err = run(capsys, "decode", name, str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "grid.png"),
                       "--tokens", "1,2,4,8", "--seed", "0")
    assert code == 0, err
    grid = zio.load_image(tmp_path / "grid.png")
    assert grid.shape == (3, 2 + 16 + 12 + 2, 2 + 4 * (16 + 2))  # one row of 4 tiles with captions
    model = zoo.load(name)
    tokens = zoo.Tokens.load(tmp_path / "t.safetensors")
    first = model.decode(dataclasses.replace(tokens, lengths=torch.tensor([1])), seed=0)[0]  # the 1-token tile
    assert (grid[:, 2:18, 2:18] - first).abs().max() <= 1 / 255 + 1e-6
    for bad in ("0,4", "1,9", "a,b"):
        code, _, err = run(capsys, "decode", name, str(tmp_path / "t.safetensors"), "-o", str(tmp_path / "x.png"),
                           "--tokens", bad)
        assert code == 2 and "--tokens" in err
    code, _, err = run(capsys, "decode", "wavtokenizer-tiny-75tps", str(tmp_path / "t.safetensors"), "-o",
                       str(tmp_path / "x.wav"), "--tokens", "1,2")
    assert code == 2 and "decodes prefixes" in err


def test_demo(capsys, bundled_tiny, tmp_path):
    code, out, _ = run(capsys, "demo", "-o", str(tmp_path / "demo"), "--models", "flextok-tiny-64px",
                       "wavtokenizer-tiny-75tps")  # the two tiny stand-ins of the fixture
    assert code == 0 and str((tmp_path / "demo").resolve()) in out
    rows = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["model"] for r in rows] == ["flextok-tiny-64px", "wavtokenizer-tiny-75tps"]
    assert {"tokens", "bitrate", "psnr@1", "psnr@8", "ssim@8", "time_s"} <= set(rows[0])
    assert {"tokens", "bitrate", "mel_distance", "time_s"} <= set(rows[1])
    assert len(list((tmp_path / "demo" / "flextok-tiny-64px").glob("*_reconstruction.png"))) == 3
    assert len(list((tmp_path / "demo" / "wavtokenizer-tiny-75tps").glob("*_reconstruction.wav"))) == 4
    assert "| model |" in (tmp_path / "demo" / "summary.md").read_text()


def test_console_script_is_installed(bundled_tiny):
    exe = shutil.which("zoo") or pytest.fail("the `zoo` console script is not installed")
    result = subprocess.run([exe, "list", "wavtokenizer-tiny*"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "wavtokenizer-tiny-75tps" in result.stdout
    result = subprocess.run([exe, "info", "nope/nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "hf-hub:" in result.stderr
