"""FlexTok building blocks with a real batch dimension.

The official code packs every image of a batch into one sequence (batch size 1, block-diagonal masks, padding to a
multiple of 128) and drives each module through a data dict. Here every image is one row of a ``(B, L, D)`` batch:

* encoder sequence = ``[patches | registers]`` with a fixed prefix-LM mask (`prefix_lm_mask`), the same for every
  image, so one boolean ``(L, L)`` mask serves the whole batch;
* decoder sequence = ``[patches | registers]`` with full attention (no mask);
* per-image facts (number of kept tokens, CFG null condition) are per-row tensor operations, never loops.

Since the official padding tokens never attend to, or are attended by, real tokens, this layout computes the same
numbers up to float rounding. Numerics that are easy to get wrong and are reproduced here: non-affine float32
LayerNorms (eps 1e-5), QK-norm over ``head_dim``, attention scale ``8 / head_dim``, SwiGLU hidden size
``int(2 * int(mlp_ratio * D) / 3)``, adaLN chunk order ``gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp,
scale_mlp`` with one ``6 * D`` chunk per sub-sequence (patches, registers), ``[cos, sin]`` timestep features with
``max_period = 256`` and frequencies scaled by ``1000 / max_timestep``, and the patch-vector order ``(p_h, p_w, c)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-5
TIME_MAX_PERIOD = 256.0  # hard-coded in the official TimestepEmbedder (not a config value)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Non-affine LayerNorm over the last dim, computed in float32 and returned in the input dtype."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=LN_EPS).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale) + shift


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def modulate_segments(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                      sizes: tuple[int, ...]) -> torch.Tensor:
    """`modulate` of ``x (B, L, D)`` whose consecutive token segments (lengths `sizes`) each take one row of
    ``shift, scale (B, >= len(sizes), D)``, broadcast over the segment (no per-token copy of the modulation)."""
    parts = x.split(sizes, dim=1)
    return _join([modulate(part, shift[:, i:i + 1], scale[:, i:i + 1]) for i, part in enumerate(parts)])


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """``x + gate * y`` for ``x, y (B, L, D)`` with one ``gate`` row ``(B, >= len(sizes), D)`` per token segment."""
    pairs = zip(x.split(sizes, dim=1), y.split(sizes, dim=1), strict=True)
    return _join([a + gate[:, i:i + 1] * b for i, (a, b) in enumerate(pairs)])


def sincos_posemb_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The official 2-D sin-cos table, ``(1, dim, h, w)``.

    The official builder flattens an ``ij``-meshgrid over ``(w, h)`` and then reads the flat index as ``(h w)``:
    flat position ``n = a * w + b`` of grid cell (row ``a``, column ``b``) gets the "first" coordinate ``n // h`` and
    the "second" ``n % h``. For square tables that is simply (row, column); the general rule is kept so that any
    table matches. Channel layout: ``[sin(u w_k), cos(u w_k), sin(v w_k), cos(v w_k)]`` with ``w_k =
    temperature^(-k / (dim / 4))``.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positional embeddings need a dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    flat = torch.arange(h * w)
    first = (flat // h).to(torch.float32)
    second = (flat % h).to(torch.float32)
    out_first = first[:, None] * omega[None]
    out_second = second[:, None] * omega[None]
    table = torch.cat([out_first.sin(), out_first.cos(), out_second.sin(), out_second.cos()], dim=1)  # (h*w, dim)
    return table.t().reshape(1, dim, h, w).contiguous()


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/p, W/p, p*p*C)``, patch vectors ordered ``(p_h, p_w, c)``."""
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h // p, p, w // p, p, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """``(B, h, w, p*p*C)`` -> ``(B, C, h*p, w*p)`` (inverse of `patchify`)."""
    b, h, w, _ = x.shape
    x = x.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * p, w * p)


def prefix_lm_mask(num_prefix: int, num_causal: int, device=None) -> torch.Tensor:
    """Boolean ``(L, L)`` mask, True = may attend: the prefix attends to itself, causal token r to the prefix and
    causal tokens 0..r (the official ``causal_last`` mode)."""
    n = num_prefix + num_causal
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    return (k <= q) | (k < num_prefix)


