"""xAR: next-X prediction with flow matching over continuous VAE latents.

Faithful to the official ``models/xar.py`` and ``models/sampler.py`` (OliverRensu/xAR, commit 121e9c9); parameter
names are the official ones (`convert.checkpoint_filter_fn` checks them and drops the buffers we recompute).

Entities. The latent grid ``(h, w)`` of ``C`` channels is cut into ``E`` entities of ``n`` positions each, generated
one after another; the transformer reads the positions in *entity order* (entity by entity, each entity's positions
row-major):

* ``"cell"`` (``entity_size`` k): k x k squares, row-major over the grid (the released model: k = 8 on 16 x 16, so
  4 entities of 64 positions, the official ``clusterify``);
* ``"token"``: one position per entity (raster order, a plain next-token flow model; the same as cells of 1);
* ``"subsample"`` (``entity_size`` s): s x s strided groups; group ``(a, b)`` holds the positions ``(a + s i,
  b + s j)``, groups in row-major ``(a, b)`` order;
* ``"image"``: one entity, the whole grid (a plain flow-matching transformer).

Backbone. ``z_proj`` (C -> D) + learned positions (entity order) -> RMSNorm -> "encoder" blocks -> RMSNorm ->
``decoder_embed`` + second positions -> "decoder" blocks -> RMSNorm -> ``pred`` (D -> C): a velocity per position.
Both stacks are block-causal over entities (an entity sees itself and the earlier ones). Blocks: weightless RMSNorm
pre-norms modulated per entity (AdaLN: ``ada_lin`` = SiLU + Linear(D, 6D) of the entity's condition, viewed as
``(gamma1, gamma2, scale1, scale2, shift1, shift2)``), attention with 2D RoPE (EVA-02 interleaved pairs: the first
half of a head's channels rotate with the row, the second half with the column; the table follows the entity order),
and timm's SwiGLU built with GELU (the official ``Block`` passes ``act_layer=nn.GELU``). The condition of an entity is
``class_emb(label) + time_embed(int(t * 1000))`` (t truncated after a float32 multiply, as official); the null class
(classifier-free guidance, label dropout) is the row ``null_label`` of ``class_emb`` (1000 in the released models).

Training (``forward``): noisy context learning: every entity gets its own logit-normal ``t``; ``x_t = (1 - t) x +
t eps``, target ``eps - x``; one block-causal pass predicts every entity; plain MSE.

Sampling (``generate``, the official ``sample_tokens`` + ``euler_maruyama_sampler``): entity by entity, from
N(0, I) noise, ``num_steps`` steps on ``t = linspace(1, t_last, num_steps)`` then 0: every step but the last is an
Euler-Maruyama step of the SDE with diffusion ``2 t`` (drift ``v - t score``, score from the velocity), the last one
the deterministic mean step; the state is float64, the model runs in its own dtype. CFG mixes the *drift*,
``d_u + s (d_c - d_u)``, with ``s = 1 + (cfg - 1) e / (E - 1)`` for entity ``e`` ("linear", the official ramp: the
first entity is unguided) or ``s = cfg`` ("constant"); guidance applies where ``s > 1``. Earlier entities are seen
through a KV cache of their clean samples at t = 0 (as official; training sees noisy context instead).

Beyond the official code: any grid, channel count and entity; device-agnostic (no ``.cuda()``, no ``flash_attn``);
per-item seeds; conditional and unconditional rows in one batch, and no unconditional rows where an entity is
unguided (the official sampler still doubles the batch there); the cache is written once per entity by a pass over
the clean entity (the official prefill recomputes it together with the next entity's first step: the same values)
into preallocated buffers (the official concatenates them every step); the AdaLN modulations broadcast instead of
being repeated to every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import RmsNorm, SwiGLU
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from torch import nn

from zoo import api
from zoo.api import Generator, Latents, check_choice, check_count
from zoo.registry import register_architecture

ENTITIES = ("token", "cell", "subsample", "image")
CFG_SCHEDULES = ("linear", "constant")


@dataclass
class XARConfig:
    """Hyperparameters (official ``xAR.__init__`` names in brackets).

    Attributes:
        grid_size: latent positions ``(h, w)`` (``img_size / vae_stride``; patch size 1).
        channels: latent channels (``vae_embed_dim``; the official ``pred`` hard-codes 16).
        entity, entity_size: what one autoregressive step generates (module docstring): ``entity_size`` is the
            cell side (``"cell"``; the official ``clusters = (h / k)^2``) or the stride (``"subsample"``).
        encoder_dim, encoder_depth, encoder_heads, decoder_*: the two block stacks (``*_embed_dim``, ...); the
            widths must be equal (both stacks read one condition vector) and head widths multiples of 4 (RoPE).
        mlp_ratio: SwiGLU hidden width ``int(D * mlp_ratio * 2 / 3)``.
        norm_eps: RMSNorm epsilon; rope_theta: RoPE base; frequency_embedding_size: sinusoid size of the time
            embedding; time_scale: t is embedded as ``int(t * time_scale)``.
        num_classes: class labels ``0 .. num_classes - 1``; null_label: the ``class_emb`` row of the null class
            (None: ``num_classes``; the released models use 1000, and their table has 1001 rows).
        label_drop_prob, attn_dropout, proj_dropout: training regularisation.
        tokenizer: registry name of the paired autoencoder (its latents, already scaled).
        num_steps, cfg_scale, cfg_schedule: sampling defaults (`generate` arguments left None); t_last: the last
            noisy time of the step grid (official 0.04).
        label_names: a name per class, or None.
    """

    architecture: str = "xar"
    grid_size: Sequence[int] = (16, 16)
    channels: int = 16
    entity: str = "cell"
    entity_size: int = 8
    encoder_dim: int = 768
    encoder_depth: int = 8
    encoder_heads: int = 12
    decoder_dim: int = 768
    decoder_depth: int = 8
    decoder_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    frequency_embedding_size: int = 256
    time_scale: int = 1000
    num_classes: int = 1000
    null_label: int | None = None
    label_drop_prob: float = 0.1
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    tokenizer: str | None = None
    num_steps: int = 40
    cfg_scale: float = 1.0
    cfg_schedule: str = "linear"
    t_last: float = 0.04
    label_names: Sequence[str] | None = None

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("num_steps", "cfg_scale", "cfg_schedule", "t_last", "label_names")

    def __post_init__(self):
        self.grid_size = tuple(int(v) for v in self.grid_size)
        if len(self.grid_size) != 2 or min(self.grid_size) < 1:
            raise ValueError(f"grid_size: (h, w) latent positions, got {self.grid_size}")
        entity_order(self.grid_size, self.entity, self.entity_size)  # checks that the entity tiles the grid
        if self.encoder_dim != self.decoder_dim:
            raise ValueError(f"encoder_dim ({self.encoder_dim}) and decoder_dim ({self.decoder_dim}) must be equal: "
                             "the decoder blocks read the same condition vector as the encoder blocks")
        for name in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name}_dim / {name}_heads must be a multiple of 4 (2D RoPE: a quarter of each "
                                 f"head's channels per axis and rotation pair), got {dim} / {heads}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.null_label is None:
            self.null_label = self.num_classes
        if self.null_label < self.num_classes:
            raise ValueError(f"null_label ({self.null_label}) must not be a class id (0..{self.num_classes - 1})")
        if not 0 <= self.label_drop_prob <= 1:
            raise ValueError(f"label_drop_prob must be in [0, 1], got {self.label_drop_prob}")
        if not 0 < self.t_last < 1:
            raise ValueError(f"t_last must be in (0, 1) (the score is undefined at t = 0), got {self.t_last}")
        if self.label_names is not None:
            self.label_names = tuple(str(n) for n in self.label_names)
            if len(self.label_names) != self.num_classes:
                raise ValueError(f"label_names: one per class ({self.num_classes}), got {len(self.label_names)}")
        check_choice("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)
        check_count("num_steps (steps)", self.num_steps)
        api.check_sampling_args(cfg_scale=self.cfg_scale)

    @property
    def seq_len(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def entity_order(grid_size: Sequence[int], entity: str, entity_size: int = 1) -> torch.Tensor:
    """``(E, n)``: the raster indices of every entity's positions, entities in generation order (module docstring).
    `ValueError` when the entity does not tile the grid."""
    h, w = grid_size
    raster = torch.arange(h * w).view(h, w)
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
    if entity == "image":
        return raster.reshape(1, -1)
    k = 1 if entity == "token" else entity_size
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or h % k or w % k:
        raise ValueError(f"entity {entity!r} of size {entity_size!r} does not tile the {h} x {w} latent grid (the "
                         "size must divide both sides)")
    if entity == "subsample":  # group (a, b): positions (a + k i, b + k j)
        return raster.view(h // k, k, w // k, k).permute(1, 3, 0, 2).reshape(k * k, -1)
    return raster.view(h // k, k, w // k, k).permute(0, 2, 1, 3).reshape(-1, k * k)  # cells, row-major


def rope_table(order: torch.Tensor, width: int, head_dim: int, theta: float) -> torch.Tensor:
    """EVA-02's 2D rotary table for positions given by raster index `order` ``(L,)`` on a grid `width` wide:
    ``(L, 2 head_dim)`` = ``[sin | cos]`` (timm's `apply_rot_embed_cat` layout); pairs of adjacent channels rotate
    together, the first half of the head with the row, the second half with the column."""
    dim = head_dim // 2
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (head_dim / 4,)
    rows, cols = (order // width).float(), (order % width).float()
    angles = torch.cat([(rows[:, None] * freqs).repeat_interleave(2, -1),
                        (cols[:, None] * freqs).repeat_interleave(2, -1)], dim=-1)  # (L, head_dim)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def discretize_time(t: torch.Tensor, time_scale: int) -> torch.Tensor:
    """The official time input of the embedding: ``(t * 1000).long()`` after a float32 multiply (truncation)."""
    return (t.float() * time_scale).long()


def draw_noise(shape: Sequence[int], generators: Sequence[torch.Generator | None], dtype: torch.dtype,
               device: torch.device | str) -> torch.Tensor:
    """``(B, *shape)`` N(0, I): item i from ``generators[i]`` (on that generator's device), or, when no item has one,
    one draw of the whole batch from torch's RNG on `device` (the official ``torch.randn([B, ...])`` of the initial
    noise on the CPU, and ``randn_like`` of the float64 state on the model's device)."""
    if all(g is None for g in generators):
        return torch.randn((len(generators), *shape), dtype=dtype, device=device)
    return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype, device=g.device if g is not None else
                                    device).to(device) for g in generators])


