"""Token-Shuffle (Ma et al., 2025, https://arxiv.org/abs/2504.17789) for the class-conditional GPT, and CFG schedules.

No official code or weights exist: this is a from-scratch module following the paper's description.

* **Window order.** A ``rows x cols`` token grid (raster order) is read as ``(rows / s) x (cols / s)`` windows of
  ``s x s`` neighbouring tokens: windows in raster order over the window grid, and inside a window its ``s^2`` slots
  in raster order (slot ``a * s + b`` is the token at row ``s * i + a``, column ``s * j + b`` of window ``(i, j)``).
  `window_permutation` gives the index map; it is a bijection (`unshuffle_codes` inverts `shuffle_codes`).
* **Token-shuffle** (input side): every token embedding (width ``d``) is compressed by one shared MLP to
  ``d / s^2``; the ``s^2`` compressed slots of a window are concatenated along channels (width ``d`` again: the
  transformer sees ``n / s^2`` positions), then ``n_mlp`` residual MLP blocks mix them.
* **Token-unshuffle** (output side), its mirror: ``n_mlp`` residual MLP blocks on the transformer's (normed) output
  state, a split into ``s^2`` chunks of ``d / s^2``, one shared MLP expanding each chunk back to ``d``, an RMSNorm;
  the shared LM head then classifies every slot. Training: cross-entropy on every original id. Sampling: each AR
  step emits the ``s^2`` tokens of one window in parallel (conditionally independent given the context).

The paper leaves the MLP widths and activations unstated: here every MLP is timm's ``Mlp`` (Linear, GELU, Linear)
with hidden width ``d``, and a residual block is ``x + Mlp(RMSNorm(x))``. Window size ``s = 1`` bypasses all of it
(the model is exactly the plain LlamaGen GPT, with the same parameters).

CFG schedules (the paper compares several; half-linear is its default): the guidance scale of the step whose tokens
end at position ``e`` of the ``n`` image tokens is ``1 + (g - 1) * r(e / n)``: ``constant`` r = 1, ``linear``
r = p, ``half-linear`` r = min(1, 2 p), ``cosine`` r = (1 - cos(pi p)) / 2.
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp, RmsNorm
from torch import nn

CFG_SCHEDULES = ("constant", "linear", "half-linear", "cosine")


def cfg_scale_at(schedule: str, scale: float, done: int, total: int) -> float:
    """The guidance scale of a step after which `done` of `total` tokens are known (see the module docstring)."""
    if schedule == "constant":
        return scale
    p = done / total
    if schedule == "linear":
        ramp = p
    elif schedule == "half-linear":
        ramp = min(1.0, 2.0 * p)
    elif schedule == "cosine":
        ramp = (1.0 - math.cos(math.pi * p)) / 2.0
    else:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {schedule!r}")
    return 1.0 + (scale - 1.0) * ramp


def window_permutation(rows: int, cols: int, s: int) -> torch.Tensor:
    """``perm (rows * cols,)``: ``codes[:, perm]`` lists a raster-order grid window by window (slot-minor)."""
    if rows % s or cols % s:
        raise ValueError(f"a {rows} x {cols} token grid does not tile into {s} x {s} windows")
    raster = torch.arange(rows * cols).view(rows // s, s, cols // s, s)     # (i, a, j, b)
    return raster.permute(0, 2, 1, 3).reshape(-1)                           # (i, j, a, b)


def shuffle_codes(codes: torch.Tensor, grid: tuple[int, int], s: int) -> torch.Tensor:
    """``(B, L)`` raster order -> ``(B, L / s^2, s^2)`` windows (L: whole rows of windows, ``L % (s * cols) == 0``)."""
    rows, cols = len_rows(codes.shape[1], grid, s), grid[1]
    return codes[:, window_permutation(rows, cols, s).to(codes.device)].view(len(codes), -1, s * s)


def unshuffle_codes(windows: torch.Tensor, grid: tuple[int, int], s: int) -> torch.Tensor:
    """The inverse of `shuffle_codes`: ``(B, W, s^2, ...)`` windows -> ``(B, W * s^2, ...)`` raster order."""
    b, w = windows.shape[:2]
    rows, cols = len_rows(w * s * s, grid, s), grid[1]
    flat = windows.reshape(b, w * s * s, *windows.shape[3:])
    inverse = torch.argsort(window_permutation(rows, cols, s)).to(windows.device)
    return flat[:, inverse]


def len_rows(length: int, grid: tuple[int, int], s: int) -> int:
    """Rows of tokens covered by `length` raster-order tokens, which must be whole rows of windows."""
    if length % (s * grid[1]):
        raise ValueError(f"{length} tokens are not whole rows of {s} x {s} windows of a {grid[0]} x {grid[1]} grid "
                         f"(a multiple of {s * grid[1]} is needed)")
    return length // grid[1]


class ResidualMlp(nn.Module):
    """``x + Mlp(RMSNorm(x))`` at width ``dim`` (hidden width ``dim``)."""

    def __init__(self, dim: int, norm_eps: float):
        super().__init__()
        self.norm = RmsNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TokenShuffle(nn.Module):
    """Window embeddings ``(B, W, s^2, d)`` -> transformer inputs ``(B, W, d)``."""

    def __init__(self, dim: int, window: int, n_mlp: int = 2, norm_eps: float = 1e-5):
        super().__init__()
        slots = window * window
        self.compress = Mlp(dim, dim, dim // slots)
        self.blocks = nn.Sequential(*(ResidualMlp(dim, norm_eps) for _ in range(n_mlp)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.compress(x))

    def mix(self, compressed: torch.Tensor) -> torch.Tensor:
        """Compressed slots ``(B, W, s^2, d / s^2)`` -> ``(B, W, d)``. Sampling compresses the whole embedding table
        once per call and indexes it (`compress` acts per token), instead of compressing every step's window."""
        return self.blocks(compressed.flatten(-2))


class TokenUnshuffle(nn.Module):
    """Transformer outputs ``(B, W, d)`` -> one state per slot ``(B, W, s^2, d)`` for the shared head."""

    def __init__(self, dim: int, window: int, n_mlp: int = 2, norm_eps: float = 1e-5):
        super().__init__()
        self.slots = window * window
        self.blocks = nn.Sequential(*(ResidualMlp(dim, norm_eps) for _ in range(n_mlp)))
        self.expand = Mlp(dim // self.slots, dim, dim)
        self.norm = RmsNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x).unflatten(-1, (self.slots, -1))  # (B, W, s^2, d / s^2)
        return self.norm(self.expand(x))


__all__ = ["CFG_SCHEDULES", "ResidualMlp", "TokenShuffle", "TokenUnshuffle", "cfg_scale_at", "shuffle_codes",
           "unshuffle_codes", "window_permutation"]