class Attention(nn.Module):
    """Multi-head self-attention: separate q/k/v/out projections without bias, QK-norm, scale ``8 / head_dim``."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        self.scale = 8.0 / head_dim  # muP scaling; equals 1/sqrt(head_dim) only for head_dim 64
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                queries: slice = slice(None)) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, Lq, D)``: the tokens ``x[:, queries]`` (default all) attend to all ``L`` tokens;
        `mask` is a boolean ``(Lq, L)`` mask (True = may attend) or None (full attention)."""
        b, n, d = x.shape
        xq = x[:, queries]
        nq = xq.shape[1]
        # QK-norm on the contiguous (B, L, heads, head_dim) layout, then the (free) transpose to (B, heads, L, hd).
        q = layer_norm(self.wq(xq).view(b, nq, self.num_heads, self.head_dim)).transpose(1, 2)
        k = layer_norm(self.wk(x).view(b, n, self.num_heads, self.head_dim)).transpose(1, 2)
        v = self.wv(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class SwiGLU(nn.Module):
    """``fc2(silu(fc1(x)) * fc3(x))`` with hidden size ``int(2 * int(mlp_ratio * dim) / 3)``, no biases."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(2 * int(dim * mlp_ratio) / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    """Pre-norm transformer block (the encoder's)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = SwiGLU(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                queries: slice = slice(None)) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, Lq, D)``: only the tokens ``x[:, queries]`` are updated and returned (all by
        default); all tokens serve as keys and values. `mask`: boolean ``(L, L)``, True = may attend."""
        mask = None if mask is None else mask[queries]
        x = x[:, queries] + self.attn(layer_norm(x), mask, queries)
        return x + self.mlp(layer_norm(x))


class AdaLNBlock(Block):
    """Block with adaLN-zero modulation from the time embedding, one ``6 * D`` chunk per sub-sequence.

    ``adaLN_modulation = SiLU -> Linear(D, expansion * 6 * D)``; chunk ``i`` of the output modulates the ``i``-th
    segment of consecutive tokens (patches, registers when ``expansion == 2``; the whole sequence when it is 1).
    """

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float = 4.0, expansion: int = 2):
        super().__init__(dim, head_dim, mlp_ratio)
        self.expansion = expansion
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, expansion * 6 * dim, bias=True))

    def forward(self, x: torch.Tensor, temb: torch.Tensor, sizes: tuple[int, ...],
                num_queries: int | None = None) -> torch.Tensor:
        """``x (B, L, D)``, ``temb (B, D)``, `sizes` = the ``expansion`` segment lengths (sum ``L``) -> ``(B, Lq, D)``.

        With `num_queries` only the first ``Lq`` tokens are updated and returned; the others still serve as keys and
        values.
        """
        b, _, d = x.shape
        mod = self.adaLN_modulation(temb).view(b, self.expansion, 6 * d)
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = mod.chunk(6, dim=-1)  # (B, expansion, D)
        q_sizes = sizes if num_queries is None else _leading_segments(sizes, num_queries)
        h = self.attn(modulate_segments(layer_norm(x), shift_msa, scale_msa, sizes), None, slice(None, num_queries))
        x = gated_residual(x[:, :num_queries], gate_msa, h, q_sizes)
        h = self.mlp(modulate_segments(layer_norm(x), shift_mlp, scale_mlp, q_sizes))
        return gated_residual(x, gate_mlp, h, q_sizes)


def _leading_segments(sizes: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The segment lengths of the first `n` tokens (the last one cut short where `n` ends inside it)."""
    out, total = [], 0
    for size in sizes:
        if total >= n:
            break
        out.append(min(size, n - total))
        total += out[-1]
    return tuple(out)


class LinearHead(nn.Module):
    """Non-affine float32 LayerNorm -> Linear; optionally adaLN with ONE shift/scale per image (the official head
    default when no packing function is given)."""

    def __init__(self, dim: int, dim_out: int, adaLN: bool = False):
        super().__init__()
        if adaLN:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.proj = nn.Linear(dim, dim_out, bias=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        x = layer_norm(x)
        if hasattr(self, "adaLN_modulation"):
            shift, scale = self.adaLN_modulation(temb)[:, None].chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.proj(x)


class TimestepEmbedder(nn.Module):
    """``[cos, sin]`` sinusoidal features of ``t`` (``max_period`` 256, frequencies times ``1000 / max_timestep``)
    -> ``Linear -> SiLU -> Linear``."""

    def __init__(self, dim: int, max_timestep: float | None, frequency_size: int = 256):
        super().__init__()
        self.max_timestep, self.frequency_size = max_timestep, frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim, bias=True), nn.SiLU(), nn.Linear(dim, dim, bias=True))

    def features(self, t: torch.Tensor) -> torch.Tensor:
        if self.max_timestep is None:
            raise ValueError(
                "max_timestep is not set in this FlexTok config (it is not known offline for the released "
                "checkpoints); build the model from the checkpoint's own config (FlexTok.from_official) or set it"
            )
        if bool((t > self.max_timestep).any()):
            raise ValueError(f"timesteps must be <= max_timestep {self.max_timestep}, got max {float(t.max())}")
        half = self.frequency_size // 2
        # Same operation order as the official code (float32 throughout).
        freqs = (1000.0 / self.max_timestep) * torch.exp(
            -math.log(TIME_MAX_PERIOD) * torch.arange(0, half, dtype=torch.float32) / half
        ).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.features(t)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class FlexTokEncoder(nn.Module):
    """VAE latents ``(B, C, h, w)`` -> pre-quantisation register values ``(B, N, len(levels))``."""

    def __init__(self, latent_channels: int, patch_size: int, dim: int, depth: int, head_dim: int,
                 mlp_ratio: float, num_registers: int, grid: tuple[int, int], dim_out: int):
        super().__init__()
        self.patch_size = patch_size
        self.patch_proj = nn.Linear(latent_channels * patch_size * patch_size, dim, bias=True)
        self.register_buffer("posembs", sincos_posemb_2d(grid[0], grid[1], dim))
        self.registers = nn.Parameter(torch.zeros(num_registers, dim))
        self.blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio) for _ in range(depth))
        self.head = LinearHead(dim, dim_out)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        nh, nw = latents.shape[2] // self.patch_size, latents.shape[3] // self.patch_size
        patches = patch_embed(latents, self.patch_size, self.patch_proj, grid_posemb(self.posembs, nh, nw))
        b, num_patches = patches.shape[:2]
        x = torch.cat([patches, self.registers[None].expand(b, -1, -1).to(patches.dtype)], dim=1)
        mask = prefix_lm_mask(num_patches, self.registers.shape[0], device=x.device)
        # The head reads only the registers: the last block updates those alone (patches stay keys / values).
        for i, block in enumerate(self.blocks):
            x = block(x, mask, slice(num_patches, None) if i == len(self.blocks) - 1 else slice(None))
        return self.head(x[:, -self.registers.shape[0]:])  # the registers


