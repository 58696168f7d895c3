"""ToMe: Token Merging (Bolya et al., ICLR 2023, https://arxiv.org/abs/2210.09461) for timm ViTs.

``vit_accel.patch(model, "tome", r=8)``: between the attention and the MLP of every block, the `r` most similar
token pairs are merged. Tokens are split by alternation into sets A (even positions) and B (odd positions);
similarity is the cosine of the attention keys averaged over heads; each A token picks its most similar B token and
the `r` A tokens with the best match are merged into it (size-weighted mean); at most half of the reducible tokens go
per block. Merged tokens carry a size (how many input tokens they hold): with `prop_attn`, log(size) is added to the
attention logits of their keys (proportional attention), and 'avg' / 'avgmax' heads average size-weighted.

Same numerics as the official code (facebookresearch/ToMe, ``tome.patch.timm``; checked against its outputs), with
these differences on purpose:
* LayerScale (``ls1`` / ``ls2``) is applied, so DeiT-III / DINOv2-style models are exact at r=0 (the official
  block drops it); q/k norm, attention-output norm and gate, and fused SDPA are kept as timm has them.
* every prefix token (class, registers, distillation) is protected and stays first, in order; the A/B alternation
  still runs over sequence positions, so with a class token alone the merges are the official ones.
* unmerged A tokens are always kept in sequence order (the official code sorts them only with a class token).
* 'avg' / 'avgmax' heads pool size-weighted (the official timm patch averages merged tokens as if of size 1).

Token order after each block: [prefix tokens, unmerged A tokens, B tokens], as official. After a forward,
`vit_accel.last_info(model)` is a `ToMeInfo`: ``size`` (B, N, 1), ``source`` (B, N, N0) with ``trace_source``, the
r applied per block and the token counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from timm.models.vision_transformer import Block, VisionTransformer

from . import _timm
from ._timm import INFO_ATTR, LAYER_ATTR

__all__ = ["Matching", "ToMeBlock", "ToMeInfo", "apply", "bipartite_soft_matching", "parse_r"]


def parse_r(depth: int, r: int | Sequence[int] | tuple[int, float], inflect: float | None = None) -> list[int]:
    """The number of tokens to merge in each of `depth` blocks.

    `r` is an int (the same in every block), a list of ints (per block, padded with zeros), or a tuple
    ``(r, inflect)`` as in ToMe's ``parse_r``: the schedule runs linearly from ``int(r·(1−inflect))`` to
    ``2r − int(r·(1−inflect))`` (inflect −1: decreasing, 0: constant, +1: increasing). `inflect` may also be given
    on its own (JSON configs cannot tell a tuple from a list).
    """
    if isinstance(r, tuple):
        if inflect is not None or len(r) != 2:
            raise ValueError(f"r as a tuple must be (r, inflect), with no separate inflect; got r={r!r}")
        r, inflect = r
    if isinstance(r, (list, tuple)):
        if inflect is not None:
            raise ValueError("inflect applies to an int r, not to a per-block list")
        if len(r) > depth:
            raise ValueError(f"r: {len(r)} per-block values for a model with {depth} blocks")
        schedule = list(r) + [0] * (depth - len(r))
    else:
        _check_int(r, "r")
        inflect = 0.0 if inflect is None else inflect
        if isinstance(inflect, bool) or not isinstance(inflect, (int, float)) or not -1.0 <= inflect <= 1.0:
            raise ValueError(f"inflect must be a number in [-1, 1], got {inflect!r}")
        low = int(r * (1.0 - inflect))
        step = (2 * r - 2 * low) / (depth - 1) if depth > 1 else 0.0
        schedule = [int(low + step * i) for i in range(depth)]
    for i, value in enumerate(schedule):
        _check_int(value, f"r[{i}]")
    return schedule


def _check_int(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass
class Matching:
    """The merge decided by `bipartite_soft_matching` for (B, N, ·) tokens.

    Positions after the `num_protected` prefix tokens alternate between A (even sequence position) and B (odd);
    `src_idx` (B, r) are the A tokens merged into B tokens `dst_idx` (B, r), `unm_idx` (B, |A| − r) the A tokens kept,
    in sequence order; all three index into A or B.
    """

    num_protected: int
    unm_idx: torch.Tensor
    src_idx: torch.Tensor
    dst_idx: torch.Tensor
    _positions: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False,
                                                                      compare=False)

    def positions(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For (B, `num_tokens`, ·) tokens: the sequence positions of the output [prefix, unmerged A, B] (B, N − r)
        and of the merged A tokens (B, r). Computed once per matching and token count."""
        if num_tokens not in self._positions:
            p, idx = self.num_protected, self.unm_idx
            first = p % 2  # as `_split`: A starts at the first even position after the prefix
            batch, device = idx.shape[0], idx.device
            num_b = (num_tokens - p + first) // 2
            keep = torch.cat([torch.arange(p, device=device).expand(batch, p), p + first + 2 * idx,
                              (p + 1 - first + 2 * torch.arange(num_b, device=device)).expand(batch, num_b)], dim=1)
            self._positions[num_tokens] = keep, p + first + 2 * self.src_idx
        return self._positions[num_tokens]

    def merge(self, x: torch.Tensor, reduce: Literal["sum", "amax", "mean"] = "sum") -> torch.Tensor:
        """(B, N, C) -> (B, N − r, C): [prefix, unmerged A, B with the merged A tokens reduced into them]."""
        p = self.num_protected
        C = x.shape[-1]
        if reduce == "sum" and x.numel() >= _timm.SMALL_GATHER:
            # the same sums by two row gathers and one in-place add: no split copies, no cat (large inputs; for
            # small ones the fewer ops below are faster)
            keep, src_pos = self.positions(x.shape[1])
            out = _timm.gather_rows(x, keep)
            return _timm.add_rows_(out, self.dst_idx + (p + self.unm_idx.shape[1]), _timm.gather_rows(x, src_pos))
        a, b = _split(x[:, p:], p)
        unm = a.gather(1, self.unm_idx[..., None].expand(-1, -1, C))
        src = a.gather(1, self.src_idx[..., None].expand(-1, -1, C))
        b = b.scatter_reduce(1, self.dst_idx[..., None].expand(-1, -1, C), src, reduce=reduce)
        return torch.cat([x[:, :p], unm, b], dim=1)


