"""GTP-ViT: graph-based token propagation (Xu et al., WACV 2024, https://arxiv.org/abs/2311.03035) for timm ViTs.

``vit_accel.patch(model, "gtp", num_prop=8)``: between the attention and the MLP of every block, the `num_prop`
least significant image tokens are dropped after *propagating* their features into their neighbours among the kept
tokens: ``x_kept += alpha · Â[kept, prop] @ x_prop``. Significance comes from the (sparsified) attention map; the
official ``MixedAttnMax`` is ``max_h A[h, i, i] · max_h Σ_q A[h, q, i]`` (self-attention times attention received,
each maximised over heads). The graph Â is built once per forward from the block-0 input: spatial 8-neighbours on
the patch grid, and/or each token's `num_neighbours` most cosine-similar tokens ('Semantic'), united for 'Mixed',
normalised D^-1/2 A D^-1/2 with row degrees, and afterwards only sub-indexed (kept × kept), never renormalised.
With `token_scale`, each token carries a scale (1 + the mass propagated into it) whose log is added to the
attention logits of its key. `sparsity` θ < 1 zeroes, per image and head, every attention weight below the
⌊N²(1−θ)⌋-th smallest (without renormalising) in every block, before selection and before ``@ v``.

Same numerics as the official code (Ackesnal/GTP-ViT ``models_v3.py``, checked against its outputs), except:
* ``num_prop=0`` leaves a block exactly as timm has it (the official code then keeps only the class token);
* every prefix token (class, registers, distillation) is protected, not only the class token; for models without
  a class token, 'Semantic' keeps exactly `num_neighbours` neighbours (the official count is one more there);
* the semantic graph excludes each token itself explicitly (official: subtracts the identity, which goes wrong
  only when another token is more similar to a token than the token itself);
* the spatial graph uses the real patch grid (official: assumes a square); LayerScale, q/k norm, attention-output
  norm and gate come from the timm block, so the model's own LayerNorm eps is used. (Official GTP builds its own
  blocks with eps 1e-5 unless given ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``; compare with that.)
* pure pruning (``propagation="None"``) keeps all token scales at 1 (official: fails if token_scale is set).

Token order after each block: [prefix tokens, kept tokens in descending significance], as official. After a forward
`vit_accel.last_info(model)` is a `GTPInfo` (kept / propagated indices per block, token scales, the graph).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from timm.layers import PatchDropout
from timm.models.vision_transformer import Block, VisionTransformer

from . import _timm
from ._timm import INFO_ATTR, LAYER_ATTR

__all__ = ["GRAPH_TYPES", "GTPBlock", "GTPInfo", "SELECTIONS", "apply", "build_graph", "propagate", "sparsify"]

GRAPH_TYPES = ("Mixed", "Spatial", "Semantic")
PROPAGATIONS = ("GraphProp", "None")


# Significance of each image token from the attention map; `diag` and `received` are (B, H, M):
# A[h, i, i] and Σ_q A[h, q, i] (every query, prefix included), `cls` (B, H, M) is A[h, 0, i].
def _max(t: torch.Tensor) -> torch.Tensor:
    return t.max(dim=1)[0]


SELECTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "MixedAttnMax": lambda diag, received, cls: _max(diag) * _max(received),
    "MixedAttnMean": lambda diag, received, cls: diag.mean(dim=1) * received.mean(dim=1),
    "DiagAttnMax": lambda diag, received, cls: _max(diag),
    "DiagAttnMean": lambda diag, received, cls: diag.mean(dim=1),
    "IMGAttnMax": lambda diag, received, cls: _max(received),
    "IMGAttnMean": lambda diag, received, cls: received.mean(dim=1),
    "CLSAttnMax": lambda diag, received, cls: _max(cls),
    "CLSAttnMean": lambda diag, received, cls: cls.mean(dim=1),
}


def token_scores(probs: torch.Tensor, num_prefix: int, selection: str) -> torch.Tensor:
    """Significance (B, M) of the M image tokens from attention probabilities (B, H, N, N)."""
    p = num_prefix
    diag = torch.diagonal(probs, dim1=-2, dim2=-1)[:, :, p:]
    received = probs[:, :, :, p:].sum(dim=-2)
    return SELECTIONS[selection](diag, received, probs[:, :, 0, p:])


def sparsify(probs: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero, per (image, head), the attention weights (B, H, N, N) below the ⌊N²(1−sparsity)⌋-th smallest."""
    B, H, N, _ = probs.shape
    k = int(N * N * (1 - sparsity))
    if k < 1:
        return probs
    threshold = torch.kthvalue(probs.reshape(B, H, -1), k, dim=-1, keepdim=True)[0].unsqueeze(-1)
    return probs.masked_fill(probs < threshold, 0.0)


