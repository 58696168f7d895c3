"""Official TokenBridge checkpoints (``checkpoint-last.pth``) -> this implementation.

The official file holds ``{"model": state_dict (parameters and buffers), "model_ema": {parameter name: EMA value},
"optimizer", "epoch", "scaler", "args"}``; the official evaluation loads ``model``, then replaces every parameter by
its EMA value: so do we (``use_ema=True``, the default). Key names are ours unchanged, except the quantizer's
buffers (``reconstruction_values``, ``boundaries`` -> ``quantizer.*``: loaded, not recomputed, as the official model
uses them) and ``channel_mask`` (the causal mask, checked and dropped). A bare state dict is taken as it is.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.checkpoints import check_converted

_QUANTIZER = {"reconstruction_values": "quantizer.reconstruction_values", "boundaries": "quantizer.boundaries"}


def unwrap(checkpoint: dict, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights to load: ``model`` with its parameters replaced by ``model_ema`` (when present and `use_ema`)."""
    if not isinstance(checkpoint.get("model"), dict):
        return checkpoint
    weights = dict(checkpoint["model"])
    ema = checkpoint.get("model_ema")
    if use_ema and isinstance(ema, dict):
        unknown = sorted(set(ema) - set(weights))
        if unknown:
            raise KeyError(f"model_ema holds keys the model does not ({unknown[:4]})")
        weights.update(ema)
    return weights


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official TokenBridge checkpoint for `model` (a `TokenBridgeGenerator`), checking every key."""
    weights = unwrap(state_dict)
    if "class_emb.weight" not in weights or "channel_heads.0.weight" not in weights:
        raise KeyError(f"no 'class_emb.weight' / 'channel_heads.0.weight' among the keys {sorted(weights)[:6]}: not a "
                       "TokenBridge checkpoint")
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key!r}: expected a tensor, got {type(value).__name__}")
        if key == "channel_mask":
            n = value.shape[0]
            causal = torch.full((n, n), float("-inf")).triu(1)
            if value.shape != (model.channels, model.channels) or not torch.equal(value.float().cpu(), causal):
                raise ValueError(f"channel_mask: expected the {model.channels} x {model.channels} causal mask, got "
                                 f"shape {tuple(value.shape)}")
            continue
        out[_QUANTIZER.get(key, key)] = value
    check_converted(out, model, blocks="encoder_blocks.", depth=model.config.encoder_depth)
    return out


# official TokenBridge.__init__ argument -> our config field
_ARGS = {"encoder_embed_dim": "encoder_dim", "encoder_depth": "encoder_depth", "encoder_num_heads": "encoder_heads",
         "decoder_embed_dim": "decoder_dim", "decoder_depth": "decoder_depth", "decoder_num_heads": "decoder_heads",
         "channel_embed_dim": "channel_dim", "channel_depth": "channel_depth", "channel_heads": "channel_heads",
         "mlp_ratio": "mlp_ratio", "quant_levels": "levels", "vae_embed_dim": "channels",
         "mask_ratio_min": "mask_ratio_min", "label_drop_prob": "label_drop_prob", "class_num": "num_classes",
         "attn_dropout": "attn_dropout", "proj_dropout": "proj_dropout", "buffer_size": "buffer_size",
         "quant_min": "value_min", "quant_max": "value_max", "std_range": "std_range"}
_IGNORED = ("grad_checkpointing", "use_quantized_value", "norm_layer")  # no effect on the weights or the outputs


def config_from_official(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Official ``TokenBridge(...)`` arguments -> `TokenBridgeConfig` fields (``norm_layer`` must be LayerNorm with
    eps 1e-6, as in every released factory)."""
    known = set(_ARGS) | set(_IGNORED) | {"img_size", "vae_stride", "patch_size"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown TokenBridge arguments {unknown}")
    if kwargs.get("patch_size", 1) != 1:
        raise ValueError(f"patch_size {kwargs['patch_size']}: only 1 (one latent position per token) is supported")
    side = int(kwargs.get("img_size", 256)) // int(kwargs.get("vae_stride", 16))
    return {"grid_size": (side, side), **{ours: kwargs[k] for k, ours in _ARGS.items() if k in kwargs}}


__all__ = ["checkpoint_filter_fn", "config_from_official", "unwrap"]
