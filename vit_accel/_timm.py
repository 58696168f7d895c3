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
# tensor elements below which the token gathers keep the plain ops (fewer of them: faster for small models)
SMALL_GATHER = 1 << 15
# B·H·N²·d below which CPU attention with a key bias is faster explicit than fused (measured: d = 16 up to batch 8 of
# 61 tokens; d = 32, 4 heads of 61 tokens; not DeiT-S at batch 1, 6 heads of 189 tokens of 64, where they tie)
SMALL_ATTENTION = 1 << 21


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
    return run(attn.q_norm, q), run(attn.k_norm, k), v


def attention_probs(attn: Attention, q: torch.Tensor, k: torch.Tensor,
                    bias: torch.Tensor | None = None, contiguous_keys: bool = False) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias) (B, H, N, N), with attention dropout; `bias` broadcasts, e.g. (B, 1, 1, N).

    `contiguous_keys` copies k (a strided view of the qkv output) to (B, H, N, d) first, so the batched matmul
    reads it transposed instead of making a transposing copy of kᵀ (for large k only): faster on CPU, and
    bit-identical there except for very short sequences (under about 14 tokens, where the matmul kernel differs in
    the last bit). Off by default: then this is timm's own computation.
    """
    if contiguous_keys and k.numel() >= SMALL_GATHER:
        k = k.contiguous()
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores.add_(bias.to(scores.dtype))  # in place: no second (B, H, N, N) buffer
    return run(attn.attn_drop, scores.softmax(dim=-1))


def attend(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """The attention output (B, H, N, d): fused SDPA when `attn` uses it, else the explicit softmax.

    Exception, for speed: on CPU, with a `bias` (a reducer's key bias: never for a block that changes nothing), a
    problem below `SMALL_ATTENTION` (B·H·N²·d) takes the explicit path, where the fused kernel's fixed cost exceeds
    the work (about 25 % slower for the digits ViT at batch 1 to 8; the two agree to ~1e-6).
    """
    B, H, N, d = q.shape
    if attn.fused_attn and not (bias is not None and q.device.type == "cpu"
                                and B * H * N * k.shape[-2] * d <= SMALL_ATTENTION):
        bias = None if bias is None else bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                              dropout_p=attn.attn_drop.p if attn.training else 0.0)
    return attention_probs(attn, q, k, bias) @ v


def project(attn: Attention, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Heads (B, H, N, d) -> (B, N, C): merge, output norm, gate (computed from the attention input `x`), proj."""
    B, _, N, _ = out.shape
    out = run(attn.norm, out.transpose(1, 2).reshape(B, N, attn.attn_dim))
    if attn.gate is not None:
        out = out * attn.gate(x).sigmoid()
    return run(attn.proj_drop, attn.proj(out))


def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, without the call for a module that returns `x` itself (`nn.Identity`, `nn.Dropout` in eval or
    with p=0) and has no hooks of its own: the same result, without the per-call cost that dominates small models."""
    cls = type(module)
    if ((cls is nn.Identity or (cls is nn.Dropout and (module.p == 0 or not module.training)))
            and not (module._forward_hooks or module._forward_pre_hooks)):
        return x
    return module(x)


# ----------------------------------------------------------------------------------------------------------------
# token gathers


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.gather(1, index[..., None].expand(-1, -1, C))``: rows `index` (B, K) of `x` (B or 1, N, C) -> (B, K, C).

    The same values, copied as whole rows by one ``index_select`` on the flattened batch, which on CPU is several
    times faster than the element-wise gather (whose index tensor is C times larger). A (1, N, C) `x` is shared by
    every image.
    """
    B, K = index.shape
    N, C = x.shape[1], x.shape[2]
    if B * K * C < SMALL_GATHER or not x.is_contiguous():
        return x.expand(B, -1, -1).gather(1, index[..., None].expand(-1, -1, C))
    if x.shape[0] == 1 or B == 1:
        return x[0].index_select(0, index.reshape(-1)).view(B, K, C)
    flat = index + torch.arange(0, B * N, N, device=index.device)[:, None]
    return x.reshape(B * N, C).index_select(0, flat.reshape(-1)).view(B, K, C)


def add_rows_(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out.scatter_add_(1, index[..., None].expand(-1, -1, C), src)`` for `out` (B, N, C), `index` (B, K) and
    `src` (B, K, C): in place, by one ``index_add_`` of whole rows on the flattened batch when `out` is contiguous
    (the same sums, in the same order: duplicates in a row of `index` are added in index order)."""
    B, K = index.shape
    N, C = out.shape[1], out.shape[2]
    if B * K * C < SMALL_GATHER or not (out.is_contiguous() and src.is_contiguous()):
        return out.scatter_add_(1, index[..., None].expand(-1, -1, C), src)
    flat = index + torch.arange(0, B * N, N, device=index.device)[:, None]
    out.view(B * N, C).index_add_(0, flat.reshape(-1), src.reshape(B * K, C))
    return out


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