ATTENTION_CHUNK = 1 << 22  # probabilities per chunk (b·H·N·N): 16 MiB in float32 (18 DeiT-S images)


def attention_with_scores(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                          sparsity: float, selection: tuple[int, str] | None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Explicit attention (B, H, N, d) and, for ``selection = (num_prefix, name)``, the token scores (B, M).

    The probabilities are needed in full (the scores read their diagonal and column sums), so they are formed some
    images at a time: memory stays bounded for any batch (a batch-256 DeiT-S map would be 227 MiB per block). Per
    image the numbers are those of one full-batch pass.
    """
    B, H, N, _ = q.shape
    step = max(1, ATTENTION_CHUNK // (H * N * N))
    in_place = not torch.is_grad_enabled()  # `out=` writes have no autograd
    out = v.new_empty(q.shape[:-1] + v.shape[-1:]) if in_place else []
    scores = [] if selection is not None else None
    for start in range(0, B, step):
        part = slice(start, start + step)
        probs = _timm.attention_probs(attn, q[part], k[part], None if bias is None else bias[part],
                                      contiguous_keys=True)
        if sparsity < 1:
            probs = sparsify(probs, sparsity)
        if in_place:
            torch.matmul(probs, v[part], out=out[part])
        else:
            out.append(probs @ v[part])
        if scores is not None:
            scores.append(token_scores(probs, *selection))
    return out if in_place else torch.cat(out), None if scores is None else torch.cat(scores)


@functools.lru_cache(maxsize=8)
def spatial_graph(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(M, M) 0/1 adjacency of the 8-neighbourhood on a (rows, cols) patch grid in raster order, no self loops.

    Cached per grid and device: treat the result as read-only.
    """
    rows, cols = grid
    ids = torch.arange(rows * cols, device=device)
    r, c = ids // cols, ids % cols
    near = ((r[:, None] - r[None, :]).abs() <= 1) & ((c[:, None] - c[None, :]).abs() <= 1)
    return (near & ~torch.eye(rows * cols, dtype=torch.bool, device=device)).float()


def semantic_graph(tokens: torch.Tensor, num_neighbours: int) -> torch.Tensor:
    """(B, M, M) 0/1: each of the M tokens (B, M, C) linked to its `num_neighbours` most cosine-similar others."""
    M = tokens.shape[1]
    normed = tokens / tokens.norm(dim=-1, keepdim=True)
    cossim = normed @ normed.transpose(-1, -2)
    # the (M − K)-th smallest similarity (official: kthvalue) is the (K + 1)-th largest: the same value, and topk is
    # faster for small K
    threshold = cossim.topk(num_neighbours + 1, dim=-1).values[..., -1:]
    eye = torch.eye(M, dtype=torch.bool, device=tokens.device)
    return ((cossim >= threshold) & ~eye).float()


def build_graph(tokens: torch.Tensor, graph_type: str, num_neighbours: int, grid: tuple[int, int]) -> torch.Tensor:
    """GTP's graph over the image tokens (B, M, C): D^-1/2 A D^-1/2 with row degrees, (B, M, M) or (1, M, M)."""
    if graph_type == "Semantic":
        adjacency = semantic_graph(tokens, num_neighbours)
    else:
        adjacency = spatial_graph(grid, tokens.device)[None]
        if graph_type == "Mixed":
            adjacency = torch.maximum(semantic_graph(tokens, num_neighbours), adjacency)
    degree = adjacency.sum(dim=-1)
    d = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
    return d[:, :, None] * adjacency * d[:, None, :]


def propagate(x: torch.Tensor, graph: torch.Tensor | None, kept: torch.Tensor, prop: torch.Tensor, alpha: float,
              num_prefix: int, token_scales: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Drop the tokens `prop` (B, P) of `x` (B, N, C) into the kept ones `kept` (B, K) (positions in `x`).

    With a `graph` (B or 1, M, M) over the M = N − num_prefix image tokens, each kept token receives
    ``alpha · Σ_j Â[kept, prop_j] x_prop_j`` and its token scale the same share of the dropped scales; without one
    the dropped tokens vanish. Returns the tokens [prefix, kept] (B, num_prefix + K, C), the kept × kept graph and the
    token scales (B, num_prefix + K) (None stays None).
    """
    p = num_prefix
    B, _, C = x.shape
    # large inputs: one row gather of [prefix, kept] (no cat copy); small ones: as few ops as possible. Either way
    # the propagated features are then added in place to the kept rows.
    if p == 0:
        out = _timm.gather_rows(x, kept)
    elif x.numel() < _timm.SMALL_GATHER:
        out = torch.cat([x[:, :p], x.gather(1, kept[..., None].expand(-1, -1, C))], dim=1)
    else:
        out = _timm.gather_rows(x, torch.cat([torch.arange(p, device=x.device).expand(B, p), kept], dim=1))
    if graph is not None:
        kept_img, prop_img = kept - p, prop - p
        K = kept.shape[1]
        rows = _timm.gather_rows(graph, kept_img)  # (B, K, M)
        weight = rows.gather(2, prop_img[:, None, :].expand(-1, K, -1))  # (B, K, P)
        graph = rows.gather(2, kept_img[:, None, :].expand(-1, K, -1))  # (B, K, K)
        x_prop = _timm.gather_rows(x, prop)
        out[:, p:].add_(alpha * (weight.to(x.dtype) @ x_prop))
        if token_scales is not None:
            scales = token_scales[:, p:]
            spread = weight @ scales.gather(1, prop_img)[..., None]
            token_scales = torch.cat([token_scales[:, :p], scales.gather(1, kept_img) + alpha * spread[..., 0]], 1)
    return out, graph, token_scales


@dataclass
class GTPInfo:
    """GTP settings and bookkeeping shared by a patched model and its blocks (`vit_accel.last_info(model)`).

    Filled by every forward:
        graph: (B or 1, M0, M0) the normalised graph built from the block-0 input (None without propagation).
        token_scales: (B, N) float32 scales of the current tokens, prefix included; None while all are 1.
        kept_idx, prop_idx: per reducing block, (B, K) / (B, P) positions in that block's sequence, in descending
            significance (as official ``select``).
        tokens_in, tokens_out: per block.
    Traced from kept_idx / prop_idx when first read (not in the forward):
        token_ids: (B, N) the input position of every current token (0 = first prefix token).
        prop_ids: per reducing block, the dropped tokens as sorted input positions.
    """

    num_prop: list[int]
    num_neighbours: int
    sparsity: float
    alpha: float
    graph_type: str
    propagation: str
    selection: str
    token_scale: bool
    num_prefix_tokens: int
    grid_size: tuple[int, int]
    graph: torch.Tensor | None = None
    token_scales: torch.Tensor | None = None
    kept_idx: list[torch.Tensor] = field(default_factory=list)
    prop_idx: list[torch.Tensor] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    current_graph: torch.Tensor | None = field(default=None, repr=False)
    input_shape: tuple[int, int, torch.device] | None = field(default=None, repr=False)  # (B, N0, device)
    traced: tuple[torch.Tensor, list[torch.Tensor]] | None = field(default=None, repr=False)

    @property
    def token_ids(self) -> torch.Tensor | None:
        return None if self.input_shape is None else self._trace()[0]

    @property
    def prop_ids(self) -> list[torch.Tensor]:
        return [] if self.input_shape is None else self._trace()[1]

    def _trace(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Follow the input positions through the kept / propagated indices of the blocks run so far."""
        if self.traced is None:
            B, N, device = self.input_shape
            p = self.num_prefix_tokens
            ids, prop_ids = torch.arange(N, device=device).expand(B, N), []
            for kept, prop in zip(self.kept_idx, self.prop_idx):
                prop_ids.append(ids.gather(1, prop).sort(dim=1).values)
                ids = torch.cat([ids[:, :p], ids.gather(1, kept)], dim=1)
            self.traced = ids, prop_ids
        return self.traced

    def start(self, x: torch.Tensor) -> None:
        """Reset at the input of block 0, (B, N0, C), and build the graph from its image tokens."""
        B, N, _ = x.shape
        self.graph = None
        if self.propagation == "GraphProp" and any(self.num_prop):
            num_patches = N - self.num_prefix_tokens
            if self.graph_type != "Spatial" and self.num_neighbours >= num_patches:
                raise ValueError(f"gtp: num_neighbours={self.num_neighbours} needs more than {num_patches} "
                                 f"image tokens")
            grid = self.grid_size if self.graph_type == "Semantic" else self._grid(num_patches)
            self.graph = build_graph(x[:, self.num_prefix_tokens:], self.graph_type, self.num_neighbours, grid)
        self.current_graph = self.graph
        self.token_scales = None
        self.input_shape, self.traced = (B, N, x.device), None
        self.kept_idx, self.prop_idx, self.tokens_in, self.tokens_out = [], [], [], []

    def _grid(self, num_patches: int) -> tuple[int, int]:
        """The patch grid of the input: the model's, else a square one (inputs of another size)."""
        if num_patches == self.grid_size[0] * self.grid_size[1]:
            return self.grid_size
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(f"gtp: {num_patches} image tokens do not form the {self.grid_size} patch grid or a "
                             f"square one; the spatial graph needs the grid")
        return side, side


class GTPBlock(Block):
    """timm `Block` that propagates its least significant tokens into their graph neighbours before the MLP."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        _timm.reject_mask(attn_mask, is_causal, "gtp")
        info: GTPInfo = getattr(self, INFO_ATTR)
        layer: int = getattr(self, LAYER_ATTR)
        if layer == 0:
            info.start(x)
        p, num_prop = info.num_prefix_tokens, info.num_prop[layer]
        if num_prop >= x.shape[1] - p:
            raise ValueError(f"gtp: block {layer} would drop {num_prop} of its {x.shape[1] - p} image tokens; "
                             f"at least one must stay (lower num_prop or use larger inputs)")
        bias = None if info.token_scales is None else info.token_scales.log()[:, None, None, :]
        h = self.norm1(x)
        q, k, v = _timm.split_heads(self.attn, h)
        scores = None
        if num_prop > 0 or info.sparsity < 1:
            out, scores = attention_with_scores(self.attn, q, k, v, bias, info.sparsity,
                                                (p, info.selection) if num_prop > 0 else None)
        else:
            out = _timm.attend(self.attn, q, k, v, bias)
        x = x + _timm.run(self.drop_path1, _timm.run(self.ls1, _timm.project(self.attn, out, h)))

        info.tokens_in.append(x.shape[1])
        if num_prop > 0:
            order = torch.argsort(scores, dim=1, descending=True) + p
            kept, prop = order[:, :-num_prop], order[:, -num_prop:]
            scales = info.token_scales
            if scales is None and info.token_scale and info.current_graph is not None:
                scales = x.new_ones(x.shape[:2], dtype=torch.float32)
            x, info.current_graph, info.token_scales = propagate(x, info.current_graph, kept, prop, info.alpha, p,
                                                                 scales)
            info.kept_idx.append(kept)
            info.prop_idx.append(prop)
            info.traced = None
        info.tokens_out.append(x.shape[1])
        return x + _timm.run(self.drop_path2, _timm.run(self.ls2, self.mlp(self.norm2(x))))


def _per_block(num_prop: int | Sequence[int], depth: int) -> list[int]:
    values = [num_prop] * depth if not isinstance(num_prop, (list, tuple)) else list(num_prop)
    if len(values) > depth:
        raise ValueError(f"gtp: {len(values)} per-block num_prop values for a model with {depth} blocks")
    values += [0] * (depth - len(values))
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"gtp: num_prop[{i}] must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"gtp: num_prop[{i}] must be >= 0, got {value}")
    return values


def apply(model: VisionTransformer, undo, *, num_prop: int | Sequence[int] = 0, num_neighbours: int = 8,
          sparsity: float = 1.0, alpha: float = 0.1, graph_type: str = "Mixed",
          propagation: str | None = "GraphProp", selection: str = "MixedAttnMax", token_scale: bool = True) -> None:
    """Patch `model` with GTP (through `undo`; see `vit_accel.patch`).

    Defaults: the paper's method choices with the official `main.py`'s numbers (``num_prop=0`` changes nothing).

    Args:
        num_prop: image tokens dropped (propagated) per block: an int, or a per-block list (padded with zeros).
        num_neighbours: K, semantic neighbours per token for 'Semantic' / 'Mixed' graphs.
        sparsity: θ in (0, 1]: the share of attention weights kept per head (1 = no sparsification).
        alpha: weight of the propagated features.
        graph_type: 'Mixed' (spatial ∪ semantic), 'Spatial' (8-neighbours) or 'Semantic' (top-K cosine).
        propagation: 'GraphProp', or 'None' / None for pure pruning (no graph, token scales stay 1).
        selection: significance score, one of `SELECTIONS` (official names; 'CLSAttn*' need a class token).
        token_scale: track token scales and add their log to the attention logits (proportional attention).
    """
    layout = _timm.describe(model, "gtp")
    schedule = _per_block(num_prop, layout.depth)
    remaining = layout.num_patches
    for i, value in enumerate(schedule):
        if value >= remaining:
            raise ValueError(f"gtp: num_prop={value} in block {i} leaves no image token ({remaining} left at the "
                             f"default input size {layout.grid_size})")
        remaining -= value
    propagation = "None" if propagation is None else propagation
    if propagation not in PROPAGATIONS:
        raise ValueError(f"gtp: propagation must be one of {PROPAGATIONS}, got {propagation!r}")
    if graph_type not in GRAPH_TYPES:
        raise ValueError(f"gtp: graph_type must be one of {GRAPH_TYPES}, got {graph_type!r}")
    if selection not in SELECTIONS:
        raise ValueError(f"gtp: selection must be one of {sorted(SELECTIONS)}, got {selection!r}")
    if selection.startswith("CLS") and not layout.has_class_token:
        raise ValueError(f"gtp: selection {selection!r} reads the class token's attention; this model has none")
    if isinstance(num_neighbours, bool) or not isinstance(num_neighbours, int):
        raise TypeError(f"gtp: num_neighbours must be an int, got {type(num_neighbours).__name__}")
    if graph_type != "Spatial" and not 1 <= num_neighbours < layout.num_patches:
        raise ValueError(f"gtp: num_neighbours must be in [1, {layout.num_patches - 1}], got {num_neighbours}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity <= 1:
        raise ValueError(f"gtp: sparsity (θ) must be in (0, 1], got {sparsity!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < math.inf:
        raise ValueError(f"gtp: alpha must be a finite number >= 0, got {alpha!r}")
    if not isinstance(token_scale, bool):
        raise TypeError(f"gtp: token_scale must be a bool, got {type(token_scale).__name__}")
    if propagation == "GraphProp" and graph_type != "Semantic" and isinstance(model.patch_drop, PatchDropout):
        raise ValueError("gtp: patch dropout breaks the spatial graph; use graph_type='Semantic' or no patch dropout")
    info = GTPInfo(schedule, num_neighbours, float(sparsity), float(alpha), graph_type, propagation, selection,
                   token_scale, layout.num_prefix_tokens, layout.grid_size)
    _timm.bind(model, undo, _timm.ReducedViT, GTPBlock, info)
