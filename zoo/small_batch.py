"""A faster ``nn.functional.linear`` for the few-row products of token-by-token decoding on CPU.

A KV-cached decode step multiplies every weight matrix by a handful of rows (batch 1 with CFG: 2 rows). On CPU,
PyTorch's ``F.linear`` (``x @ W.T`` through MKL) is far from the memory-bandwidth bound for such shapes, while the
same product computed as ``(W @ x.T).T`` is 2-4x faster (2 threads, float32, GPT-B's matrices: 2 rows 51.7 -> 13.0 ms
for all weights, 4 rows 45.0 -> 20.0 ms; 1 row is as slow either way, so one row is duplicated to make two).
`small_batch_linear` routes every ``F.linear`` call (``nn.Linear``, timm's ``Mlp`` / ``SwiGLU``) with at most
``max_rows`` rows of a float32 CPU input through that product while it is active; anything else runs unchanged. The
result is the same product summed in a different order (float32 rounding differences only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: The largest row count routed by default: beyond 4 rows the gain is small and depends on the thread count.
MAX_ROWS = 4
#: Models narrower than this gain nothing: their products are too small to be bound by memory, and the mode's
#: Python hook on every op costs more (the tiny Fashion GPT, width 128, batch 1: 112 -> 172 ms).
MIN_WIDTH = 512


class _SmallBatchLinear(TorchFunctionMode):
    def __init__(self, max_rows: int):
        super().__init__()
        self.max_rows = max_rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rows = x.numel() // max(x.shape[-1], 1)
            if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                    and (bias is None or bias.dtype == torch.float32) and 0 < rows <= self.max_rows
                    and weight.dim() == 2 and weight.device.type == "cpu"):
                x2 = x.reshape(rows, x.shape[-1])  # (rows, in)
                if rows == 1:
                    x2 = x2.expand(2, -1)  # MKL's 2-column product beats its matrix-vector product
                y = (weight @ x2.t()).t()[:rows]  # (rows, out)
                if bias is not None:
                    y = y + bias
                return y.contiguous().view(*x.shape[:-1], weight.shape[0])
        return func(*args, **kwargs)


@contextlib.contextmanager
def small_batch_linear(enabled: bool = True, max_rows: int = MAX_ROWS) -> Iterator[None]:
    """While active, ``F.linear`` on float32 CPU inputs of at most `max_rows` rows runs as ``(W @ x.T).T``."""
    if not enabled or max_rows < 1:
        yield
        return
    with _SmallBatchLinear(max_rows):
        yield


__all__ = ["MAX_ROWS", "MIN_WIDTH", "small_batch_linear"]