class RMSNorm(RmsNorm):
    """timm's RmsNorm computed in float32 and cast back before the weight, as the official ``RMSNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), self.normalized_shape, None, self.eps).type_as(x)
        return out if self.weight is None else out * self.weight


class TimestepEmbedder(nn.Module):
    """DiT's time embedding: 256 sinusoids ``[cos, sin]`` (diffusers' `get_timestep_embedding`), Linear-SiLU-Linear."""

    def __init__(self, dim: int, frequency_size: int):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_int: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding  # imported on use: `zoo list` stays light

        freq = get_timestep_embedding(t_int, self.frequency_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head attention with 2D RoPE on queries and keys; optionally writes its keys / values into a cache and
    attends over everything written before them."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None = None,
                cache: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """x ``(B, N, D)``, rope ``(N, 2 hd)``, mask ``(N, N)`` bool (True = may attend) or None; cache ``(2, R, H,
        L, hd)`` (R >= B rows): keys / values go to positions ``start .. start + N`` and the queries see ``0 ..
        start + N`` (no mask: the callers only cache whole entities, which see everything before them)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, hd)
        q, k = apply_rot_embed_cat(q, rope), apply_rot_embed_cat(k, rope)
        if cache is not None:
            cache[0, :b, :, start: start + n], cache[1, :b, :, start: start + n] = k, v
            k, v = cache[0, :b, :, : start + n], cache[1, :b, :, : start + n]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


