"""``zoo eval``: a registered model, a training checkpoint of the shared loop, ``--json``, ``--export`` (the table
in the card), and the errors (no evaluation, wrong arguments)."""

import argparse
import json
from dataclasses import dataclass

import pytest
import torch

import zoo
from vit_accel import evaluate as vit_evaluate
from vit_accel.train import DigitsTrainConfig, train as train_digits
from zoo import evaluation
from zoo.api import ZooModel

pytestmark = pytest.mark.usefixtures("one_thread")


def zoo_eval(*argv: str) -> int:
    """``zoo eval ARGV`` through `zoo.evaluation.add_parser` on a parser of our own (as zoo.cli registers it)."""
    parser = argparse.ArgumentParser(prog="zoo")
    evaluation.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.fixture
def few_levels(monkeypatch):
    """The digits table with ToMe at one level only (the full table takes about 10 s on one thread)."""
    monkeypatch.setattr(vit_evaluate, "LEVELS", {"tome": [dict(r=8)]})


def test_eval_bundled_model_json_and_export(tmp_path, capsys):
    rows_file, out = tmp_path / "rows.json", tmp_path / "export"
    assert zoo_eval("flextok-vae-tiny-64px", "--json", str(rows_file), "--export", str(out), "--threads", "1") == 0
    printed = capsys.readouterr().out
    assert "| reconstruction | values | psnr | ssim |\n|---|---|---|---|\n| this VAE | 2048 | 25.55 |" in printed
    rows = json.loads(rows_file.read_text())
    assert rows[0] == {"reconstruction": "this VAE", "values": 2048, "psnr": 25.55, "ssim": 0.7974}  # as its card
    exported, bundled = zoo.load(f"local-dir:{out}"), zoo.load("flextok-vae-tiny-64px")
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in bundled.state_dict().items())
    card = (out / "README.md").read_text()
    assert "## Measured quality" in card and "| this VAE | 2048 | 25.55 | 0.7974 |" in card


def test_eval_training_checkpoint(tmp_path, capsys, few_levels):
    """A checkpoint of the digits recipe (2 steps of the shared loop): evaluated with the entry's config and
    exported with the table in its card."""
    model = train_digits(DigitsTrainConfig(epochs=1, batch_size=750, warmup_epochs=1), str(tmp_path / "run"))
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint_0"
    assert zoo_eval("--checkpoint", str(checkpoint), "--name", "vit-tiny-digits", "--json", str(tmp_path / "r.json"),
                    "--export", str(tmp_path / "export")) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["method"], r["setting"]) for r in rows] == [("none", "-"), ("tome", "r=8")]
    assert rows[0]["agreement %"] == "100.00"
    exported = zoo.load(f"local-dir:{tmp_path / 'export'}")
    assert all(torch.equal(v, exported.state_dict()[k]) for k, v in model.state_dict().items())
    assert "| tome | r=8 |" in (tmp_path / "export" / "README.md").read_text()
    # the positional NAME names the entry too
    assert zoo_eval("vit-tiny-digits", "--checkpoint", str(checkpoint)) == 0
    assert "| none | - |" in capsys.readouterr().out


@dataclass
class _Config:
    architecture: str = "no-evaluation"


class _NoEvaluation(ZooModel):
    config_class = _Config
    kind, modality = "accelerator", "image"

    def __init__(self, config):
        super().__init__(config)
        self.weight = torch.nn.Parameter(torch.zeros(1))


def test_a_model_without_evaluation(monkeypatch, capsys):
    monkeypatch.setattr(evaluation, "load_model", lambda args: _NoEvaluation(_Config()))
    assert zoo_eval("anything") == 2
    assert "_NoEvaluation (no-evaluation) has no held-out evaluation" in capsys.readouterr().err
    with pytest.raises(NotImplementedError, match="overriding ZooModel.evaluate"):
        _NoEvaluation(_Config()).evaluate()


@pytest.mark.parametrize("argv, message", [
    ((), "give a model"),
    (("--checkpoint", "."), "needs --name"),
    (("vit-tiny-digits", "--name", "vit-tiny-digits"), "go with --checkpoint"),
    (("a", "--checkpoint", ".", "--name", "b"), "two models named"),
])
def test_usage_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        zoo_eval(*argv)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        zoo_eval("--checkpoint", str(tmp_path / "missing"), "--name", "vit-tiny-digits")
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        zoo_eval("--checkpoint", str(tmp_path), "--name", "vit-tiny-digits")
    with pytest.raises(FileNotFoundError, match="vae.json is missing"):
        zoo_eval("--checkpoint", str(tmp_path), "--name", "flextok-tiny-64px", "--run", str(tmp_path))


def test_zoo_cli_eval(capsys, few_levels):
    """Through the ``zoo`` command."""
    from zoo import cli

    assert cli.main(["eval", "vit-tiny-digits-routing"]) == 0
    out = capsys.readouterr().out
    assert "| none | - |" in out and "on vit-tiny-digits (unpatched: the first row); routing rows: this model" in out
    assert cli.main(["eval"]) == 2