def _split(tokens: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets A (even sequence positions) and B (odd) of tokens that start at sequence position `offset`."""
    first = offset % 2
    return tokens[:, first::2], tokens[:, 1 - first::2]


def bipartite_soft_matching(metric: torch.Tensor, r: int, num_protected: int) -> Matching:
    """Decide which `r` tokens to merge from `metric` (B, N, C) (ToMe: keys averaged over heads).

    `r` must be at most ``(N − num_protected) // 2`` (callers cap it, as ToMe does).
    """
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = _split(metric[:, num_protected:], num_protected)
        node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
        order = node_max.argsort(dim=-1, descending=True)
        src_idx = order[:, :r]
        return Matching(num_protected, order[:, r:].sort(dim=-1).values, src_idx, node_idx.gather(1, src_idx))


def merge_weighted(matching: Matching, x: torch.Tensor,
                   size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge of `x` (B, N, C) with token sizes (B, N, 1): returns the merged tokens and sizes."""
    merged = matching.merge(x * size, "sum")
    size = matching.merge(size, "sum")
    return (merged / size).to(x.dtype), size


@dataclass
class ToMeInfo:
    """ToMe bookkeeping shared by a patched model and its blocks (`vit_accel.last_info(model)`).

    Set when patching: `schedule` (r requested per block), `prop_attn`, `trace_source`, `num_prefix_tokens`.
    Filled by every forward:
        size: (B, N, 1) float32, input tokens per output token (prefix tokens count 1); None until a merge happens.
        source: (B, N, N0) float 0/1, which input tokens each output token holds (with `trace_source`).
        r_applied, tokens_in, tokens_out: per block.
    """

    schedule: list[int]
    prop_attn: bool
    trace_source: bool
    num_prefix_tokens: int
    size: torch.Tensor | None = None
    source: torch.Tensor | None = None
    r_applied: list[int] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)

    def start(self, x: torch.Tensor) -> None:
        """Reset at the input of block 0, (B, N0, C)."""
        self.size = self.source = None
        if self.trace_source:
            B, N, _ = x.shape
            self.source = torch.eye(N, device=x.device, dtype=torch.float32).expand(B, N, N)
        self.r_applied, self.tokens_in, self.tokens_out = [], [], []


