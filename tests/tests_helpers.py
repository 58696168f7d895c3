"""Helpers shared by several test files."""

import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from zoo.checkpoints import read_state_dict

_WT_ENCODER = "feature_extractor.encodec.encoder.model."
_WT_CODEBOOK = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."


def wavtokenizer_parity_config(folder) -> dict:
    """The `WavTokenizerConfig` fields of a WavTokenizer parity fixture (``frame75/``, ``frame40/``, ...).

    Everything comes from the fixture: its ``config.json`` (the official init args, and the values that
    ``EncodecFeatures`` hard-codes, recorded under ``hardcoded_values_overridden`` / ``hardcoded_values_kept``), and
    where the config is silent, the tensor shapes of its official state dict.
    """
    cfg = json.loads((folder / "config.json").read_text())
    fe_block = cfg["feature_extractor"]
    fe, bb, hd = (cfg[k]["init_args"] for k in ("feature_extractor", "backbone", "head"))
    with safe_open(str(folder / "official_state_dict.safetensors"), "pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    overridden = fe_block.get("hardcoded_values_overridden", {})
    encoder = next((v for k, v in overridden.items() if "SEANetEncoder" in k), {})
    quantizer = next((v for k, v in overridden.items() if "ResidualVectorQuantizer" in k), {})
    kept = fe_block.get("hardcoded_values_kept", {}).get("SEANetEncoder", {})
    # shape-derived values: first conv's output channels, codebook width, LSTM depth, AdaLayerNorm rows
    first_conv = next(shapes[k] for k in sorted(shapes) if re.fullmatch(
        re.escape(_WT_ENCODER) + r"0\.conv\.conv\.(weight_v|parametrizations\.weight\.original1)", k))
    codebook = shapes[_WT_CODEBOOK + "embed"]
    lstm_layers = sum(bool(re.fullmatch(re.escape(_WT_ENCODER) + r"\d+\.lstm\.weight_ih_l\d+", k)) for k in shapes)
    config = dict(
        sample_rate=cfg["sample_rate"], downsamples=fe["dowmsamples"],
        n_filters=encoder.get("n_filters", first_conv[0]),
        dimension=encoder.get("dimension", quantizer.get("dimension", codebook[1])),
        lstm_layers=kept.get("lstm", lstm_layers), codebook_size=fe["vq_bins"],
        backbone_dim=bb["dim"], intermediate_dim=bb["intermediate_dim"], num_layers=bb["num_layers"],
        num_bandwidths=bb.get("adanorm_num_embeddings") or shapes["backbone.norm.scale.weight"][0],
        n_fft=hd["n_fft"], hop_length=hd["hop_length"],
    )
    # the config and the weights describe the same model
    assert (config["n_filters"], config["dimension"]) == (first_conv[0], codebook[1])
    assert config["lstm_layers"] == lstm_layers
    assert (config["codebook_size"], config["num_bandwidths"]) == (codebook[0], shapes["backbone.norm.scale.weight"][0])
    return config


def parity_checkpoint(folder, tmp_path):
    """The parity fixture's official state dict as a Lightning-style .ckpt, and the matching zoo config."""
    config = wavtokenizer_parity_config(folder)
    state = load_file(folder / "official_state_dict.safetensors")
    state["multiperioddisc.discriminators.0.convs.0.weight"] = torch.zeros(2)  # training-only keys are dropped
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return path, config


def same(a, b, where: str = "") -> None:
    """Recursive bit-equality of checkpoint contents (tensors, arrays, containers, plain values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every file of two checkpoint folders holds the same values: models, optimizers, schedulers, the step
    counter, the RNG states, the complete marker."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name.endswith(".safetensors"):
            same(read_state_dict(a / name), read_state_dict(b / name), name)
        elif name.endswith((".bin", ".pkl")):
            load = lambda p: torch.load(p, weights_only=False)  # noqa: E731  (files this test just wrote)
            same(load(a / name), load(b / name), name)
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