def per_entity(x: torch.Tensor, entities: int) -> torch.Tensor:
    """``(B, N, D)`` -> ``(B, E, N / E, D)``: positions grouped by entity (for per-entity modulation)."""
    b, n, d = x.shape
    return x.view(b, entities, n // entities, d)


class Block(nn.Module):
    """Pre-norm block whose norms and branches are modulated per entity (AdaLN from the entity's condition)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm_eps: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.dim = dim
        self.norm1 = RMSNorm(dim, eps=norm_eps, affine=False)
        self.attn = Attention(dim, heads, attn_drop, proj_drop)
        self.norm2 = RMSNorm(dim, eps=norm_eps, affine=False)
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio * 2 / 3.0), act_layer=nn.GELU, drop=proj_drop)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None = None,
                cache: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        """x ``(B, N, D)`` holding ``E`` whole entities, cond ``(B, E, D)`` -> ``(B, N, D)``."""
        b, n, d = x.shape
        e = cond.shape[1]
        # (B, E, 1, D) each: broadcast over the entity's positions
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).view(b, e, 1, 6, d).unbind(3)
        h = (per_entity(self.norm1(x), e) * (1 + scale1) + shift1).view(b, n, d)
        x = x + (per_entity(self.attn(h, rope, mask, cache, start), e) * gamma1).view(b, n, d)
        h = (per_entity(self.norm2(x), e) * (1 + scale2) + shift2).view(b, n, d)
        return x + (per_entity(self.mlp(h), e) * gamma2).view(b, n, d)


# ----------------------------------------------------------------------------------------------------------------
# the generator


@register_architecture("xar")
class XARGenerator(Generator):
    """xAR over the (scaled) latents of a continuous autoencoder (see the module docstring). `generate` returns
    `Latents` ``(B, C, h, w)``; `sample` decodes them through the paired autoencoder."""

    config_class = XARConfig
    modality = "image"

    def __init__(self, config: XARConfig):
        super().__init__(config)
        c = config
        self.num_classes, self.label_names = c.num_classes, c.label_names
        order = entity_order(c.grid_size, c.entity, c.entity_size)
        self.num_entities, self.entity_len = order.shape
        self.seq_len, self.channels = c.seq_len, c.channels
        self.register_buffer("order", order.reshape(-1), persistent=False)  # sequence position -> raster index
        entity_of = torch.arange(c.seq_len) // self.entity_len
        self.register_buffer("attn_mask", entity_of[None, :] <= entity_of[:, None], persistent=False)  # (L, L)
        for name, heads in (("encoder", c.encoder_heads), ("decoder", c.decoder_heads)):
            table = rope_table(self.order, c.grid_size[1], getattr(c, f"{name}_dim") // heads, c.rope_theta)
            self.register_buffer(f"{name}_rope", table, persistent=False)
        dim = c.encoder_dim

        def blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
            return nn.ModuleList(Block(dim, heads, c.mlp_ratio, c.norm_eps, c.attn_dropout, c.proj_dropout)
                                 for _ in range(depth))

        self.class_emb = nn.Embedding(c.null_label + 1, dim)
        self.time_embed = TimestepEmbedder(dim, c.frequency_embedding_size)
        self.z_proj = nn.Linear(c.channels, dim)
        self.z_proj_ln = RMSNorm(dim, eps=c.norm_eps)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, dim))
        self.encoder_blocks = blocks(dim, c.encoder_depth, c.encoder_heads)
        self.encoder_norm = RMSNorm(dim, eps=c.norm_eps)
        self.decoder_embed = nn.Linear(dim, c.decoder_dim)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_dim))
        self.decoder_blocks = blocks(c.decoder_dim, c.decoder_depth, c.decoder_heads)
        self.decoder_norm = RMSNorm(c.decoder_dim, eps=c.norm_eps)
        self.pred = nn.Linear(c.decoder_dim, c.channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official init: N(0, 0.02) class table and positions, Xavier-uniform Linear weights with zero biases
        (``ada_lin`` included: not zero-initialised), unit RMSNorm weights."""
        for p in (self.class_emb.weight, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # --- layout ----------------------------------------------------------------------------------------------------

    def to_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, L, C)`` in entity order."""
        return latents.flatten(2).transpose(1, 2)[:, self.order]

    def from_sequence(self, seq: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` in entity order -> ``(B, C, h, w)``."""
        raster = torch.empty_like(seq)
        raster[:, self.order] = seq
        return raster.transpose(1, 2).reshape(seq.shape[0], self.channels, *self.config.grid_size)

    # --- the network -----------------------------------------------------------------------------------------------

    def condition(self, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """labels ``(B,)`` (null_label allowed), t ``(B, E)`` -> per-entity conditions ``(B, E, D)``."""
        t_int = discretize_time(t, self.config.time_scale)
        return self.class_emb(labels)[:, None] + self.time_embed(t_int.reshape(-1)).view(*t.shape, -1)

    def velocity(self, x: torch.Tensor, cond: torch.Tensor, first_entity: int = 0, *, mask: torch.Tensor | None = None,
                 caches: Sequence[torch.Tensor] | None = None, head: bool = True) -> torch.Tensor | None:
        """The network on whole entities. x ``(B, N, C)`` in entity order, entities ``first_entity ..`` (N = E' n),
        cond ``(B, E', D)`` -> velocity ``(B, N, C)``. `mask` ``(N, N)`` for uncached passes over several entities;
        `caches` (one per block, encoder then decoder, each ``(2, R, H, L, hd)``): write these entities' keys /
        values and attend to the cached earlier ones. ``head=False`` stops after the blocks (cache writes only)."""
        s = slice(first_entity * self.entity_len, first_entity * self.entity_len + x.shape[1])
        caches = list(caches) if caches is not None else [None] * (len(self.encoder_blocks) + len(self.decoder_blocks))
        h = self.z_proj_ln(self.z_proj(x) + self.encoder_pos_embed_learned[:, s])
        for blk, cache in zip(self.encoder_blocks, caches):
            h = blk(h, cond, self.encoder_rope[s], mask, cache, s.start)
        h = self.decoder_embed(self.encoder_norm(h)) + self.decoder_pos_embed_learned[:, s]
        for blk, cache in zip(self.decoder_blocks, caches[len(self.encoder_blocks):]):
            h = blk(h, cond, self.decoder_rope[s], mask, cache, s.start)
        return self.pred(self.decoder_norm(h)) if head else None

    # --- training --------------------------------------------------------------------------------------------------

    def sample_times(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, E)`` logit-normal times ``sigmoid(N(0, 1))`` (the official draws them with scipy)."""
        return torch.sigmoid(torch.randn(batch, self.num_entities, generator=generator, dtype=torch.float64)).float()

    def forward(self, latents: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, drop_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass (noisy context learning). latents ``(B, C, h, w)`` (scaled), labels ``(B,)`` ->
        ``(predicted velocity, target eps - x)``, each ``(B, L, C)`` in entity order.

        Args:
            t: ``(B, E)`` per-entity times (default: logit-normal draws from torch's RNG).
            noise: ``(B, L, C)`` eps in entity order (default: N(0, I) from torch's RNG).
            drop_labels: ``(B,)`` bool, labels replaced by the null class (default: in training mode, each with
                probability ``label_drop_prob``; none in eval mode).
        """
        x = self.to_sequence(self._check_latents(latents))  # (B, L, C)
        b = x.shape[0]
        labels = self._check_labels(labels, b)
        if drop_labels is None:
            drop_labels = torch.rand(b) < self.config.label_drop_prob if self.training else torch.zeros(b, dtype=bool)
        drop_labels = torch.as_tensor(drop_labels, device=labels.device)
        if drop_labels.dtype != torch.bool or drop_labels.shape != (b,):
            raise ValueError(f"drop_labels: expected ({b},) bool, got {tuple(drop_labels.shape)} {drop_labels.dtype}")
        labels = torch.where(drop_labels, self.config.null_label, labels)
        t = self.sample_times(b) if t is None else torch.as_tensor(t)
        noise = torch.randn_like(x) if noise is None else noise
        if not t.is_floating_point() or t.shape != (b, self.num_entities) or not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t: expected (B, E) = {(b, self.num_entities)} float times in [0, 1], got "
                             f"{tuple(t.shape)} {t.dtype}")
        if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.shape != x.shape:
            raise ValueError(f"noise: expected a float (B, L, C) = {tuple(x.shape)} tensor, got "
                             f"{tuple(getattr(noise, 'shape', ()))} {getattr(noise, 'dtype', type(noise).__name__)}")
        api.check_finite(noise, "noise")
        t, noise = t.to(x.device).float(), noise.to(x)
        t_pos = t.repeat_interleave(self.entity_len, dim=1)[..., None].to(x.dtype)  # (B, L, 1)
        x_t = (1 - t_pos) * x + t_pos * noise
        mask = self.attn_mask if self.num_entities > 1 else None
        return self.velocity(x_t, self.condition(labels, t), mask=mask), noise - x

    def loss(self, latents: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.training_loss(self(latents, labels, **kwargs), latents)

    @staticmethod
    def training_loss(output: tuple[torch.Tensor, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
        """The official loss: mean squared error over every position and channel."""
        prediction, target = output
        return ((prediction - target) ** 2).mean()

    @staticmethod
    def check_training_codes(config: XARConfig, data) -> None:
        """Pre-encoded latents ``(N, C, h, w)`` (`generators.trainer`) must match the config's channels, grid and
        classes: `ValueError` naming the fields to change."""
        latents, wrong = data.codes, {}
        if not latents.is_floating_point() or latents.ndim != 4:
            raise ValueError(f"xAR trains on continuous latents (N, C, h, w) of an autoencoder, got "
                             f"{latents.dtype} {tuple(latents.shape)} (from {data.meta.get('tokenizer')})")
        if latents.shape[1] != config.channels:
            wrong["channels"] = (config.channels, latents.shape[1])
        if tuple(latents.shape[2:]) != tuple(config.grid_size):
            wrong["grid_size"] = (config.grid_size, tuple(latents.shape[2:]))
        if int(data.labels.max()) >= config.num_classes:
            wrong["num_classes"] = (config.num_classes, int(data.labels.max()) + 1)
        if wrong:
            raise ValueError(f"xAR does not fit the latents of {data.meta.get('tokenizer')}: "
                             + ", ".join(f"{k} is {a}, the latents need {b}" for k, (a, b) in wrong.items()))

    # --- checks ----------------------------------------------------------------------------------------------------

    def _check_latents(self, latents) -> torch.Tensor:
        c = self.config
        want = (c.channels, *c.grid_size)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.ndim != 4 \
                or tuple(latents.shape[1:]) != want or latents.shape[0] == 0:
            got = (f"{latents.dtype} {tuple(latents.shape)}" if isinstance(latents, torch.Tensor)
                   else type(latents).__name__)
            raise ValueError(f"latents: expected float (B, {', '.join(map(str, want))}), got {got}")
        api.check_finite(latents, "latents")
        return latents.to(self.device, self.dtype)

    def _check_labels(self, labels, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device).reshape(-1)
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.shape != (batch,):
            raise ValueError(f"labels: expected {batch} integer class ids, got {tuple(labels.shape)} {labels.dtype}")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels: class ids must be in 0..{self.num_classes - 1}, got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.long()

    @property
    def dtype(self) -> torch.dtype:
        return self.pred.weight.dtype

    # --- sampling --------------------------------------------------------------------------------------------------

    def cfg_scales(self, cfg_scale: float, schedule: str) -> list[float]:
        """The guidance scale of every entity: the official linear ramp ``1 + (cfg - 1) e / (E - 1)`` (the whole
        scale for a single entity), or constant."""
        e_max = self.num_entities - 1
        if schedule == "constant" or e_max == 0:
            return [cfg_scale] * self.num_entities
        return [(cfg_scale - 1) * e / (e_max * 1.0) + 1 for e in range(self.num_entities)]

    def time_grid(self, num_steps: int) -> torch.Tensor:
        """``(num_steps + 1,)`` float64: ``linspace(1, t_last, num_steps)`` then 0."""
        return torch.cat([torch.linspace(1.0, self.config.t_last, num_steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])

    @staticmethod
    def drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The SDE drift ``v - 0.5 g^2 score`` with ``g^2 = 2 t`` and the score of the linear path from the velocity,
        in the official operation order (float64)."""
        alpha, d_alpha, sigma = 1 - t, -1.0, t
        ratio = alpha / d_alpha
        score = (ratio * v - x) / (sigma ** 2 - ratio * sigma)
        return v - 0.5 * (2 * t) * score

    def _new_caches(self, rows: int) -> list[torch.Tensor]:
        c = self.config
        shapes = [(c.encoder_heads, c.encoder_dim // c.encoder_heads)] * c.encoder_depth + \
                 [(c.decoder_heads, c.decoder_dim // c.decoder_heads)] * c.decoder_depth
        return [torch.zeros(2, rows, h, self.seq_len, hd, device=self.device, dtype=self.dtype) for h, hd in shapes]

    @torch.inference_mode()
    def generate(self, labels=None, *, num_samples: int = 1, cfg_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 steps: int | None = None, seed: int | Sequence[int] | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 cfg_schedule: str | None = None, initial_noise: torch.Tensor | None = None,
                 step_noise: torch.Tensor | None = None, prompt=None, progress: bool = False,
                 callback: Callable[[dict[str, Any]], None] | None = None) -> Latents:
        """Sample latents (the official ``sample_tokens``; see the module docstring).

        Args:
            labels: class ids, each giving `num_samples` items (label-major); None: the null class, unguided (the
                default guidance is then off; an explicit cfg_scale > 1 is an error).
            cfg_scale: guidance on the drift, applied to the entities whose scale is > 1 (as official: a scale
                <= 1 means none); cfg_schedule: "linear" (official) or "constant".
            steps: ``num_steps`` per entity (>= 1; the last one is the deterministic mean step).
            seed: an int (sample k of every label uses ``seed + k``) or one int per item: item i draws its noise from
                its own generator. generator: one ``torch.Generator`` shared in batch order (the official draws from
                torch's RNG: the same numbers after ``torch.manual_seed``), or one per item.
            initial_noise: ``(B, E, n, C)`` the starting noise of every entity; step_noise: ``(B, E, steps - 1, n,
                C)`` the noise of every stochastic step (float64): both to replay a run instead of drawing.
            temperature, top_k, top_p: not used by a flow model (None only); prompt: None (no prefix prompting).
            callback: after every step, ``{"entity", "step", "t", "cfg", "x"}`` (x: the entity's float64 state).
        """
        if prompt is not None or temperature is not None or top_k is not None or top_p is not None:
            raise ValueError("xAR samples by flow matching: temperature / top_k / top_p / prompt are not used "
                             "(leave them None)")
        c = self.config
        if labels is None and cfg_scale is not None and cfg_scale > 1:
            raise ValueError(f"cfg_scale {cfg_scale}: guidance needs labels (None samples the null class)")
        cfg_scale = (1.0 if labels is None else c.cfg_scale) if cfg_scale is None else cfg_scale
        cfg_schedule = c.cfg_schedule if cfg_schedule is None else cfg_schedule
        num_steps = c.num_steps if steps is None else steps
        check_choice("cfg_schedule", cfg_schedule, CFG_SCHEDULES)
        check_count("num_steps (steps)", num_steps)
        api.check_sampling_args(num_samples=num_samples, cfg_scale=cfg_scale)
        if labels is None:  # the null class, unguided
            items = None
            seeds = None if seed is None else ([int(seed) + k for k in range(num_samples)]
                                               if isinstance(seed, (int, np.integer)) else [int(s) for s in seed])
        else:
            items, seeds = self.item_labels_and_seeds(labels, num_samples, seed)
        batch = num_samples if items is None else len(items)
        generators = api.item_generators(batch, seed=seeds, generator=generator, device="cpu")
        e_count, n, ch = self.num_entities, self.entity_len, self.channels
        noise_shapes = {"initial_noise": (initial_noise, (batch, e_count, n, ch)),
                        "step_noise": (step_noise, (batch, e_count, num_steps - 1, n, ch))}
        for name, (value, shape) in noise_shapes.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != shape:
                raise ValueError(f"{name}: expected a float tensor of shape {shape}, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
            if value.numel():  # one step has no stochastic step: (B, E, 0, n, C)
                api.check_finite(value, name)
        device = self.device
        null = torch.full((batch,), c.null_label, dtype=torch.long, device=device)
        cond_labels = null if items is None else items.to(device)
        scales = self.cfg_scales(float(cfg_scale), cfg_schedule)
        guided = [s > 1 for s in scales]  # the official rule: a scale <= 1 is no guidance
        if any(guided) and c.label_drop_prob == 0:
            raise ValueError(f"{self.name or self.architecture} was configured without label dropout "
                             "(label_drop_prob 0): it has no trained null class to guide with (use cfg_scale 1)")
        row_labels = {False: cond_labels, True: torch.cat([cond_labels, null])}
        caches = self._new_caches(2 * batch if any(guided) else batch)
        t_steps = self.time_grid(num_steps)
        entities = []
        iterator = range(e_count)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=self.name or self.architecture, unit="entity")
        for e in iterator:
            labels_e = row_labels[guided[e]]
            rows = len(labels_e)
            if initial_noise is not None:
                x = initial_noise[:, e].to(device, torch.float64)
            else:
                x = draw_noise((n, ch), generators, torch.float32, "cpu").to(device, torch.float64)
            for i in range(num_steps):
                t_cur, t_next = t_steps[i], t_steps[i + 1]
                dt = t_next - t_cur
                last = i == num_steps - 1
                if not last:
                    eps = step_noise[:, e, i].to(device, torch.float64) if step_noise is not None else \
                        draw_noise((n, ch), generators, torch.float64, device)
                t_rows = torch.full((rows, 1), float(t_cur), dtype=torch.float64, device=device)
                x_rows = x.repeat(rows // batch, 1, 1)
                v = self.velocity(x_rows.to(self.dtype), self.condition(labels_e, t_rows), e, caches=caches)
                d = self.drift(v.double(), x_rows, t_rows[:, :, None])
                if guided[e]:
                    d_c, d_u = d.chunk(2)
                    d = d_u + scales[e] * (d_c - d_u)
                if last:
                    x = x + dt * d
                else:
                    x = x + d * dt + torch.sqrt(2 * t_cur) * (eps * torch.sqrt(dt.abs()))
                if callback is not None:
                    callback({"entity": e, "step": i, "t": float(t_cur), "cfg": scales[e], "x": x})
            z = x.float()
            entities.append(z)
            if e < e_count - 1:  # the clean entity at t = 0 into the cache, for the rows the next entity uses
                labels_next = row_labels[any(guided[e + 1:])]  # every row a later entity attends with
                rows_next = len(labels_next)
                t0 = torch.zeros(rows_next, 1, dtype=torch.float64, device=device)
                self.velocity(z.repeat(rows_next // batch, 1, 1).to(self.dtype), self.condition(labels_next, t0), e,
                              caches=caches, head=False)
        latents = self.from_sequence(torch.cat(entities, dim=1))
        meta: dict[str, Any] = {}
        if c.tokenizer:
            meta["model"] = c.tokenizer
        if items is not None:
            meta["labels"] = items.tolist()
        if seeds is not None:
            meta["seeds"] = list(seeds)
        return Latents(latents, meta)

    # --- the contract ----------------------------------------------------------------------------------------------

    def check_pairing(self, model) -> None:
        caps = model.capabilities() if hasattr(model, "capabilities") else {}
        channels, factor = caps.get("latent_channels"), caps.get("downsample")
        size = getattr(getattr(model, "config", None), "resolution", None)
        grid = (size // factor,) * 2 if size and factor else None
        if getattr(model, "kind", None) != "autoencoder" or channels != self.channels or grid != self.config.grid_size:
            raise ValueError(f"{self.name or self.architecture} generates {self.channels} x "
                             f"{self.config.grid_size[0]} x {self.config.grid_size[1]} latents: "
                             f"{getattr(model, 'name', None) or type(model).__name__} is not such an autoencoder")

    def capabilities(self) -> dict[str, Any]:
        c = self.config
        return {**super().capabilities(), "num_classes": self.num_classes, "grid_size": c.grid_size,
                "channels": c.channels, "entity": c.entity, "entities": self.num_entities,
                "default_sampling": {f: getattr(c, f) for f in XARConfig.RUNTIME_FIELDS}}

    def card_facts(self) -> dict[str, Any]:
        c = self.config
        size = "" if c.entity in ("token", "image") else f" {c.entity_size}"
        return {**super().card_facts(), "latent grid": f"{c.grid_size[0]} x {c.grid_size[1]} x {c.channels}",
                "entity": f"{c.entity}{size}: {self.num_entities} autoregressive steps of {self.entity_len} "
                          "positions",
                "blocks": f"{c.encoder_depth} + {c.decoder_depth} x {c.encoder_dim}",
                "sampling defaults": f"{c.num_steps} steps per entity, CFG {c.cfg_scale} ({c.cfg_schedule})"}

    def evaluate(self, split: str = "test", per_class: int = 1000) -> dict[str, Any]:
        """The zoo's generation table for this model against the real Fashion-MNIST `split`
        (generators.quality.protocol: references, this model at its settings and without CFG)."""
        from generators.quality import protocol

        return protocol.generation_table([self], per_class=per_class, split=split)

    def card_usage(self) -> str:
        return (f"latents = model.generate([0, {self.num_classes - 1}], num_samples=2, seed=0)  # Latents (B, C, h, w); "
                "per-item seeds\n"
                f"images = model.sample([0, {self.num_classes - 1}], num_samples=2, seed=0)   # decoded by the paired "
                "autoencoder")


__all__ = ["ENTITIES", "XARConfig", "XARGenerator", "entity_order", "rope_table"]
