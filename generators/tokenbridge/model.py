"""TokenBridge's generator: a MAR masked-autoregressive encoder-decoder over latent positions, and a small causal
transformer that emits each position's per-channel codes one channel at a time (the "dimension-wise AR head").

Faithful to the official ``models/tokenbridge.py`` (YuqingWang1029/TokenBridge, commit 3ede281); state-dict keys are
the official ones (`convert.checkpoint_filter_fn` only checks them and moves the quantizer buffers).

Codes: ``(B, L, C)``, L = h * w latent positions in raster order, C channels, each code in ``0..levels-1`` (the
`tokenizers_img.tokenbridge` quantizer). The head reads channels in ``channel_order`` (the official fixed order for
16 channels, "by frequency content"; the identity for other channel counts).

Backbone (MAR): the encoder sees ``buffer_size`` slots holding the class embedding (``fake_latent`` = the null class)
plus the *dequantised* values of the visible positions (``z_proj``, learned positions, ``z_proj_ln``; masked
positions are dropped), timm ViT blocks, a LayerNorm; the decoder pads the masked positions with ``mask_token``,
adds its own positions, runs its blocks, drops the buffer and adds ``output_pos_embed``: one feature per position.

Head: ``cond = condition_proj(feature)``; position ``c`` of the channel sequence is conditioned (AdaLN: shift, scale
and gate per block, shift and scale in the final layer) on ``cond + timesteps_embeddings[c]``; its input is the
embedding of the previous channel's code (``token_embeddings[c - 1]``), position 0 reads ``cond`` itself; causal
self-attention with LayerNorm on queries and keys; ``channel_heads[c]`` predicts channel ``channel_order[c]``.
Official quirk, kept: at sampling time position 0 reads ``cond + timesteps_embeddings[0]`` (training reads
``cond``). The official sampler recomputes the whole channel prefix for every channel; ours keeps a KV cache (the
same values: position c depends on positions <= c only).

Sampling (`generate`, the official ``sample_tokens``): a random order of the positions per item; ``num_iter`` steps;
after step ``i`` the first ``max(1, min(masked - 1, floor(L cos(pi/2 (i + 1) / num_iter))))`` positions of the
order stay masked (positions are revealed from the end of the order), the last step fills every remaining one; each
step re-runs encoder and decoder on the dequantised canvas; CFG mixes *decoder features*
``z_u + s (z_c - z_u)`` with ``s = 1 + (cfg - 1) (L - masked_next) / L`` ("linear", which never quite reaches
``cfg``) or ``s = cfg`` (any other schedule); the head then samples the predicted positions' codes with
``softmax(logits / temperature)`` (``sample=False``: argmax, the official ``temperature == 0``). Conditional and
unconditional passes run as one batch; per-item seeds (orders and draws from the item's own generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from tokenizers_img.tokenbridge.quantizer import GaussianQuantizer
from zoo import api
from zoo.api import Generator, Tokens, check_choice, check_count
from zoo.registry import register_architecture
from zoo.sampling import draw, filter_logits
from zoo.small_batch import MAX_ROWS, MIN_WIDTH, small_batch_linear

#: The official head order of the 16 KL-16 channels (a plain attribute upstream: in no checkpoint).
KL16_CHANNEL_ORDER = (8, 1, 10, 9, 6, 12, 4, 0, 3, 11, 7, 14, 2, 15, 13, 5)
CFG_SCHEDULES = ("linear", "constant")


@dataclass
class TokenBridgeConfig:
    """Hyperparameters (official ``TokenBridge.__init__`` names in brackets).

    Attributes:
        grid_size: latent positions ``(h, w)`` (``img_size / vae_stride``; patch size 1).
        channels: latent channels = codes per position (``vae_embed_dim``).
        levels, value_min, value_max, std_range: the quantizer (``quant_levels``, ``quant_min``, ``quant_max``).
        encoder_dim, encoder_depth, encoder_heads, decoder_*: the MAR encoder / decoder (``*_embed_dim``, ...).
        channel_dim, channel_depth, channel_heads: the head (``channel_embed_dim``, ...).
        mlp_ratio, norm_eps: MLP width ratio and LayerNorm epsilon of every block.
        num_classes, buffer_size: class labels and the class slots before the positions.
        mask_ratio_min: training mask ratio ~ truncated N(1, 0.25) on [mask_ratio_min, 1].
        label_drop_prob, attn_dropout, proj_dropout: training regularisation.
        channel_order: the head's channel order (None: the official KL-16 order for 16 channels, else identity).
        tokenizer: registry name of the paired tokenizer.
        num_iter, cfg_scale, cfg_schedule, temperature: sampling defaults (`generate` arguments left None).
        label_names: a name per class, or None.
    """

    architecture: str = "tokenbridge"
    grid_size: Sequence[int] = (16, 16)
    channels: int = 16
    levels: int = 64
    value_min: float = -5.0
    value_max: float = 5.0
    std_range: float = 3.0
    encoder_dim: int = 1024
    encoder_depth: int = 16
    encoder_heads: int = 16
    decoder_dim: int = 1024
    decoder_depth: int = 16
    decoder_heads: int = 16
    channel_dim: int = 1024
    channel_depth: int = 4
    channel_heads: int = 8
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    num_classes: int = 1000
    buffer_size: int = 64
    mask_ratio_min: float = 0.7
    label_drop_prob: float = 0.1
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    channel_order: Sequence[int] | None = None
    tokenizer: str | None = None
    num_iter: int = 64
    cfg_scale: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    label_names: Sequence[str] | None = None

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("num_iter", "cfg_scale", "cfg_schedule", "temperature",
                                                 "label_names")

    def __post_init__(self):
        self.grid_size = tuple(int(v) for v in self.grid_size)
        if len(self.grid_size) != 2 or min(self.grid_size) < 1:
            raise ValueError(f"grid_size: (h, w) latent positions, got {self.grid_size}")
        if self.channel_order is None:
            self.channel_order = KL16_CHANNEL_ORDER if self.channels == 16 else tuple(range(self.channels))
        self.channel_order = tuple(int(c) for c in self.channel_order)
        if sorted(self.channel_order) != list(range(self.channels)):
            raise ValueError(f"channel_order: a permutation of 0..{self.channels - 1}, got {self.channel_order}")
        for name in ("encoder", "decoder", "channel"):
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads:
                raise ValueError(f"{name}_dim {dim} is not a multiple of {name}_heads {heads}")
        if not 0 < self.mask_ratio_min <= 1 or not 0 <= self.label_drop_prob <= 1:
            raise ValueError(f"mask_ratio_min must be in (0, 1] and label_drop_prob in [0, 1], got "
                             f"{self.mask_ratio_min}, {self.label_drop_prob}")
        if self.num_classes < 1 or self.buffer_size < 1:
            raise ValueError("num_classes and buffer_size must be >= 1 (the class slots carry the condition)")
        if self.label_names is not None:
            self.label_names = tuple(str(n) for n in self.label_names)
            if len(self.label_names) != self.num_classes:
                raise ValueError(f"label_names: one per class ({self.num_classes}), got {len(self.label_names)}")
        check_choice("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)
        check_count("num_iter (steps)", self.num_iter)
        api.check_sampling_args(temperature=self.temperature, cfg_scale=self.cfg_scale)

    @property
    def seq_len(self) -> int:
        return self.grid_size[0] * self.grid_size[1]


def masked_after_step(seq_len: int, num_iter: int, step: int, masked: int) -> int:
    """Positions still masked after `step` (0-based) when `masked` are masked before it (the official float rule)."""
    target = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return max(1, min(masked - 1, target))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------------------------------------------
# the dimension-wise AR head


class ChannelAttention(nn.Module):
    """Causal self-attention with LayerNorm on per-head queries and keys; optionally reads / writes a KV cache."""

    def __init__(self, dim: int, heads: int, norm_eps: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, H, n, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        causal = True
        if cache is not None:  # decoding one position at a time: it sees every written one
            if n > 1 and start > 0:
                raise ValueError("the cached channel head takes one position per call after the first")
            k_cache, v_cache = cache
            k_cache[:, :, start: start + n], v_cache[:, :, start: start + n] = k, v
            k, v = k_cache[:, :, : start + n], v_cache[:, :, : start + n]
            causal = n > 1
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class ChannelBlock(nn.Module):
    """Pre-norm causal block whose norms are modulated (shift, scale) and branches gated by a per-position condition."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm_eps: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = ChannelAttention(dim, heads, norm_eps, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cache=None, start: int = 0) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), cache, start)
        return x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class ChannelFinal(nn.Module):
    """Affine-free LayerNorm, then the condition's shift and scale."""

    def __init__(self, dim: int, norm_eps: float):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return modulate(self.norm_final(x), shift, scale)


