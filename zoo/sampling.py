"""Token sampling shared by the generators: the official top-k / top-p filter and per-item categorical draws."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The official ``top_k_top_p_filtering``: keep logits >= the k-th largest, then the smallest set of the largest
    whose softmax sums past `top_p` (the first token that crosses is kept); the rest become -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(max(top_k, 1), logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_idx, remove), -float("inf"))
    return logits


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None], sample: bool = True) -> torch.Tensor:
    """One token per row of ``probs (B, V)`` (or ``(B, S, V)``: S tokens per item, e.g. a Token-Shuffle window):
    ``argmax(probs / q)`` with ``q ~ Exp(1)`` (= ``torch.multinomial``).

    All rows sharing one generator (or None: torch's global RNG) draw ``q`` in one call, as ``torch.multinomial``
    does; otherwise item i draws its ``q`` from ``generators[i]``. ``sample=False``: the most likely token."""
    if not sample:
        return torch.topk(probs, k=1, dim=-1)[1][..., 0]  # the first index on ties, as argmax
    def noise(shape, g: torch.Generator | None) -> torch.Tensor:  # on the generator's device (CPU seeds on GPU)
        device = probs.device if g is None else g.device
        return torch.empty(shape, dtype=probs.dtype, device=device).exponential_(1, generator=g).to(probs.device)

    if all(g is generators[0] for g in generators):
        q = noise(probs.shape, generators[0])
    else:
        q = torch.stack([noise(p.shape, g) for p, g in zip(probs, generators)])
    return torch.argmax(probs / q, dim=-1)


__all__ = ["draw", "filter_logits"]
