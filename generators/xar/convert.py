"""Official xAR checkpoints (``xAR-{B,L,H}.pth``) -> this implementation.

The released files are plain ``xAR.state_dict()``s (``eval.py`` loads them strictly). Parameter names are ours
unchanged. The persistent buffers are recomputed here from the config and only *checked*: ``mask`` (the additive
block-causal mask over the cells) and every attention's ``rope.freqs`` / ``freqs_cos`` / ``freqs_sin`` (the RoPE
table in cell order); a mismatch means the checkpoint was made for another grid, entity or head width. A training
checkpoint wrapped as ``{"model": ..., "model_ema": ...}`` gives its EMA weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from zoo.checkpoints import check_converted

_ROPE_BUFFERS = (".attn.rope.freqs", ".attn.rope.freqs_cos", ".attn.rope.freqs_sin")


def unwrap(checkpoint: dict) -> dict:
    for key in ("model_ema", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _check_buffer(key: str, value: torch.Tensor, model) -> None:
    """Compare an official buffer with what `model` computes: `ValueError` naming the difference."""
    if key == "mask":
        ours = model.attn_mask
        if value.shape != (1, 1, *ours.shape) or not torch.equal(value[0, 0].cpu() == 0, ours.cpu()):
            raise ValueError(f"mask: the checkpoint's block-causal mask {tuple(value.shape)} is not the model's "
                             f"({model.num_entities} entities of {model.entity_len} positions): another grid or entity?")
        return
    stack = "encoder" if key.startswith("encoder_blocks.") else "decoder"
    table = getattr(model, f"{stack}_rope").cpu()  # (L, 2 hd) = [sin | cos]
    half = table.shape[1] // 2
    if key.endswith("freqs"):
        head_dim = getattr(model.config, f"{stack}_dim") // getattr(model.config, f"{stack}_heads")
        dim = head_dim // 2
        ours = 1.0 / (model.config.rope_theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    else:
        ours = table[:, half:] if key.endswith("cos") else table[:, :half]
    if value.shape != ours.shape or not torch.allclose(value.float().cpu(), ours, atol=1e-5):
        raise ValueError(f"{key}: the checkpoint's RoPE table {tuple(value.shape)} differs from the model's "
                         f"{tuple(ours.shape)} (another grid, entity order or head width?)")


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official xAR state dict for `model` (an `XARGenerator`), checking every key."""
    weights = unwrap(state_dict)
    if "z_proj.weight" not in weights or "time_embed.mlp.0.weight" not in weights:
        raise KeyError(f"no 'z_proj.weight' / 'time_embed.mlp.0.weight' among the keys {sorted(weights)[:6]}: not an "
                       "xAR checkpoint")
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key!r}: expected a tensor, got {type(value).__name__}")
        if key == "mask" or key.endswith(_ROPE_BUFFERS):  # recomputed by the model: checked, not loaded
            _check_buffer(key, value, model)
            continue
        out[key] = value
    check_converted(out, model, blocks="encoder_blocks.", depth=model.config.encoder_depth)
    return out


def config_from_official(state_dict: dict) -> dict[str, Any]:
    """`XARConfig` fields read off an official state dict (sizes, depths, heads, grid, cell size, null label); the
    official cells are square, ``clusters`` of them on a square grid."""
    w = unwrap(state_dict)
    dim, channels = w["z_proj.weight"].shape
    seq_len = w["encoder_pos_embed_learned"].shape[1]
    side = math.isqrt(seq_len)
    allowed = (w["mask"][0, 0] == 0).sum(dim=1)  # row i sees (its cell + the earlier ones) positions
    cell = math.isqrt(int(allowed[0]))
    fields: dict[str, Any] = {"grid_size": (side, side), "channels": int(channels), "entity": "cell",
                              "entity_size": cell, "null_label": w["class_emb.weight"].shape[0] - 1}
    for stack in ("encoder", "decoder"):
        depth = len({k.split(".")[1] for k in w if k.startswith(f"{stack}_blocks.")})
        head_dim = w[f"{stack}_blocks.0.attn.rope.freqs_cos"].shape[1]
        width = w[f"{stack}_blocks.0.attn.qkv.weight"].shape[1]
        fields.update({f"{stack}_dim": int(width), f"{stack}_depth": depth, f"{stack}_heads": int(width // head_dim)})
    hidden = w["encoder_blocks.0.mlp.fc1_g.weight"].shape[0]
    fields["mlp_ratio"] = 4.0 if hidden == int(dim * 4.0 * 2 / 3) else hidden * 3 / (2 * dim)
    return fields


__all__ = ["checkpoint_filter_fn", "config_from_official", "unwrap"]
