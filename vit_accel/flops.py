"""Multiply-accumulate counts of a timm ViT, patched or not, from the token counts of an actual forward.

`count_macs(model, (3, 224, 224))` runs one forward with hooks and counts, per image, the MACs of every
`nn.Linear` and `nn.Conv2d` on the tensors they actually receive, plus the two attention matmuls (q kᵀ and A v:
2 · N² · attention width per block, N = the block's input tokens). Under token reduction a block's attention runs on
`tokens_in` and its MLP on `tokens_out`, so the count follows the method's schedule.

Convention: this is the "GFLOPs" of the token-reduction papers, which are fvcore / torchprofile **MACs**
(DeiT-S: 4.60 G; ToMe r=8: 3.42 G). It counts the backbone only (patch embedding, blocks, head); norms, softmax,
GELU, residual adds and the methods' own bookkeeping (ToMe's matching, GTP's graph and propagation) are left out,
as the papers do. fvcore's ``FlopCountAnalysis`` adds 5 per LayerNorm element on top; torchprofile counts a few
elementwise ops too (both within about 1 % on a DeiT).

`flop_counter_macs` is the other view: ``torch.utils.flop_counter.FlopCounterMode`` / 2 over everything that
executes, method overhead included, with a formula for the CPU fused-attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``), which torch itself counts as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ._timm import find_vit

__all__ = ["LayerMacs", "MacReport", "count_macs", "flop_counter_macs"]


@dataclass(frozen=True)
class LayerMacs:
    """MACs per image of one block: `attention` (qkv, q kᵀ, A v, proj, gate) on `tokens_in`, `mlp` on `tokens_out`."""

    tokens_in: int
    tokens_out: int
    attention: int
    mlp: int

    @property
    def total(self) -> int:
        return self.attention + self.mlp


@dataclass(frozen=True)
class MacReport:
    """MACs per image of a ViT forward: patch embedding, each block, and the rest (head, pooling linears)."""

    patch_embed: int
    blocks: tuple[LayerMacs, ...]
    head: int

    @property
    def total(self) -> int:
        return self.patch_embed + sum(b.total for b in self.blocks) + self.head

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    @property
    def tokens_in(self) -> list[int]:
        return [b.tokens_in for b in self.blocks]

    @property
    def tokens_out(self) -> list[int]:
        return [b.tokens_out for b in self.blocks]

    def table(self) -> str:
        """A markdown table, one row per block."""
        rows = ["| block | tokens in | tokens out | attention MMACs | MLP MMACs |", "|---|---|---|---|---|"]
        rows += [f"| {i} | {b.tokens_in} | {b.tokens_out} | {b.attention / 1e6:.2f} | {b.mlp / 1e6:.2f} |"
                 for i, b in enumerate(self.blocks)]
        rows.append(f"| total | | | {self.gmacs:.3f} GMACs (patch embed {self.patch_embed / 1e6:.2f} M, "
                    f"head {self.head / 1e6:.2f} M) | |")
        return "\n".join(rows)


def _example(vit: nn.Module, example: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(example, torch.Tensor):
        return example
    param = next(vit.parameters())
    return torch.randn(1, *example, device=param.device, dtype=param.dtype)


def count_macs(model: nn.Module, example: torch.Tensor | Sequence[int]) -> MacReport:
    """Count the MACs per image of one forward of `model` on `example`.

    Args:
        model: a timm VisionTransformer, patched or not (or a model holding one as ``.vit``).
        example: an input batch (B, C, H, W), already normalised, or an input size (C, H, W) for one random image.
    """
    vit = find_vit(model)
    x = _example(vit, example)
    buckets: dict[str, int] = {}
    tokens: dict[int, list[int]] = {}
    handles = []

    def bucket(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) > 2:
            return f"blocks.{parts[1]}.{'attention' if parts[2] == 'attn' else 'mlp'}"
        return "patch_embed" if parts[0] == "patch_embed" else "head"

    def linear_hook(key: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.Linear):
                macs = args[0].numel() * module.out_features
            else:
                macs = output.numel() * module.in_channels // module.groups * module.weight[0, 0].numel()
            buckets[key] = buckets.get(key, 0) + macs
        return hook

    def block_hook(index: int, attn: nn.Module):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            n_in, n_out = args[0].shape[1], output.shape[1]
            tokens[index] = [n_in, n_out]
            key = f"blocks.{index}.attention"
            buckets[key] = buckets.get(key, 0) + 2 * x.shape[0] * n_in * n_in * attn.num_heads * attn.head_dim
        return hook

    try:
        for name, module in vit.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                handles.append(module.register_forward_hook(linear_hook(bucket(name))))
        for i, block in enumerate(vit.blocks):
            handles.append(block.register_forward_hook(block_hook(i, block.attn)))
        with torch.no_grad():
            vit(x)
    finally:
        for handle in handles:
            handle.remove()
    batch = x.shape[0]
    blocks = tuple(
        LayerMacs(*tokens[i], buckets.get(f"blocks.{i}.attention", 0) // batch,
                  buckets.get(f"blocks.{i}.mlp", 0) // batch)
        for i in range(len(vit.blocks))
    )
    return MacReport(buckets.get("patch_embed", 0) // batch, blocks, buckets.get("head", 0) // batch)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * (d_q + d_v)


def flop_counter_macs(model: nn.Module, example: torch.Tensor | Sequence[int]) -> int:
    """MACs per image of everything one forward executes (``FlopCounterMode`` / 2, CPU fused attention counted)."""
    vit = find_vit(model)
    x = _example(vit, example)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        vit(x)
    return counter.get_total_flops() // 2 // x.shape[0]
