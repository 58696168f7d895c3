"""Dynamic token routing for timm ViTs, after DiT (Ma et al., ICCV 2023, "DiT: Efficient Vision Transformers with
Dynamic Token Routing", arXiv 2308.03409).

DiT has no public code; this is a DiT-*inspired* routing-gated ViT, not a reproduction (DiT routes over a
multi-scale PVT/Swin backbone). What it does, per block of a timm ViT:

* a **router** (`TokenRouter`: LayerNorm + Linear(C, 1), one logit per token) decides for every patch token
  between the **full path** (the unchanged timm block) and the **cheap path**, which is the identity: the token
  skips the block. Prefix tokens (CLS, registers) always take the full path.
* **true subsets**: a block runs only on the tokens routed to it (gathered, run, scattered back), so skipped
  tokens are neither queries nor keys/values of that block, and the compute really drops.
* **early exit** (``early_exit=True``, the default): a token that skips a block has *exited*: it skips every
  later block too, and its value is carried unchanged to the final norm. Decisions are monotone (a token's
  gate at block l is the product of its router decisions up to l). With ``early_exit=False`` each block routes
  every patch token afresh.
* **eval**: hard decisions, full path iff the router logit > `threshold` (0 by default). A batch is gathered to
  its longest routed subset (padding masked out of attention); `RoutingStats.macs` counts each image's own
  subset, i.e. what the image costs run alone.
* **training**: a 2-way Gumbel-softmax over ``[logit, 0]`` (equivalently a Gumbel-sigmoid: logistic noise on the
  logit) with straight-through hard samples (forward 0/1, gradient of the soft sample, temperature `tau`). The
  noise is scaled by `set_noise` (1 = standard Gumbel); training anneals it to 0, where the samples are the eval
  decisions. Without that, routers learn logits near 0 and let the noise meet the budget, and the noise-free eval
  decisions then route nearly everything to the full path. The forward equals the hard subset computation:
  skipped tokens are masked out of the block's keys and keep their input value; the output of a routed token is
  ``x + g * (block(x) - x)`` so the gate gets a gradient. `budget_loss` is the compute-budget term:
  ``mean_b (f_b - target)^2``, with f_b the fraction of (patch token, block) pairs of image b on the full path.

Why identity as the cheap path (and not a reduced MLP): it costs nothing, so the executed MACs follow the
routing decisions exactly; it adds no parameters that would need training from scratch next to a pretrained
backbone; it is DiT's "dynamic depth" edge; and with early exit it turns per-block skipping into a learned depth
per token, so tokens that matter little (the background of a digit) can stop after a block or two.

`vit_accel.patch(model, "routing", ...)` adds one router per block (``blocks.{i}.router``, removed by unpatch) and
gives ``model.blocks`` a routing ``forward``. Routers start with zero weights and bias +3, so a fresh patch routes
every token to the full path in eval; ``force="full"`` guarantees that (routers not evaluated): the output is then
exactly the unpatched model's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from .patch import Undo

FORCE = (None, "full")
_INIT_LOGIT = 3.0  # initial router bias: sigmoid(3) = 95% of the Gumbel samples take the full path


class TokenRouter(nn.Module):
    """One full-path logit per token: ``(B, N, C) -> (B, N)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, _INIT_LOGIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x)).squeeze(-1)


@dataclass(frozen=True)
class RoutingSettings:
    """The arguments of `apply` a routing-patched ViT runs with (``model.blocks.routing``)."""

    target: float
    tau: float
    early_exit: bool
    force: str | None
    threshold: float