def grid_posemb(posembs: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """The sin-cos table ``(1, D, rows, cols)`` cropped to an ``nh x nw`` patch grid: ``(1, nh * nw, D)``."""
    if nh > posembs.shape[2] or nw > posembs.shape[3]:
        raise ValueError(f"a {nh}x{nw} patch grid exceeds the positional table ({posembs.shape[2]}x{posembs.shape[3]})")
    return posembs[:, :, :nh, :nw].permute(0, 2, 3, 1).flatten(1, 2)


def patch_embed(latents: torch.Tensor, p: int, proj: nn.Linear, posemb: torch.Tensor) -> torch.Tensor:
    """Patchify, project and add the position table (`grid_posemb`): ``(B, C, h, w)`` -> ``(B, h/p * w/p, D)``."""
    x = proj(patchify(latents.to(proj.weight.dtype), p)).flatten(1, 2)  # (B, nh * nw, D)
    return x + posemb.to(x.dtype)


@dataclass
class DecoderCondition:
    """What a decoder call computes from its condition alone, i.e. all that stays fixed across sampling steps
    (`FlexTokDecoder.prepare_condition`).

    Attributes:
        registers: ``(B, N, D)`` register tokens: FSQ values projected, position embedding added, mask token beyond
            `keep_k`, null condition on the unconditional rows.
        patch_posemb: ``(1, nh * nw, D)`` sin-cos table of the patch grid, in the decoder dtype.
        grid: the patch grid ``(nh, nw)`` of the latents.
        sizes: the token segments that take one adaLN chunk each: ``(nh * nw, N)`` (patches, registers), or
            ``(nh * nw + N,)`` with one shared chunk.
    """

    registers: torch.Tensor
    patch_posemb: torch.Tensor
    grid: tuple[int, int]
    sizes: tuple[int, ...]


class FlexTokDecoder(nn.Module):
    """Rectified-flow decoder: (quantised registers, noised latents, t) -> velocity ``(B, C, h, w)``.

    Register tokens: ``Linear(len(levels) -> D)`` + learned position embedding; positions ``>= keep_k`` of an item are
    replaced by the mask token (after the position embedding, so masked positions carry none); items flagged for the
    CFG null condition have all their register tokens replaced by the learned null token (or zeros).

    `forward` is one call from scratch (training, single evaluations). A sampler splits it: `prepare_condition` once
    (register tokens, position table, adaLN segments), `time_embed` for every timestep before the loop, then one
    `step` per Euler step.
    """

    def __init__(self, latent_channels: int, patch_size: int, dim: int, depth: int, head_dim: int,
                 mlp_ratio: float, num_registers: int, grid: tuple[int, int], dim_in: int, adaLN_expansion: int,
                 max_timestep: float | None, frequency_size: int, null_cond: str, head_adaLN: bool):
        super().__init__()
        if adaLN_expansion not in (1, 2):
            raise ValueError(f"adaLN_expansion must be 1 (shared) or 2 (patches / registers), got {adaLN_expansion}")
        if null_cond not in ("learned", "zero"):
            raise ValueError(f"null_cond must be 'learned' or 'zero', got {null_cond!r}")
        self.patch_size, self.latent_channels, self.adaLN_expansion = patch_size, latent_channels, adaLN_expansion
        self.from_latents = nn.Linear(dim_in, dim, bias=True)
        self.register_posemb = nn.Parameter(torch.zeros(num_registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))
        if null_cond == "learned":
            self.null_cond = nn.Parameter(torch.zeros(dim))
        self.patch_proj = nn.Linear(latent_channels * patch_size * patch_size, dim, bias=True)
        self.register_buffer("posembs", sincos_posemb_2d(grid[0], grid[1], dim))
        self.time_embed = TimestepEmbedder(dim, max_timestep, frequency_size)
        self.blocks = nn.ModuleList(AdaLNBlock(dim, head_dim, mlp_ratio, adaLN_expansion) for _ in range(depth))
        self.head = LinearHead(dim, latent_channels * patch_size * patch_size, adaLN=head_adaLN)

    @property
    def num_registers(self) -> int:
        return self.register_posemb.shape[0]

    def register_tokens(self, quants: torch.Tensor, keep_k: torch.Tensor | None,
                        uncond: torch.Tensor | None) -> torch.Tensor:
        """``(B, N, len(levels))`` FSQ values -> ``(B, N, D)`` decoder register tokens."""
        dtype = self.from_latents.weight.dtype
        r = self.from_latents(quants.to(dtype)) + self.register_posemb.to(dtype)
        if keep_k is not None:
            position = torch.arange(r.shape[1], device=r.device)
            dropped = position[None, :, None] >= keep_k.to(r.device)[:, None, None]
            r = torch.where(dropped, self.mask_token.to(dtype), r)
        if uncond is not None:
            null = self.null_cond.to(dtype) if hasattr(self, "null_cond") else torch.zeros((), dtype=dtype,
                                                                                             device=r.device)
            r = torch.where(uncond.to(r.device)[:, None, None], null, r)
        return r

    def prepare_condition(self, quants: torch.Tensor, keep_k: torch.Tensor | None, uncond: torch.Tensor | None,
                          latent_size: tuple[int, int]) -> DecoderCondition:
        """The step-invariant part of a call: FSQ values ``(B, N, len(levels))``, ``keep_k (B,)`` int64 (None = keep
        all), ``uncond (B,)`` bool (None = none), latents of size ``(h, w)``."""
        p = self.patch_size
        nh, nw = latent_size[0] // p, latent_size[1] // p
        registers = self.register_tokens(quants, keep_k, uncond)
        posemb = grid_posemb(self.posembs, nh, nw).to(registers.dtype)
        n = registers.shape[1]
        sizes = (nh * nw, n) if self.adaLN_expansion == 2 else (nh * nw + n,)
        return DecoderCondition(registers, posemb, (nh, nw), sizes)

    def step(self, cond: DecoderCondition, noised: torch.Tensor, temb: torch.Tensor,
             return_intermediates: bool = False):
        """Velocity ``(B, C, h, w)`` in the decoder dtype (plus ``{"temb", "patches_final"}`` on request).

        Args:
            cond: from `prepare_condition`, ``B`` rows.
            noised: ``(B, C, h, w)``, or ``(B / r, C, h, w)`` when each noised input serves ``r`` consecutive groups of
                condition rows (the CFG batch ``[cond; uncond]`` sees the same ``x``: its patches are embedded once).
            temb: ``(B, D)`` from `time_embed`.
        """
        nh, nw = cond.grid
        if noised.shape[2:] != (nh * self.patch_size, nw * self.patch_size):
            raise ValueError(f"noised latents of size {tuple(noised.shape[2:])} do not fit the prepared patch grid "
                             f"{nh}x{nw}")
        b = cond.registers.shape[0]
        if b % noised.shape[0]:
            raise ValueError(f"{noised.shape[0]} noised inputs do not divide {b} condition rows")
        patches = patch_embed(noised, self.patch_size, self.patch_proj, cond.patch_posemb)
        num_patches = patches.shape[1]
        if b != noised.shape[0]:
            patches = patches.repeat(b // noised.shape[0], 1, 1)
        x = torch.cat([patches, cond.registers], dim=1)
        # The head reads only the patch tokens: the last block updates those alone (registers stay keys / values).
        for i, block in enumerate(self.blocks):
            x = block(x, temb, cond.sizes, num_patches if i == len(self.blocks) - 1 else None)
        final = x[:, :num_patches]
        out = self.head(final, temb).view(b, nh, nw, -1)
        velocity = unpatchify(out, self.patch_size, self.latent_channels)
        if return_intermediates:
            return velocity, {"temb": temb, "patches_final": final.reshape(b, nh, nw, -1)}
        return velocity

    def forward(self, quants: torch.Tensor, noised: torch.Tensor, timesteps: torch.Tensor,
                keep_k: torch.Tensor | None = None, uncond: torch.Tensor | None = None,
                return_intermediates: bool = False):
        """One call from scratch: FSQ values ``(B, N, len(levels))``, noised latents ``(B, C, h, w)``, timesteps
        ``(B,)`` -> velocity ``(B, C, h, w)`` (float32 if the decoder is), plus ``{"temb", "patches_final"}`` on
        request."""
        cond = self.prepare_condition(quants, keep_k, uncond, tuple(noised.shape[2:]))
        return self.step(cond, noised, self.time_embed(timesteps.to(noised.device)), return_intermediates)


# ----------------------------------------------------------------------------------------------------------------
# sampling helpers (official MinRFPipeline semantics)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return uncond + scale * (cond - uncond)


class APG:
    """Adaptive projected guidance (Sadat et al., 2024) as the official sampler runs it, for a whole batch.

    Per item: momentum buffer (``running = diff + momentum * running``, momentum -0.5), the buffer clipped to L2 norm
    `norm_threshold` over (C, H, W), projected in float64 onto the conditional prediction; only the orthogonal part is
    kept (``eta`` 0): ``cond + (scale - 1) * (orthogonal + eta * parallel)``.
    """

    def __init__(self, momentum: float = -0.5, norm_threshold: float = 2.5, eta: float = 0.0):
        self.momentum, self.norm_threshold, self.eta = momentum, norm_threshold, eta
        self.running: torch.Tensor | float = 0

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        diff = cond - uncond
        self.running = diff + self.momentum * self.running
        diff = self.running
        if self.norm_threshold > 0:
            norm = diff.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), self.norm_threshold / norm)
        v0, v1 = diff.double(), cond.double()
        v1 = F.normalize(v1, dim=[-1, -2, -3])
        parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
        orthogonal = v0 - parallel
        update = orthogonal.to(diff.dtype) + self.eta * parallel.to(diff.dtype)
        return cond + (scale - 1) * update
