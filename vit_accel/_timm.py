"""What token reduction needs from a timm `VisionTransformer`: its layout, and timm's attention cut into pieces.

`describe(model, method)` checks that a model is one the reducers support and returns its `ViTLayout`; anything
else raises a TypeError / ValueError that says what is supported. Supported: `VisionTransformer` and subclasses
that keep its forward (DeiT distilled, ...) whose blocks are timm's pre-norm `Block` with timm's `Attention`
(qkv bias, q/k norm, attention-output norm and gate, fused SDPA or not), LayerScale (DeiT-III, ``init_values``),
class / register / distillation prefix tokens (``reg_tokens``, ``no_embed_class``) and the 'token', 'avg',
'avgmax', 'max' and '' heads. Not supported: parallel or post-norm blocks (`ParallelScalingBlock`,
`ResPostBlock`, ...), other attention classes (`DiffAttention`, RoPE), attention-pool heads ('map', 'prr').

The attention pieces reproduce `timm.layers.Attention.forward` step by step (`split_heads`, then `attend` or
`attention_probs` followed by ``@ v``, then `project`), so a reducer can add a key bias, read the keys or the
attention map, and still compute exactly what timm computes when it changes nothing.

A patched model and its blocks share one bookkeeping object (attribute `INFO_ATTR`, see `last_info`); block 0
resets it at the start of every forward, so ``model.blocks(x)``, ``forward_features`` and
``forward_intermediates`` all work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer

INFO_ATTR = "_vit_accel_info"  # the shared bookkeeping object, on the model and on every block
LAYER_ATTR = "_vit_accel_layer"  # the block's index, on every block
POOLS = ("token", "avg", "avgmax", "max", "")


@dataclass(frozen=True)
class ViTLayout:
    """The facts of a timm ViT that token reduction depends on.

    Attributes:
        num_prefix_tokens: class + register (+ distillation) tokens at the start of the sequence; never reduced.
        grid_size: the patch grid (rows, columns) at the model's configured image size.
    """

    num_prefix_tokens: int
    has_class_token: bool
    num_reg_tokens: int
    has_dist_token: bool
    global_pool: str
    layer_scale: bool
    depth: int
    num_heads: int
    embed_dim: int
    grid_size: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def find_vit(model: nn.Module) -> VisionTransformer:
    """`model` itself if it is a timm VisionTransformer, else its ``.vit`` (e.g. a zoo `AcceleratedViT`)."""
    if isinstance(model, VisionTransformer):
        return model
    inner = getattr(model, "vit", None)
    if isinstance(inner, VisionTransformer):
        return inner
    raise TypeError(f"expected a timm VisionTransformer (or a model with one as `.vit`), got {type(model).__name__}")


def describe(model: nn.Module, method: str) -> ViTLayout:
    """Check that `method` can patch `model` and return its layout; raise TypeError / ValueError otherwise."""
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"{method}: expected a timm VisionTransformer, got {type(model).__name__}")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block:
            raise TypeError(
                f"{method}: block {i} is a {type(block).__name__}; only timm's pre-norm `Block` is supported "
                f"(not ParallelScalingBlock, ResPostBlock or other block classes)"
            )
        if type(block.attn) is not Attention:
            raise TypeError(
                f"{method}: block {i} uses {type(block.attn).__name__}; only timm's `Attention` is supported"
            )
    if model.global_pool not in POOLS or model.attn_pool is not None:
        raise ValueError(
            f"{method}: global_pool={model.global_pool!r} (attention pooling) is not supported; "
            f"use one of {POOLS}"
        )
    if model.grad_checkpointing:
        raise ValueError(f"{method}: turn gradient checkpointing off before patching (model.set_grad_checkpointing"
                         f"(False)); the reducing blocks keep per-forward state that recomputation would corrupt")
    first = model.blocks[0].attn
    return ViTLayout(
        num_prefix_tokens=model.num_prefix_tokens,
        has_class_token=model.cls_token is not None,
        num_reg_tokens=getattr(model, "num_reg_tokens", 0),
        has_dist_token=getattr(model, "dist_token", None) is not None,
        global_pool=model.global_pool,
        layer_scale=not isinstance(model.blocks[0].ls1, nn.Identity),
        depth=len(model.blocks),
        num_heads=first.num_heads,
        embed_dim=model.embed_dim,
        grid_size=tuple(model.patch_embed.grid_size),
    )


def last_info(model: nn.Module) -> Any:
    """The bookkeeping of the last forward of a model patched by a token-reduction method, or None.

    For ToMe a `vit_accel.tome.ToMeInfo` (sizes, sources, r per block), for GTP a `vit_accel.gtp.GTPInfo` (kept /
    propagated indices, token scales, the graph); both carry ``tokens_in`` / ``tokens_out`` per block.
    """
    return getattr(find_vit(model), INFO_ATTR, None)


def reject_mask(attn_mask: torch.Tensor | None, is_causal: bool, method: str) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(f"{method}: attention masks and causal attention cannot follow a changing token set")


# ----------------------------------------------------------------------------------------------------------------
# timm's Attention.forward, in pieces


def split_heads(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v, each (B, H, N, d), for tokens `x` (B, N, C), after `q_norm` / `k_norm`, exactly as timm."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention_probs(attn: Attention, q: torch.Tensor, k: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) (B, H, N, N), with attention dropout; `bias` broadcasts, e.g. (B, 1, 1, N)."""
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return attn.attn_drop(scores.softmax(dim=-1))


def attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention output (B, H, N, d): fused SDPA when `attn` uses it, else the explicit softmax."""
    if attn.fused_attn:
        bias = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                              dropout_p=attn.attn_drop.p if attn.training else 0.0)
    return attention_probs(attn, q, k, bias) @ v


def project(attn: Attention, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Heads (B, H, N, d) -> (B, N, C): merge, output norm, gate (computed from the attention input `x`), proj."""
    B, _, N, _ = out.shape
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


# ----------------------------------------------------------------------------------------------------------------
# the patched model class


class ReducedViT:
    """Mixin for the patched model's class: refuses gradient checkpointing (see `describe`)."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("a token-reduced ViT cannot use gradient checkpointing: its blocks keep per-forward "
                             "state that recomputation would corrupt; vit_accel.unpatch the model first")
        super().set_grad_checkpointing(enable)


@functools.cache
def subclass(mixin: type, base: type) -> type:
    """``class <Mixin><Base>(mixin, base)``, made once per pair, for `Undo.swap_class`."""
    return type(f"{mixin.__name__}{base.__name__}", (mixin, base), {"__module__": mixin.__module__})


def bind(model: VisionTransformer, undo: Any, model_mixin: type, block_cls: type, info: Any) -> None:
    """Patch through `undo`: the model's class (+ `model_mixin`), every block's class, the shared `info`."""
    undo.swap_class(model, subclass(model_mixin, type(model)))
    undo.set_attr(model, INFO_ATTR, info)
    for i, block in enumerate(model.blocks):
        undo.swap_class(block, block_cls)
        undo.set_attr(block, INFO_ATTR, info)
        undo.set_attr(block, LAYER_ATTR, i)
