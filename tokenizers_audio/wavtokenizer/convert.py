"""Official WavTokenizer checkpoint (Lightning ``.ckpt``) -> this implementation's state dict.

The official file holds the generator under ``state_dict`` with prefixes ``feature_extractor.``, ``backbone.`` and
``head.``, plus training-only entries (discriminators, loss buffers) and the never-used SEANet decoder. The
conversion, asserted key by key:

* drops the training-only prefixes and ``feature_extractor.encodec.decoder.*``; any other unknown key is an error;
* encoder convs: legacy weight norm ``conv.conv.weight_g`` / ``weight_v`` (or the parametrization API's
  ``original0`` / ``original1``) -> ``conv.parametrizations.weight.original0`` / ``original1``;
* codebook: encodec's ``inited`` (float, ``(1,)``), ``cluster_size`` ``(K,)``, ``embed`` / ``embed_avg`` ``(K, D)``
  -> vector-quantize-pytorch's ``initted`` (bool, ``()``) and the same buffers with a leading codebook axis;
* backbone and head keys are the same names (``head.istft.window`` -> ``head.window``).
"""

from __future__ import annotations

import re

import torch

from zoo.checkpoints import unwrap_state_dict

# Training-side modules of decoder/experiment.py; none is needed to encode or decode.
DROPPED_PREFIXES = (
    "feature_extractor.encodec.decoder.",
    "multiperioddisc.",
    "multiresddisc.",
    "dac.",
    "dacdiscriminator.",
    "melspec_loss.",
    "disc_loss.",
    "gen_loss.",
    "feat_matching_loss.",
)

_ENCODER = "feature_extractor.encodec.encoder.model."
_CODEBOOK = "feature_extractor.encodec.quantizer.vq.layers.0._codebook."
_WEIGHT_NORM = {
    "conv.conv.weight_g": "conv.parametrizations.weight.original0",
    "conv.conv.weight_v": "conv.parametrizations.weight.original1",
    "conv.conv.parametrizations.weight.original0": "conv.parametrizations.weight.original0",
    "conv.conv.parametrizations.weight.original1": "conv.parametrizations.weight.original1",
    "conv.conv.bias": "conv.bias",
}


def _map_key(key: str) -> str | None:
    """Our key for an official key; None for keys that are dropped."""
    if key.startswith(DROPPED_PREFIXES):
        return None
    if key.startswith(_ENCODER):
        rest = key[len(_ENCODER):]
        if re.fullmatch(r"\d+\.lstm\.(weight|bias)_(ih|hh)_l\d+", rest):
            return "encoder.model." + rest
        for official, ours in _WEIGHT_NORM.items():
            if rest.endswith(official):
                return "encoder.model." + rest[: -len(official)] + ours
        raise KeyError(f"unrecognised encoder key {key!r}")
    if key.startswith(_CODEBOOK):
        name = key[len(_CODEBOOK):]
        if name in ("inited", "cluster_size", "embed", "embed_avg"):
            return "quantizer._codebook." + ("initted" if name == "inited" else name)
        raise KeyError(f"unrecognised codebook key {key!r}")
    if key == "head.istft.window":
        return "head.window"
    if key.startswith(("backbone.", "head.")):
        return key
    raise KeyError(f"unrecognised key {key!r} (not part of a WavTokenizer checkpoint)")


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official state dict (or the whole Lightning checkpoint dict) for `model`; checks every key."""
    state_dict = unwrap_state_dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = _map_key(key)
        if ours is None:
            continue
        if ours in out:
            raise KeyError(f"two official keys map to {ours!r} (second: {key!r})")
        if ours == "quantizer._codebook.initted":
            value = (value.reshape(()) > 0).clone()
        elif ours.startswith("quantizer._codebook."):
            value = value.unsqueeze(0)
        out[ours] = value
    expected = model.state_dict()
    missing = sorted(set(expected) - set(out))
    if missing:
        raise KeyError(f"official checkpoint lacks {len(missing)} keys the model needs, e.g. {missing[:5]}")
    for key, value in out.items():
        if key not in expected:
            raise KeyError(f"converted key {key!r} has no place in the model (wrong config for this checkpoint?)")
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(expected[key].shape)} "
                "(wrong config for this checkpoint?)"
            )
    if not bool(out["quantizer._codebook.initted"]):
        raise ValueError("the checkpoint's codebook was never initialised (inited = 0): not a trained model")
    return out


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the official key layout (legacy weight norm), e.g. to run the official code on our weights."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("encoder.model."):
            rest = key[len("encoder.model."):]
            rest = rest.replace("conv.parametrizations.weight.original0", "conv.conv.weight_g")
            rest = rest.replace("conv.parametrizations.weight.original1", "conv.conv.weight_v")
            if rest.endswith("conv.bias"):
                rest = rest[: -len("conv.bias")] + "conv.conv.bias"
            out[_ENCODER + rest] = value
        elif key.startswith("quantizer._codebook."):
            name = key[len("quantizer._codebook."):]
            if name == "initted":
                out[_CODEBOOK + "inited"] = value.float().reshape(1)
            else:
                out[_CODEBOOK + name] = value[0]
        elif key == "head.window":
            out["head.istft.window"] = value
        else:
            out[key] = value
    return out
