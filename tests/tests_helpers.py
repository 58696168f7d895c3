"""Helpers shared by several test files."""

import json

import torch
from safetensors.torch import load_file


def parity_checkpoint(folder, tmp_path):
    """The parity fixture's official state dict as a Lightning-style .ckpt, and the matching zoo config."""
    cfg = json.loads((folder / "config.json").read_text())
    fe, bb, hd = (cfg[k]["init_args"] for k in ("feature_extractor", "backbone", "head"))
    config = dict(downsamples=fe["dowmsamples"], n_filters=4, dimension=32, codebook_size=fe["vq_bins"],
                  backbone_dim=bb["dim"], intermediate_dim=bb["intermediate_dim"], num_layers=bb["num_layers"],
                  n_fft=hd["n_fft"], hop_length=hd["hop_length"])
    state = load_file(folder / "official_state_dict.safetensors")
    state["multiperioddisc.discriminators.0.convs.0.weight"] = torch.zeros(2)  # training-only keys are dropped
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return path, config