# ----------------------------------------------------------------------------------------------------------------
# the generator


@register_architecture("tokenbridge")
class TokenBridgeGenerator(Generator):
    """TokenBridge over the per-channel codes of a Gaussian VAE (see the module docstring). `generate` returns
    `Tokens` of layout ``"channels"`` ``(B, L, C)``; `sample` decodes them through the paired tokenizer."""

    config_class = TokenBridgeConfig
    modality = "image"

    def __init__(self, config: TokenBridgeConfig):
        super().__init__(config)
        c = config
        self.num_classes, self.label_names = c.num_classes, c.label_names
        self.seq_len, self.channels, self.levels, self.buffer_size = c.seq_len, c.channels, c.levels, c.buffer_size
        self.register_buffer("channel_order", torch.tensor(c.channel_order), persistent=False)
        self.register_buffer("inv_channel_order", torch.argsort(self.channel_order), persistent=False)
        self.quantizer = GaussianQuantizer(c.levels, c.value_min, c.value_max, c.std_range)
        norm = partial(nn.LayerNorm, eps=c.norm_eps)
        block = partial(Block, mlp_ratio=c.mlp_ratio, qkv_bias=True, norm_layer=norm, proj_drop=c.proj_dropout,
                        attn_drop=c.attn_dropout)
        slots = c.seq_len + c.buffer_size
        # MAR encoder
        self.class_emb = nn.Embedding(c.num_classes, c.encoder_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.encoder_dim))  # the null class
        self.z_proj = nn.Linear(c.channels, c.encoder_dim)
        self.z_proj_ln = norm(c.encoder_dim)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, slots, c.encoder_dim))
        self.encoder_blocks = nn.ModuleList(block(c.encoder_dim, c.encoder_heads) for _ in range(c.encoder_depth))
        self.encoder_norm = norm(c.encoder_dim)
        # MAR decoder
        self.decoder_embed = nn.Linear(c.encoder_dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, slots, c.decoder_dim))
        self.decoder_blocks = nn.ModuleList(block(c.decoder_dim, c.decoder_heads) for _ in range(c.decoder_depth))
        self.decoder_norm = norm(c.decoder_dim)
        self.output_pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.decoder_dim))
        # dimension-wise AR head
        self.condition_proj = nn.Linear(c.decoder_dim, c.channel_dim)
        self.channel_embed = nn.Parameter(torch.zeros(1, c.channels, c.channel_dim))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, c.channels, c.channel_dim))
        self.token_embeddings = nn.ModuleList(nn.Embedding(c.levels, c.channel_dim) for _ in range(c.channels - 1))
        self.channel_blocks = nn.ModuleList(
            ChannelBlock(c.channel_dim, c.channel_heads, c.mlp_ratio, c.norm_eps, c.attn_dropout, c.proj_dropout)
            for _ in range(c.channel_depth))
        self.channel_norm = norm(c.channel_dim)
        self.channel_final = ChannelFinal(c.channel_dim, c.norm_eps)
        self.channel_heads = nn.ModuleList(nn.Linear(c.channel_dim, c.levels) for _ in range(c.channels))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official init: N(0, 0.02) class / null / mask / position / channel embeddings, Xavier-uniform Linear
        weights with zero biases, unit LayerNorms, zero AdaLN projections (the token embeddings keep N(0, 1))."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.channel_embed,
                  self.timesteps_embeddings, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.output_pos_embed):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in [*(b.adaLN_modulation[-1] for b in self.channel_blocks), self.channel_final.adaLN_modulation[-1]]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # --- the MAR backbone ------------------------------------------------------------------------------------------

    def class_embedding(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B, D)``: the class embedding, or ``fake_latent`` (the null class) where `labels` is None."""
        if labels is None:
            return self.fake_latent.expand(batch, -1)
        return self.class_emb(labels)

    def encode_visible(self, values: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """values ``(B, L, C)`` dequantised, mask ``(B, L)`` bool (True = masked; the same count per row), class
        embedding ``(B, D)`` -> encoder output ``(B, buffer + visible, D)``."""
        b = values.shape[0]
        x = self.z_proj(values)  # (B, L, D)
        x = torch.cat([class_embedding[:, None].expand(-1, self.buffer_size, -1), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], dim=1).logical_not()
        x = x[keep].view(b, -1, x.shape[-1])  # masked positions dropped
        for blk in self.encoder_blocks:
            x = blk(x)
        return self.encoder_norm(x)

    def decode_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output ``(B, buffer + visible, D)`` and mask ``(B, L)`` -> one feature per position
        ``(B, L, D_dec)``."""
        b = x.shape[0]
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], dim=1).logical_not()
        full = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1).clone()
        full[keep] = x.reshape(-1, x.shape[-1])
        x = full + self.decoder_pos_embed_learned
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return x[:, self.buffer_size:] + self.output_pos_embed

    # --- the head --------------------------------------------------------------------------------------------------

    def channel_logits(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced head (the official training path): features ``(n, D_dec)``, targets ``(n, C)`` in head
        order -> logits ``(n, C, levels)`` in head order."""
        cond = self.condition_proj(features)  # (n, Dc)
        prev = [emb(targets[:, i]) for i, emb in enumerate(self.token_embeddings)]
        x = torch.stack([cond, *prev], dim=1) + self.channel_embed  # (n, C, Dc)
        conds = cond[:, None] + self.timesteps_embeddings  # (n, C, Dc)
        for blk in self.channel_blocks:
            x = blk(x, conds)
        x = self.channel_final(self.channel_norm(x), conds)
        return torch.stack([head(x[:, i]) for i, head in enumerate(self.channel_heads)], dim=1)

    def sample_channels(self, features: torch.Tensor, generators: Sequence[torch.Generator | None], *,
                        temperature: float, top_k: int = 0, top_p: float = 1.0, sample: bool = True,
                        forced: torch.Tensor | None = None,
                        callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """features ``(B, k, D_dec)`` (k positions per item) -> codes ``(B, k, C)`` in head order, one channel at a
        time with a KV cache; item i draws from ``generators[i]``. `forced` ``(B, k, C)``: feed these codes instead
        of drawing (teacher forcing on the sampling path); `callback(c, logits (B k, levels))` sees every step."""
        b, k, _ = features.shape
        n, c = b * k, self.config
        cond = self.condition_proj(features.reshape(n, -1))[:, None] + self.timesteps_embeddings  # (n, C, Dc)
        head_dim = c.channel_dim // c.channel_heads
        cache = features.new_zeros(len(self.channel_blocks), 2, n, c.channel_heads, self.channels, head_dim)
        x = cond[:, :1] + self.channel_embed[:, :1]  # the sampling quirk: position 0 reads cond + timestep 0
        out = []
        # few rows (batch 1, many steps): CPU products as (W @ x.T).T
        with small_batch_linear(features.device.type == "cpu" and n <= MAX_ROWS and c.channel_dim >= MIN_WIDTH):
            for i in range(self.channels):
                out.append(self._channel_step(i, x, cond, cache, generators, b, k, temperature, top_k, top_p, sample,
                                              forced, callback))
                if i < self.channels - 1:
                    x = self.token_embeddings[i](out[-1])[:, None] + self.channel_embed[:, i + 1: i + 2]
        return torch.stack(out, dim=1).view(b, k, self.channels)

    def _channel_step(self, i, x, cond, cache, generators, b, k, temperature, top_k, top_p, sample, forced,
                      callback) -> torch.Tensor:
        """Channel `i` of every row: its input ``x (n, 1, Dc)`` through the cached blocks -> its codes ``(n,)``."""
        n = b * k
        h = x
        for j, blk in enumerate(self.channel_blocks):
            h = blk(h, cond[:, i: i + 1], (cache[j, 0], cache[j, 1]), i)
        h = self.channel_final(self.channel_norm(h), cond[:, i: i + 1])
        logits = self.channel_heads[i](h[:, 0])  # (n, levels)
        if callback is not None:
            callback(i, logits)
        if forced is not None:
            return forced.reshape(n, -1)[:, i]
        probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1) if sample else logits
        return draw(probs.view(b, k, -1), generators, sample).reshape(n)

    # --- training --------------------------------------------------------------------------------------------------

    def sample_orders(self, batch: int, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
        """``(B, L)`` a random permutation of the positions per item."""
        return torch.stack([torch.randperm(self.seq_len, generator=g, device="cpu" if g is None else g.device)
                            .to(self.device) for g in generators])

    def training_mask_count(self) -> int:
        """Positions to mask: ``ceil(L r)``, r ~ N(1, 0.25) truncated to [mask_ratio_min, 1] (torch's RNG)."""
        lo = (self.config.mask_ratio_min - 1.0) / 0.25
        cdf_lo = 0.5 * (1 + math.erf(lo / math.sqrt(2)))
        u = cdf_lo + (0.5 - cdf_lo) * torch.rand(()).item()
        r = 1.0 + 0.25 * torch.special.ndtri(torch.tensor(u, dtype=torch.float64)).item()
        return math.ceil(self.seq_len * min(max(r, self.config.mask_ratio_min), 1.0))

    def forward(self, codes: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor | None = None,
                num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass (the official training forward). codes ``(B, L, C)``, labels ``(B,)`` -> ``(logits
        (n, C, levels), targets (n, C))`` at the masked positions (rows in ``(item, position)`` order), channels in
        head order. `orders` ``(B, L)`` and `num_masked` default to fresh draws (torch's RNG); in training mode
        labels are dropped to the null class with probability ``label_drop_prob``."""
        codes = self.check_codes(codes)
        b = codes.shape[0]
        labels = self._check_labels(labels, b)
        if orders is None:
            orders = self.sample_orders(b, [None] * b)
        num_masked = self.training_mask_count() if num_masked is None else num_masked
        mask = torch.zeros(b, self.seq_len, dtype=torch.bool, device=codes.device)
        mask.scatter_(1, orders[:, :num_masked].to(codes.device), True)
        class_embedding = self.class_emb(labels)
        if self.training and self.config.label_drop_prob > 0:
            drop = (torch.rand(b) < self.config.label_drop_prob).to(codes.device)[:, None]
            class_embedding = torch.where(drop, self.fake_latent.expand(b, -1), class_embedding)
        values = self.quantizer.dequantize(codes)
        features = self.decode_features(self.encode_visible(values, mask, class_embedding), mask)
        targets = codes[..., self.channel_order][mask]  # (n, C) head order
        return self.channel_logits(features[mask], targets), targets

    def loss(self, codes: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        """Cross-entropy over the masked positions' codes (mean over positions x channels)."""
        return self.training_loss(self(codes, labels, **kwargs), codes)

    @staticmethod
    def training_loss(output: tuple[torch.Tensor, torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
        """The official loss from `forward`'s ``(logits (n, C, levels), targets (n, C))``."""
        logits, targets = output
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @staticmethod
    def check_training_codes(config: TokenBridgeConfig, tokens) -> None:
        """Pre-tokenized codes ``(N, L, C)`` must match the config's grid, channels, levels and classes
        (`generators.trainer`): `ValueError` naming the fields to change."""
        wrong = {}
        if tokens.codes.ndim != 3 or tokens.codes.shape[2] != config.channels:
            wrong["channels"] = (config.channels, tokens.codes.shape[2] if tokens.codes.ndim == 3 else 1)
        if tokens.grid_size is None or tuple(config.grid_size) != tuple(tokens.grid_size):
            wrong["grid_size"] = (config.grid_size, tokens.grid_size or "a grid (these codes carry none)")
        if config.levels != tokens.vocab_size:
            wrong["levels"] = (config.levels, tokens.vocab_size)
        if int(tokens.labels.max()) >= config.num_classes:
            wrong["num_classes"] = (config.num_classes, int(tokens.labels.max()) + 1)
        if wrong:
            raise ValueError(f"TokenBridge does not fit the tokenizer {tokens.meta.get('tokenizer')}: "
                             + ", ".join(f"{k} is {a}, the codes need {b}" for k, (a, b) in wrong.items()))

    # --- sampling --------------------------------------------------------------------------------------------------

    def check_codes(self, codes) -> torch.Tensor:
        if isinstance(codes, Tokens):
            if codes.layout != "channels":
                raise ValueError(f"codes: TokenBridge reads Tokens of layout 'channels', got {codes.layout!r}")
            codes = codes.codes
        return api.check_codes(torch.as_tensor(codes), self.levels, 3, "codes")

    def _check_labels(self, labels, batch: int) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device).reshape(-1)
        if labels.is_floating_point() or labels.shape != (batch,):
            raise ValueError(f"labels: expected {batch} integer class ids, got {tuple(labels.shape)} {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels: class ids must be in 0..{self.num_classes - 1}")
        return labels.long()

    @torch.inference_mode()
    def generate(self, labels=None, *, num_samples: int = 1, cfg_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 steps: int | None = None,
                 seed: int | Sequence[int] | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 cfg_schedule: str | None = None, orders: torch.Tensor | None = None, sample: bool = True,
                 prompt=None, progress: bool = False, callback: Callable[[dict[str, Any]], None] | None = None
                 ) -> Tokens:
        """Sample codes (the official ``sample_tokens``; see the module docstring).

        Args:
            labels: class ids, each giving `num_samples` items (label-major); None: the null class for every item.
            cfg_scale: guidance on the decoder features (used when != 1).
            temperature: of the head's softmax; top_k / top_p: filtering of every channel's logits (None = off,
                as the official sampler has none).
            steps: ``num_iter``, the number of masked-prediction steps (1 .. L useful).
            seed: an int (sample k of every label uses ``seed + k``) or one int per item: per-item generators for
                the order and the draws. generator: one ``torch.Generator`` shared by the batch (the official draws
                from torch's RNG: one ``multinomial`` per channel over all rows), or one per item.
            cfg_schedule: "linear" (the official default) or "constant".
            orders: ``(B, L)`` position orders to use instead of drawing them (the official code draws them from
                numpy's RNG; give them to reproduce an official run).
            sample: False = the most likely code per channel (the official ``temperature == 0``).
            callback: called after every step with ``{"step", "mask", "predicted", "cfg", "tokens"}``.
        """
        if prompt is not None:
            raise ValueError("TokenBridge has no prefix prompting: its order is random (prompt must be None)")
        c = self.config
        cfg_scale = c.cfg_scale if cfg_scale is None else cfg_scale
        temperature = c.temperature if temperature is None else temperature
        cfg_schedule = c.cfg_schedule if cfg_schedule is None else cfg_schedule
        num_iter = c.num_iter if steps is None else steps
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        check_choice("cfg_schedule", cfg_schedule, CFG_SCHEDULES)
        check_count("num_iter (steps)", num_iter)
        api.check_sampling_args(num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                                cfg_scale=cfg_scale)
        items, seeds = self.item_labels_and_seeds(labels, num_samples, seed) if labels is not None else \
            self._unconditional_items(num_samples, seed)
        batch = num_samples if items is None else len(items)
        device, seq_len = self.device, self.seq_len
        generators = api.item_generators(batch, seed=seeds, generator=generator, device="cpu")
        if orders is None:
            orders = self.sample_orders(batch, generators)
        orders = torch.as_tensor(orders, device=device)
        if orders.is_floating_point() or orders.dtype == torch.bool:
            raise ValueError(f"orders: integer position indices expected, got {orders.dtype}")
        orders = orders.long()
        if orders.shape != (batch, seq_len) or not torch.equal(orders.sort(1).values,
                                                                 torch.arange(seq_len, device=device).expand_as(orders)):
            raise ValueError(f"orders: one permutation of 0..{seq_len - 1} per item ({batch}), got shape "
                             f"{tuple(orders.shape)}")
        items = None if items is None else items.to(device)
        guided = cfg_scale != 1.0
        cond_emb = self.class_embedding(items, batch)
        class_embedding = torch.cat([cond_emb, self.class_embedding(None, batch)]) if guided else cond_emb
        codes = torch.zeros(batch, seq_len, self.channels, dtype=torch.long, device=device)
        mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        masked = seq_len
        iterator = range(num_iter)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=self.name or self.architecture, unit="step")
        rows = 2 if guided else 1  # conditional and unconditional passes as one batch
        for step in iterator:
            values = self.quantizer.dequantize(codes)
            rows_mask = mask.repeat(rows, 1)  # the conditional and unconditional rows share the canvas
            x = self.encode_visible(values.repeat(rows, 1, 1), rows_mask, class_embedding)
            z = self.decode_features(x, rows_mask)  # (rows B, L, D_dec)
            masked_next = masked_after_step(seq_len, num_iter, step, masked)
            mask_next = torch.zeros_like(mask).scatter_(1, orders[:, :masked_next], True)
            to_predict = mask if step == num_iter - 1 else mask & ~mask_next
            k = int(to_predict[0].sum())
            scale = torch.tensor(cfg_scale, dtype=torch.float32)
            if guided:
                if cfg_schedule == "linear":  # float32, as the official tensors
                    scale = 1 + (cfg_scale - 1) * (seq_len - torch.tensor(float(masked_next))) / seq_len
                z_c, z_u = z.split(batch)
                feats = z_u[to_predict] + scale * (z_c[to_predict] - z_u[to_predict])
            else:
                feats = z[to_predict]
            if k:
                new = self.sample_channels(feats.view(batch, k, -1), generators, temperature=float(temperature),
                                           top_k=int(top_k), top_p=float(top_p), sample=sample)
                codes[to_predict] = new.view(batch * k, -1)[:, self.inv_channel_order]
            if callback is not None:
                callback({"step": step, "mask": mask, "predicted": to_predict, "cfg": float(scale),
                          "tokens": codes.clone()})
            mask, masked = mask_next, masked_next
        return self._to_tokens(codes, items, seeds)

    def _unconditional_items(self, num_samples: int, seed):
        api.check_sampling_args(num_samples=num_samples)
        if seed is None or not isinstance(seed, (int, np.integer)):
            return None, (None if seed is None else [int(s) for s in seed])
        return None, [int(seed) + k for k in range(num_samples)]

    def _to_tokens(self, codes: torch.Tensor, labels, seeds) -> Tokens:
        meta: dict[str, Any] = {}
        if labels is not None:
            meta["labels"] = labels.tolist()
        if seeds is not None:
            meta["seeds"] = list(seeds)
        if self._paired is not None:
            return self._paired.make_tokens(codes, **meta)
        if self.config.tokenizer:
            meta["model"] = self.config.tokenizer
        return Tokens(codes, "channels", (self.levels,), meta=meta)

    def check_pairing(self, tok) -> None:
        vocab = getattr(tok, "vocab_sizes", None)
        if vocab is None or set(vocab) != {self.levels} or getattr(tok, "token_layout", None) != "channels":
            raise ValueError(f"{self.name or self.architecture} models {self.channels} channels of {self.levels} "
                             f"codes: {getattr(tok, 'name', None) or type(tok).__name__} is not such a tokenizer")

    def capabilities(self) -> dict[str, Any]:
        c = self.config
        return {**super().capabilities(), "num_classes": self.num_classes, "grid_size": c.grid_size,
                "channels": c.channels, "vocab_size": c.levels,
                "default_sampling": {f: getattr(c, f) for f in TokenBridgeConfig.RUNTIME_FIELDS}}

    def card_facts(self) -> dict[str, Any]:
        c = self.config
        return {**super().card_facts(), "latent grid": f"{c.grid_size[0]} x {c.grid_size[1]} x {c.channels}",
                "levels per channel": c.levels, "encoder / decoder": f"{c.encoder_dim} x {c.encoder_depth} / "
                f"{c.decoder_dim} x {c.decoder_depth}", "channel head": f"{c.channel_dim} x {c.channel_depth}",
                "sampling defaults": f"{c.num_iter} steps, CFG {c.cfg_scale} ({c.cfg_schedule}), "
                                     f"temperature {c.temperature}"}

    def evaluate(self, split: str = "test", per_class: int = 1000) -> dict[str, Any]:
        """The zoo's generation table for this model against the real Fashion-MNIST `split`
        (generators.quality.protocol: references, this model at its settings and without CFG)."""
        from generators.quality import protocol

        return protocol.generation_table([self], per_class=per_class, split=split)

    def card_usage(self) -> str:
        return (f"tokens = model.generate([0, {self.num_classes - 1}], num_samples=2, seed=0)  # (B, L, C) per-channel "
                "codes; per-item seeds\n"
                f"images = model.sample([0, {self.num_classes - 1}], num_samples=2, seed=0)   # decoded by the paired "
                "tokenizer")


__all__ = ["KL16_CHANNEL_ORDER", "TokenBridgeConfig", "TokenBridgeGenerator", "masked_after_step"]
