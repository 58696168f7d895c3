"""Official LlamaGen VQ checkpoints -> `LlamaGenVQ`, and back.

The released files (``vq_ds16_c2i.pt``, ``vq_ds8_c2i.pt`` in ``FoundationVision/LlamaGen``) are pickles of plain
tensors, read with ``torch.load(weights_only=True)``. The weights sit under ``ema``, ``model`` or ``state_dict``
(looked up in that order, as the official loaders do; ``vq_train.py`` writes ``model`` and, with EMA, ``ema``), or the
file is the state dict itself (``VQModel.state_dict()``, also what the Hub mixin repo ``FoundationVision/vq-ds16-c2i``
holds). Key names are the official ones on both sides; a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix
is looked through. ``quantize.codebook_used`` (a training-only usage log, 65,536 floats) is checked and dropped. Any
other key that the model does not have, a missing key or a wrong shape is an error.
"""

from __future__ import annotations

import torch

CODEBOOK_USED = "quantize.codebook_used"
CODEBOOK_USED_LEN = 65536  # hard-coded in the official VectorQuantizer
WRAPPERS = ("ema", "model", "state_dict")  # the order of the official loaders (vq_demo.py, reconstruction_vq_ddp.py)
PREFIXES = ("module.", "_orig_mod.")


def unwrap(obj: dict) -> dict[str, torch.Tensor]:
    """The weights of an official checkpoint: ``ema``, else ``model``, else ``state_dict``, else the dict itself."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors (or a training checkpoint holding one), got {type(obj).__name__}")
    for key in WRAPPERS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official LlamaGen ``VQModel`` state dict (or a checkpoint wrapping one) for `model`, checking every
    key and shape."""
    weights = unwrap(state_dict)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown, mismatched = [], []
    for raw_key, value in weights.items():
        key = _strip(raw_key)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{raw_key}: expected a tensor, got {type(value).__name__}")
        if key == CODEBOOK_USED:
            if value.ndim != 1:
                raise ValueError(f"{raw_key}: expected the 1-D codebook usage buffer, got shape {tuple(value.shape)}")
            continue
        if key not in expected:
            unknown.append(raw_key)
            continue
        if key in out:
            raise KeyError(f"two checkpoint keys map to {key!r} (second: {raw_key!r})")
        if tuple(value.shape) != tuple(expected[key].shape):
            mismatched.append(f"{raw_key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        out[key] = value
    missing = sorted(set(expected) - set(out))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys that are not part of a LlamaGen VQModel of this config "
                        f"(e.g. {', '.join(sorted(unknown)[:5])})")
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({'; '.join(mismatched[:5])}): the config (ch, ch_mult, "
                        "z_channels, codebook size / dim) does not match the checkpoint")
    if problems:
        raise ValueError("; ".join(problems))
    return out


def to_official(state_dict: dict[str, torch.Tensor], *, codebook_used: bool = True) -> dict[str, torch.Tensor]:
    """`LlamaGenVQ.state_dict()` -> the official ``VQModel.state_dict()`` (with the zero ``codebook_used`` buffer of
    the default ``codebook_show_usage=True`` unless `codebook_used` is False)."""
    out = {k: v.detach().clone() for k, v in state_dict.items()}
    if codebook_used:
        out[CODEBOOK_USED] = torch.zeros(CODEBOOK_USED_LEN)
    return out