class ToMeBlock(Block):
    """timm `Block` that merges tokens between attention and MLP (proportional attention on the keys' sizes)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        _timm.reject_mask(attn_mask, is_causal, "tome")
        info: ToMeInfo = getattr(self, INFO_ATTR)
        layer: int = getattr(self, LAYER_ATTR)
        if layer == 0:
            info.start(x)
        p = info.num_prefix_tokens
        bias = None
        if info.prop_attn and info.size is not None:
            bias = info.size.log()[:, None, None, :, 0]  # (B, 1, 1, N): log size on each key
        h = self.norm1(x)
        q, k, v = _timm.split_heads(self.attn, h)
        out = _timm.project(self.attn, _timm.attend(self.attn, q, k, v, bias), h)
        x = x + _timm.run(self.drop_path1, _timm.run(self.ls1, out))

        info.tokens_in.append(x.shape[1])
        r = min(info.schedule[layer], (x.shape[1] - p) // 2)
        if r > 0:
            matching = bipartite_soft_matching(k.mean(dim=1), r, p)
            if info.source is not None:
                info.source = matching.merge(info.source, "amax")
            size = info.size if info.size is not None else x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.float32)
            x, info.size = merge_weighted(matching, x, size)
        info.r_applied.append(r)
        info.tokens_out.append(x.shape[1])
        return x + _timm.run(self.drop_path2, _timm.run(self.ls2, self.mlp(self.norm2(x))))


class ToMeViT(_timm.ReducedViT):
    """Model-class mixin: size-weighted 'avg' / 'avgmax' pooling of merged tokens."""

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        size = getattr(self, INFO_ATTR).size
        if pool_type not in ("avg", "avgmax") or size is None:
            return super().pool(x, pool_type)
        if size.shape[:2] != x.shape[:2]:
            raise ValueError(f"tome: features with {x.shape[1]} tokens do not come from the last forward "
                             f"({size.shape[1]} tokens); pool them in the same forward")
        start = 0 if self.pool_include_prefix else self.num_prefix_tokens
        tokens, weight = x[:, start:], size[:, start:].to(x.dtype)
        mean = (tokens * weight).sum(dim=1) / weight.sum(dim=1)
        return mean if pool_type == "avg" else 0.5 * (tokens.amax(dim=1) + mean)


def apply(model: VisionTransformer, undo, *, r: int | Sequence[int] | tuple[int, float] = 0,
          inflect: float | None = None, prop_attn: bool = True, trace_source: bool = False) -> None:
    """Patch `model` with ToMe (through `undo`; see `vit_accel.patch`).

    Args:
        r: tokens merged per block: an int, a per-block list, or ``(r, inflect)`` (see `parse_r`). Per block, at
            most half of the non-prefix tokens are merged (ToMe's cap); a value no block could apply is an error.
        inflect: schedule shape for an int `r` (ToMe's inflection; −1 = the paper's decreasing schedule).
        prop_attn: proportional attention (log size on the logits); ToMe recommends it for off-the-shelf models and
            turns it off for training and for off-the-shelf MAE.
        trace_source: record which input tokens every output token holds (`ToMeInfo.source`, O(N²) memory).
    """
    layout = _timm.describe(model, "tome")
    schedule = parse_r(layout.depth, r, inflect)
    cap = layout.num_patches // 2
    if max(schedule, default=0) > cap:
        raise ValueError(f"tome: r={max(schedule)} is more than any block can merge: at most half of the "
                         f"{layout.num_patches} image tokens ({cap}) go in one block")
    for name, flag in (("prop_attn", prop_attn), ("trace_source", trace_source)):
        if not isinstance(flag, bool):
            raise TypeError(f"tome: {name} must be a bool, got {type(flag).__name__}")
    info = ToMeInfo(schedule, prop_attn, trace_source, layout.num_prefix_tokens)
    _timm.bind(model, undo, ToMeViT, ToMeBlock, info)