@dataclass(frozen=True)
class RoutingStats:
    """What the last forward did, for L blocks, B images, N patch tokens.

    Attributes:
        gates: ``(L, B, N)`` full-path gate of each patch token per block (1 = full path); in training the
            straight-through Gumbel samples (values 0/1, differentiable), in eval the hard decisions.
        tokens: ``(B, L)`` int64, tokens each image ran through each block (prefix tokens included).
        macs: ``(B,)`` int64, multiply-accumulates of the blocks and routers for each image's own token subsets
            (in training, where every token runs masked, what those subsets would cost).
    """

    gates: torch.Tensor
    tokens: torch.Tensor
    macs: torch.Tensor

    @property
    def full_fraction(self) -> torch.Tensor:
        """``(B,)`` fraction of (patch token, block) pairs that took the full path."""
        return self.gates.mean(dim=(0, 2))


def block_macs(block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """MACs of a timm block run on `tokens` tokens (any shape of counts): its linear layers (the router excluded)
    plus the two attention matmuls (q k^T and attn @ v, ``2 * T^2 * heads * head_dim``)."""
    per_token = sum(m.in_features * m.out_features for name, m in block.named_modules()
                    if isinstance(m, nn.Linear) and not name.startswith("router"))
    width = block.attn.num_heads * block.attn.head_dim
    tokens = tokens.long()
    return tokens * per_token + 2 * tokens * tokens * width


def _router_macs(router: TokenRouter, tokens: int) -> int:
    return tokens * router.proj.in_features


def _gumbel_sigmoid(logits: torch.Tensor, tau: float, noise: float) -> torch.Tensor:
    """Straight-through hard sample of ``softmax(([logit, 0] + noise * Gumbel) / tau)[0]``: 0/1 forward, the soft
    sample's gradient. Two Gumbels differ by a logistic variable, so this is a Gumbel-sigmoid."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + noise * (u.log() - (-u).log1p())) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


class _RoutedBlocks:
    """Mixin for ``model.blocks`` (an nn.Sequential of timm blocks, each with a ``router``). Set by `apply`:
    `routing` (RoutingSettings), `routing_prefix` (prefix tokens), `routing_noise` (training noise scale),
    `routing_stats` (after each forward)."""

    routing: RoutingSettings
    routing_prefix: int
    routing_noise: float
    routing_stats: RoutingStats | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        settings, prefix = self.routing, self.routing_prefix
        batch, total, _ = x.shape
        gate = x.new_ones(batch, total - prefix)
        gates, tokens, macs = [], [], x.new_zeros(batch, dtype=torch.int64)
        for block in self:
            if settings.force == "full":
                x = block(x)
            else:
                logits = block.router(x[:, prefix:])
                macs += _router_macs(block.router, total - prefix)
                if self.training:
                    decision = _gumbel_sigmoid(logits, settings.tau, self.routing_noise)
                else:
                    decision = (logits > settings.threshold).to(x.dtype)
                gate = gate * decision if settings.early_exit else decision
                x = self._train_step(block, x, gate) if self.training else self._subset_step(block, x, gate > 0)
            count = (gate > 0).sum(dim=1) + prefix
            gates.append(gate)
            tokens.append(count)
            macs += block_macs(block, count)
        self.routing_stats = RoutingStats(torch.stack(gates), torch.stack(tokens, dim=1), macs)
        return x

    def _train_step(self, block: nn.Module, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """All tokens run, skipped ones masked out of the keys; outputs mixed by the straight-through gate."""
        prefix = self.routing_prefix
        keys = torch.cat([gate.new_ones(gate.shape[0], prefix, dtype=torch.bool), gate.detach() > 0], dim=1)
        y = block(x, attn_mask=keys[:, None, None, :])
        patches = x[:, prefix:] + gate[..., None] * (y[:, prefix:] - x[:, prefix:])
        return torch.cat([y[:, :prefix], patches], dim=1)

    def _subset_step(self, block: nn.Module, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Run `block` on the prefix and the `active` ``(B, N)`` patch tokens only; the others pass unchanged."""
        if bool(active.all()):
            return block(x)
        batch, _, dim = x.shape
        keep = torch.cat([active.new_ones(batch, self.routing_prefix), active], dim=1)  # (B, T)
        count = keep.sum(dim=1)
        width = int(count.max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]  # routed tokens first
        index = order[..., None].expand(-1, -1, dim)
        subset = x.gather(1, index)
        valid = torch.arange(width, device=x.device)[None] < count[:, None]  # (B, K)
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        out = torch.where(valid[..., None], block(subset, attn_mask=mask), subset)
        return x.scatter(1, index, out)


@functools.cache
def _routed_class(blocks_cls: type) -> type:
    return type(f"Routed{blocks_cls.__name__}", (_RoutedBlocks, blocks_cls), {})


def apply(model: nn.Module, undo: Undo, target: float = 0.5, tau: float = 1.0, early_exit: bool = True,
          force: str | None = None, threshold: float = 0.0) -> None:
    """Add token routers to a timm ViT (see the module docstring).

    Args:
        target: fraction of (patch token, block) pairs on the full path that `budget_loss` trains towards, (0, 1].
        tau: Gumbel-softmax temperature in training, > 0.
        early_exit: a token that skips a block skips all later ones (True) or is routed afresh by each block.
        force: None (learned routing) or "full" (every token takes every block: the unpatched model).
        threshold: eval decision threshold on the router logit; higher routes fewer tokens.
    """
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or not isinstance(model.blocks, nn.Sequential):
        raise TypeError(f"routing needs a timm VisionTransformer with blocks in an nn.Sequential, "
                        f"got {type(model).__name__}")
    if model.num_prefix_tokens < 1:
        raise ValueError("routing keeps the prefix tokens (CLS, registers) on the full path and needs at least one")
    if getattr(model, "grad_checkpointing", False):
        raise ValueError("routing cannot run with grad checkpointing (it bypasses model.blocks.forward)")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target must be a fraction in (0, 1], got {target!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    if force not in FORCE:
        raise ValueError(f"force must be one of {FORCE}, got {force!r}")
    for i, block in enumerate(model.blocks):
        if not hasattr(getattr(block, "attn", None), "num_heads") or hasattr(block, "router"):
            raise TypeError(f"block {i} ({type(block).__name__}) is not a plain timm attention block")
    dim = model.embed_dim
    undo.swap_class(model.blocks, _routed_class(type(model.blocks)))
    undo.set_attr(model.blocks, "routing", RoutingSettings(float(target), float(tau), bool(early_exit), force,
                                                           float(threshold)))
    undo.set_attr(model.blocks, "routing_prefix", model.num_prefix_tokens)
    undo.set_attr(model.blocks, "routing_noise", 1.0)
    undo.set_attr(model.blocks, "routing_stats", None)
    param = next(model.parameters())
    for block in model.blocks:
        undo.set_attr(block, "router", TokenRouter(dim).to(device=param.device, dtype=param.dtype))


def stats(model: nn.Module) -> RoutingStats:
    """The `RoutingStats` of the last forward of a routing-patched ViT."""
    found = getattr(getattr(model, "blocks", None), "routing_stats", None)
    if not isinstance(found, RoutingStats):
        raise ValueError("no routing statistics: patch the model with 'routing' and run a forward first")
    return found


def set_noise(model: nn.Module, scale: float) -> None:
    """Scale the Gumbel noise of training (1: standard; 0: the eval decisions, straight-through gradients)."""
    if not scale >= 0:
        raise ValueError(f"noise scale must be >= 0, got {scale!r}")
    blocks = getattr(model, "blocks", None)
    if not isinstance(getattr(blocks, "routing", None), RoutingSettings):
        raise ValueError("set_noise needs a model patched with 'routing'")
    blocks.routing_noise = float(scale)


def budget_loss(model: nn.Module, target: float | None = None) -> torch.Tensor:
    """Compute-budget loss of the last forward: ``mean_b (full_fraction_b - target)^2`` (default: patch target)."""
    target = model.blocks.routing.target if target is None else target
    return ((stats(model).full_fraction - target) ** 2).mean()

