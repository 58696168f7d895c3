"""Official LlamaGen GPT checkpoints (``c2i_*.pt``) and ``ModelArgs`` -> this implementation, and back.

Checkpoint layouts (as the official ``sample_c2i.py`` reads them): a pickle holding ``{"model": state_dict}`` (DDP
training), ``{"module": ...}`` (DeepSpeed), ``{"state_dict": ...}``, or the raw state dict (FSDP's consolidated
file, ``--from-fsdp``: XXL and 3B). Keys are the official ``Transformer`` names; the only renames are the FFN's
(timm ``SwiGLU``): ``feed_forward.w1 -> fc1_g``, ``w3 -> fc1_x``, ``w2 -> fc2``. Dropped: ``freqs_cis`` (a plain
attribute in the official code that some checkpoints may carry; when present its length must equal this model's
``cls_token_num + block_size``, since nothing else in the weights tells a 256-px model from a 384-px one) and any
``kv_cache`` / ``causal_mask`` left by a ``generate`` run. Wrapper prefixes (``module.``, ``_orig_mod.``,
``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``) are looked through. Every other key must be known, and
every key and shape must match the model.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from zoo.checkpoints import check_converted

_WRAPPERS = ("model", "module", "state_dict")  # the official loader's order
_PREFIX = re.compile(r"(^|\.)(module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")
_FFN = {"w1": "fc1_g", "w3": "fc1_x", "w2": "fc2"}
_FFN_INVERSE = {v: k for k, v in _FFN.items()}
_FIXED = ("tok_embeddings.weight", "cls_embedding.embedding_table.weight", "norm.weight", "output.weight")
_LAYER = re.compile(r"layers\.(\d+)\.(attention\.wqkv\.weight|attention\.wo\.weight|attention_norm\.weight|"
                    r"ffn_norm\.weight|feed_forward\.(w1|w2|w3)\.weight)")
_DROPPED = re.compile(r"freqs_cis|causal_mask|layers\.\d+\.attention\.kv_cache\.[kv]_cache")


def unwrap(checkpoint: dict) -> dict[str, Any]:
    """The state dict inside an official checkpoint (``model`` / ``module`` / ``state_dict``, or raw)."""
    for key in _WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _strip(key: str) -> str:
    """Without wrapper prefixes (``module._orig_mod.x`` -> ``x``)."""
    while True:
        stripped = _PREFIX.sub(r"\1", key)
        if stripped == key:
            return key
        key = stripped


def _map_key(key: str) -> str | None:
    """Official key -> ours (None: dropped)."""
    key = _strip(key)
    if _DROPPED.fullmatch(key):
        return None
    if key in _FIXED:
        return key
    m = _LAYER.fullmatch(key)
    if m is None:
        hint = " (a text-to-image checkpoint: only the class-conditional c2i GPTs are supported)" \
            if key.startswith("cls_embedding.") else ""
        raise KeyError(f"unrecognised key {key!r}: not part of an official LlamaGen c2i GPT checkpoint{hint}")
    if m.group(3):
        return f"layers.{m.group(1)}.feed_forward.{_FFN[m.group(3)]}.weight"
    return key


def checkpoint_filter_fn(state_dict: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Convert an official LlamaGen GPT checkpoint for `model` (an `ARGenerator`), checking every key and shape."""
    state_dict = unwrap(state_dict)
    if "tok_embeddings.weight" not in {_strip(k) for k in state_dict}:
        raise KeyError(f"no 'tok_embeddings.weight' among the top-level keys {sorted(state_dict)[:6]}: not a "
                       "LlamaGen GPT checkpoint (nor one wrapped in 'model' / 'module' / 'state_dict')")
    out: dict[str, torch.Tensor] = {}
    freqs = None
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{key!r}: expected a tensor, got {type(value).__name__}")
        new = _map_key(key)
        if new is None:
            if _strip(key) == "freqs_cis":
                freqs = value
            continue
        if new in out:
            raise KeyError(f"{key!r}: {new!r} appears twice")
        out[new] = value
    check_converted(out, model, blocks="layers.", depth=model.config.n_layer, hint="another size or vocabulary?")
    if freqs is not None:
        ours = model.freqs_cis()
        if tuple(freqs.shape) != tuple(ours.shape):
            raise ValueError(f"the checkpoint's freqs_cis is {tuple(freqs.shape)}, this model's "
                             f"{tuple(ours.shape)}: the checkpoint was made for another token grid "
                             f"({freqs.shape[0] - model.config.cls_token_num} tokens, this model "
                             f"{model.config.block_size})")
    return out


def to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the official ``Transformer`` key names (what ``load_state_dict`` of the official model
    takes; wrap it as ``{"model": ...}`` for the official sampling scripts)."""
    out = {}
    for key, value in state_dict.items():
        m = re.fullmatch(r"layers\.(\d+)\.feed_forward\.(fc1_g|fc1_x|fc2)\.weight", key)
        out[f"layers.{m.group(1)}.feed_forward.{_FFN_INVERSE[m.group(2)]}.weight" if m else key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# config

# official ModelArgs field -> ours (same name unless given); fields not listed are refused when they differ from
# the c2i defaults (t2i caption embedder, batch / length limits of the KV cache that do not change the weights)
_ARGS = ("dim", "n_layer", "n_head", "n_kv_head", "multiple_of", "ffn_dim_multiplier", "rope_base", "norm_eps",
         "initializer_range", "token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p",
         "drop_path_rate", "num_classes", "class_dropout_prob", "vocab_size", "cls_token_num", "block_size")
_IGNORED = ("caption_dim", "max_batch_size", "max_seq_len")


def config_from_official(model_args: dict[str, Any]) -> dict[str, Any]:
    """Official ``ModelArgs`` (as a dict) -> `ARConfig` fields. The official model is square-grid only:
    ``grid_size = (sqrt(block_size),) * 2``."""
    if model_args.get("model_type", "c2i") != "c2i":
        raise ValueError(f"model_type {model_args['model_type']!r}: only class-conditional (c2i) models are supported")
    unknown = sorted(set(model_args) - set(_ARGS) - set(_IGNORED) - {"model_type"})
    if unknown:
        raise ValueError(f"unknown ModelArgs fields {unknown}")
    config = {k: model_args[k] for k in _ARGS if k in model_args}
    block = int(config.get("block_size", 256))
    side = math.isqrt(block)
    if side * side != block:
        raise ValueError(f"block_size {block}: the official model needs a square grid")
    config["grid_size"] = (side, side)
    return config


def to_official_config(config) -> dict[str, Any]:
    """`ARConfig` -> official ``ModelArgs`` fields (square grids only)."""
    if config.grid_size is None or config.grid_size[0] != config.grid_size[1]:
        raise ValueError(f"the official model has square 2-D grids only, this one has grid_size {config.grid_size}")
    if config.shuffle_window != 1:
        raise ValueError(f"the official model has no Token-Shuffle, this one has shuffle_window "
                         f"{config.shuffle_window}")
    return {**{k: getattr(config, k) for k in _ARGS}, "model_type": "c2i"}
