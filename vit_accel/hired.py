"""HiRED (Arif et al., AAAI 2025, arXiv 2408.10945): CLS-attention token selection under a budget, for any timm ViT.

HiRED keeps the most attended output tokens of a vision encoder before they reach a language model. Its
model-agnostic core, reproduced here numerically (parity-tested against the official code, MIT,
github.com/hasanar1f/HiRED), is:

* **score**: the CLS query's attention row ``softmax(q_cls k^T / sqrt(d))`` of a block, per head, summed over heads,
  over the patch keys only;
* **single view** (LLaVA-1.5, `num_views=None`): keep the top ``int(N * rate)`` patch tokens of each image by the
  score of the late ("bottom") layer;
* **multi-crop** (LLaVA-Next: per image a global thumbnail, then its tiles): the image budget is
  ``B = int(V * N * rate)`` for its V views; the global view keeps ``min(int(alpha * B), N)`` tokens (top-k of its
  late-layer score); the rest, ``min(B - that, (V - 1) * N)``, is split over the tiles in proportion to where the
  global view's top ``int(N * (1 - alpha))`` tokens by the *early* ("top") layer score fall, floored and clamped to
  N; inside each tile, top-k of its own late-layer score. As in the official code, ``rate == 1`` keeps everything.

Where the global view's tokens "fall": the official code counts them in ``V - 1`` contiguous chunks of the raster
order (row *bands*, not 2-D tiles; see the parity README, finding 8). That is the default here, for parity; pass
`tile_grids` to count them in the 2-D cell of each tile instead.

`select` runs the ViT once on all views (batched) and returns a `HiREDSelection`. `apply` is the in-ViT
adaptation used by `vit_accel.patch(model, "hired", token_budget=...)` (see its docstring); it is not part of
HiRED, which never speeds up the ViT itself.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .patch import Undo

Budget = int | float


@dataclass(frozen=True)
class HiREDSelection:
    """The result of `select` for V views (all images' views, concatenated) of N patch tokens each.

    Attributes:
        mask: ``(V, N)`` bool, the patch tokens kept in each view (raster order).
        budgets: ``(V,)`` int64, tokens kept per view (global view first, then the tile budgets, per image).
        num_views: views per image; ``(1,) * B`` for single-view input.
        features: per image ``(K_i, C)``: the kept patch tokens of the feature layer (what a language model would
            get), views in order, raster order inside a view. LLaVA-Next then stitches the tiles into one grid and
            unpads it; `indices` gives what that needs.
        indices: per image ``(K_i, 2)`` int64: (view within the image, patch index) of each row of `features`.
        cls_attn_top: ``(V, H, T)`` the early layer's CLS attention row over all T keys (prefix tokens first), or
            None for single-view input, which does not use it.
        cls_attn_bottom: ``(V, H, T)`` the same for the late layer (the one that ranks tokens).
    """

    mask: torch.Tensor
    budgets: torch.Tensor
    num_views: tuple[int, ...]
    features: tuple[torch.Tensor, ...]
    indices: tuple[torch.Tensor, ...]
    cls_attn_top: torch.Tensor | None
    cls_attn_bottom: torch.Tensor


def check_model(model: nn.Module) -> None:
    """Raise TypeError unless `model` is a timm VisionTransformer with timm's attention layout, ValueError
    if it has no CLS token."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"HiRED needs a timm VisionTransformer, got {type(model).__name__}")
    if getattr(model, "cls_token", None) is None:
        raise ValueError("HiRED ranks tokens by CLS attention; this model has no CLS token (class_token=False)")
    for i, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if not (hasattr(block, "norm1") and isinstance(getattr(attn, "qkv", None), nn.Linear)
                and all(hasattr(attn, a) for a in ("num_heads", "head_dim", "q_norm", "k_norm"))):
            raise TypeError(f"block {i} ({type(block).__name__}) lacks timm's norm1 + attn.qkv attention layout")


def cls_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The CLS query's attention probabilities in `block` for its input `x` ``(B, T, C)``: ``(B, H, T)``.

    Recomputes ``norm1`` and the key projection (and the query of token 0 only) from the block's own weights:
    O(T * C^2), no T x T matrix. Scaling as in HiRED: ``(q k^T) * head_dim ** -0.5``, then softmax over the keys.
    """
    attn = block.attn
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    h = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])
    k = F.linear(h, weight[width:2 * width], None if bias is None else bias[width:2 * width])
    batch, tokens, _ = h.shape
    q = attn.q_norm(q.view(batch, 1, heads, head_dim).transpose(1, 2))  # (B, H, 1, D)
    k = attn.k_norm(k.view(batch, tokens, heads, head_dim).transpose(1, 2))  # (B, H, T, D)
    logits = (q @ k.transpose(-2, -1)).squeeze(2) * head_dim ** -0.5
    return logits.softmax(dim=-1)


def _layer_index(layer: int, depth: int, what: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{what} must be an int block index, got {layer!r}")
    if not -depth <= layer < depth:
        raise ValueError(f"{what}={layer} is out of range for a ViT with {depth} blocks")
    return layer % depth


def _check_budget(token_budget: Budget, max_tokens: int) -> None:
    """A float is a rate in (0, 1]; an int a token count in [1, max_tokens]."""
    if isinstance(token_budget, bool) or not isinstance(token_budget, (int, float)):
        raise TypeError(f"token_budget must be an int (tokens) or a float (rate), got {token_budget!r}")
    if isinstance(token_budget, float) and not 0.0 < token_budget <= 1.0:
        raise ValueError(f"token_budget rate must be in (0, 1], got {token_budget}")
    if isinstance(token_budget, int) and not 1 <= token_budget <= max_tokens:
        raise ValueError(f"token_budget must be between 1 and the {max_tokens} tokens available, got {token_budget}")


def single_view_budget(token_budget: Budget, num_tokens: int) -> int:
    """Tokens HiRED keeps of one view of `num_tokens` (LLaVA-1.5 rule: ``min(N, int(N * rate))``)."""
    _check_budget(token_budget, num_tokens)
    keep = token_budget if isinstance(token_budget, int) else min(num_tokens, int(num_tokens * token_budget))
    if keep < 1:
        raise ValueError(f"token_budget rate {token_budget} keeps no token of {num_tokens}")
    return keep


def _topk_mask(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(V, N)`` mask of the `keep[v]` highest scores of each row (batched top-k with a per-row k)."""
    order = scores.argsort(dim=-1, descending=True)
    positions = torch.arange(scores.shape[1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return ranks < keep[:, None]


def _tile_of_patch(num_views: Sequence[int], grid: tuple[int, int], tile_grids) -> torch.Tensor:
    """``(G, N)`` int64: the tile each patch position of a global view falls in (0 .. tiles - 1)."""
    rows, cols = grid
    num_tokens = rows * cols
    out = []
    for g, views in enumerate(num_views):
        tiles = views - 1
        if tile_grids is None:  # official: contiguous chunks of the raster order
            if num_tokens % tiles:
                raise ValueError(f"image {g}: {tiles} tiles do not divide the {num_tokens} tokens of a view "
                                 "(the official band rule needs that); pass tile_grids")
            out.append(torch.arange(num_tokens) // (num_tokens // tiles))
        else:
            tr, tc = tile_grids[g]
            if tr * tc != tiles:
                raise ValueError(f"image {g}: tile grid {tr}x{tc} does not match its {tiles} tiles")
            r = torch.arange(rows)[:, None] * tr // rows
            c = torch.arange(cols)[None, :] * tc // cols
            out.append((r * tc + c).reshape(-1))
    return torch.stack(out)


def _multi_view_budgets(top: torch.Tensor, num_views: Sequence[int], token_budget: Budget, alpha: float,
                        grid: tuple[int, int], tile_grids) -> torch.Tensor:
    """Per-view budgets ``(V,)`` of the LLaVA-Next rule; `top` ``(V, N)`` is the early-layer score."""
    num_tokens = top.shape[1]
    full, sub = [], []  # per image: the global view's budget, the tiles' total (-1: keep everything)
    for views in num_views:
        _check_budget(token_budget, views * num_tokens)
        keep_all = token_budget == 1.0 if isinstance(token_budget, float) else token_budget == views * num_tokens
        if keep_all:
            full.append(num_tokens)
            sub.append(-1)
            continue
        total = token_budget if isinstance(token_budget, int) else int(views * num_tokens * token_budget)
        full.append(min(int(total * alpha), num_tokens))
        sub.append(min(total - full[-1], (views - 1) * num_tokens))
    spread_k = int(num_tokens * (1 - alpha))
    if spread_k < 1 and max(sub) > 0:
        raise ValueError(f"alpha={alpha} leaves no global-view token to spread the tile budget by")
    # where the global views' top tokens by the early layer fall, counted per tile
    starts = [0, *accumulate(num_views)][:-1]
    device = top.device
    spread = _topk_mask(top[starts], torch.full((len(starts),), spread_k, device=device))
    tile = _tile_of_patch(num_views, grid, tile_grids).to(device)
    counts = torch.zeros(len(starts), max(num_views) - 1, dtype=torch.int64, device=device)
    counts = counts.scatter_add_(1, tile, spread.long())
    share = counts / counts.sum(dim=1, keepdim=True)  # float32, as the official int64 / int64
    sub_t = torch.tensor(sub, device=device)[:, None]
    tiles = torch.clamp((share * sub_t).int(), max=num_tokens)  # floored like the official `.int()`
    tiles = torch.where(sub_t > 0, tiles, torch.where(sub_t < 0, num_tokens, 0))
    budgets = []
    for g, views in enumerate(num_views):
        budgets += [full[g], *tiles[g, :views - 1].tolist()]
    return torch.tensor(budgets, dtype=torch.int64, device=device)


def _run(model: nn.Module, images: torch.Tensor, layers: dict[str, int]):
    """Embed and run the blocks up to the last one needed; returns the CLS attention rows and the features."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    found: dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.blocks[:max(layers.values()) + 1]):
        for name in ("top", "bottom"):
            if layers.get(name) == i:
                found[name] = cls_attention(block, x)
        x = block(x)
        if layers["feature"] == i:
            found["feature"] = x[:, model.num_prefix_tokens:]
    return found


def select(model: nn.Module, images: torch.Tensor, token_budget: Budget = 0.2, *, alpha: float = 0.5,
           num_views: Sequence[int] | None = None, top_layer: int = 0, bottom_layer: int = -2,
           feature_layer: int = -2, tile_grids: Sequence[tuple[int, int]] | None = None) -> HiREDSelection:
    """HiRED token selection with a timm ViT (CLS token required).

    Args:
        model: a timm VisionTransformer; `images` must already be normalised the way it expects.
        images: ``(V, C, H, W)`` views, or ``(B, V, C, H, W)`` (B images of V views each).
        token_budget: a float is HiRED's ``token_budget_rate`` in (0, 1] (of all the image's views' tokens); an
            int is the number of tokens kept per image.
        alpha: share of a multi-crop image's budget given to its global view, in [0, 1); unused for single views.
        num_views: views per image for a flat ``(V, C, H, W)`` input, each image's global thumbnail first, then its
            tiles (LLaVA-Next); None means every view is its own image (LLaVA-1.5).
        top_layer: block whose CLS attention spreads the budget over the tiles (HiRED: 0).
        bottom_layer: block whose CLS attention ranks the tokens (HiRED: 22 of 24, the penultimate block).
        feature_layer: block whose output tokens are returned as `features` (LLaVA: the penultimate block).
        tile_grids: per image (rows, cols) of its tiles: count the budget spread in 2-D tiles instead of the
            official row bands.
    """
    check_model(model)
    if images.dim() == 5:
        if num_views is not None:
            raise ValueError("num_views is implied by a (B, V, C, H, W) input; pass flat views to give it")
        num_views = (images.shape[1],) * images.shape[0]
        images = images.flatten(0, 1)
    if images.dim() != 4:
        raise ValueError(f"images must be (V, C, H, W) or (B, V, C, H, W), got shape {tuple(images.shape)}")
    multi = num_views is not None
    num_views = tuple(num_views) if multi else (1,) * images.shape[0]
    if sum(num_views) != images.shape[0]:
        raise ValueError(f"num_views {num_views} sums to {sum(num_views)}, but there are {images.shape[0]} views")
    if multi and min(num_views) < 2:
        raise ValueError("a multi-crop image needs a global view and at least one tile; use num_views=None for "
                         "single views")
    if multi and not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if tile_grids is not None and (not multi or len(tile_grids) != len(num_views)):
        raise ValueError("tile_grids needs multi-crop input and one (rows, cols) per image")
    depth = len(model.blocks)
    layers = {"bottom": _layer_index(bottom_layer, depth, "bottom_layer"),
              "feature": _layer_index(feature_layer, depth, "feature_layer")}
    if multi:
        layers["top"] = _layer_index(top_layer, depth, "top_layer")
    found = _run(model, images, layers)
    prefix = model.num_prefix_tokens
    bottom = found["bottom"][:, :, prefix:].sum(dim=1)  # (V, N), summed over heads
    num_tokens = bottom.shape[1]
    if math.prod(model.patch_embed.grid_size) != num_tokens:
        raise ValueError(f"images give {num_tokens} patch tokens, the model's grid {model.patch_embed.grid_size} "
                         "expects another count: use the model's image size")
    if multi:
        top = found["top"][:, :, prefix:].sum(dim=1)
        budgets = _multi_view_budgets(top, num_views, token_budget, alpha, model.patch_embed.grid_size, tile_grids)
    else:
        budgets = torch.full((len(num_views),), single_view_budget(token_budget, num_tokens), dtype=torch.int64,
                             device=bottom.device)
    mask = _topk_mask(bottom, budgets)
    device = mask.device
    image_of_view = torch.arange(len(num_views), device=device).repeat_interleave(
        torch.tensor(num_views, device=device))
    sizes = torch.zeros(len(num_views), dtype=torch.int64, device=device).index_add_(
        0, image_of_view, mask.sum(1)).tolist()
    view, patch = mask.nonzero(as_tuple=True)
    first_view = torch.tensor([0, *accumulate(num_views)][:-1], device=device)[image_of_view]
    indices = torch.stack([view - first_view[view], patch], dim=1)
    return HiREDSelection(
        mask=mask, budgets=budgets, num_views=num_views,
        features=tuple(found["feature"][mask].split(sizes)), indices=tuple(indices.split(sizes)),
        cls_attn_top=found.get("top"), cls_attn_bottom=found["bottom"],
    )


# ----------------------------------------------------------------------------------------------------------------
# In-ViT adaptation: `vit_accel.patch(model, "hired", token_budget=...)`


class _HiREDBlock:
    """Mixin for a timm block: after the block, keep the prefix tokens and the top-k patch tokens by this block's
    CLS attention (HiRED's single-view rule), in their original order. Set by `apply`: `hired_budget`,
    `hired_prefix`."""

    hired_budget: Budget
    hired_prefix: int

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("a HiRED-patched ViT drops tokens, so it cannot take attn_mask / is_causal")
        prefix = self.hired_prefix
        num_tokens = x.shape[1] - prefix
        keep = single_view_budget(self.hired_budget, num_tokens)
        if keep == num_tokens:
            return super().forward(x)
        scores = cls_attention(self, x)[:, :, prefix:].sum(dim=1)  # (B, N)
        x = super().forward(x)
        index = scores.topk(keep, dim=1).indices.sort(dim=1).values + prefix
        patches = x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))
        return torch.cat([x[:, :prefix], patches], dim=1)


@functools.cache
def _hired_class(block_cls: type) -> type:
    return type(f"HiRED{block_cls.__name__}", (_HiREDBlock, block_cls), {})


def apply(model: nn.Module, undo: Undo, token_budget: Budget, layer: int = -2) -> None:
    """Patch a timm ViT so that block `layer` drops patch tokens by HiRED's score (an in-ViT adaptation).

    What the patched model does: blocks before `layer` are unchanged. Block `layer` computes its CLS attention row
    (`cls_attention`, summed over heads, patch keys only), runs as usual, and then keeps the prefix tokens (CLS,
    registers) and the `keep` patch tokens with the highest score, in raster order; the other patch tokens are
    dropped (not fused), so every later block and the head's pooling see only the kept tokens. ``keep`` is
    `token_budget` if an int, ``min(N, int(N * rate))`` for a float rate (HiRED's LLaVA-1.5 rule). With
    ``keep == N`` the block is exactly the original (no score is computed). Default layer: the penultimate block,
    where HiRED ranks tokens.
    """
    check_model(model)
    block = model.blocks[_layer_index(layer, len(model.blocks), "layer")]
    num_tokens = math.prod(model.patch_embed.grid_size)
    single_view_budget(token_budget, num_tokens)  # validates
    undo.swap_class(block, _hired_class(type(block)))
    undo.set_attr(block, "hired_budget", token_budget)
    undo.set_attr(block, "hired_prefix", model.num_prefix_tokens)
