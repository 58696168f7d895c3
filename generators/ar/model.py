"""LlamaGen's class-conditional GPT (Sun et al., 2024) as a generic `zoo.Generator` over any single-codebook tokenizer.

Paper: https://arxiv.org/abs/2406.06525 - official code: https://github.com/FoundationVision/LlamaGen
(``autoregressive/models/gpt.py`` and ``generate.py``).

Architecture, as the official ``Transformer`` (c2i): a class token (``num_classes + 1`` embedding rows, the last one
the CFG null class) followed by the code embeddings; pre-norm Llama blocks (RMSNorm with float32 statistics, fused
bias-free ``wqkv`` attention with grouped-query support and rotary embeddings, SwiGLU FFN); final RMSNorm and a
bias-free head. Rotary embeddings are 2-D for token grids (interleaved pairs; the first half of the pairs rotate by
the row, the second half by the column) or 1-D for sequences (audio frames, 1-D tokenizers). The class token's rows
of the rotary table are **zero** (its query and key become zero, as in the official code; the released weights
depend on it).

Sampling is the official ``generate``: CFG on the logits ``uncond + (cond - uncond) * s`` when ``s > 1`` (conditional
and null-class rows in one batch), ``cfg_interval``, temperature ``max(t, 1e-5)``, top-k then top-p filtering,
softmax, then a draw. What differs (none of it changes the tokens beyond float rounding):

* one static KV cache per `generate` call, allocated once for ``(2B if CFG else B)`` rows and exactly the positions
  that are fed; decode steps attend to the written prefix of the cache (no mask, no recomputation); the rotary table
  is computed once per device;
* prefill and decode return only the last position's logits;
* once ``cfg_interval`` has switched guidance off for good, the null-class half of the batch is dropped (the
  official code keeps computing it and throws it away);
* the draw ``argmax(probs / q)``, ``q ~ Exp(1)``, is what ``torch.multinomial(probs, 1)`` computes; with ``seed=``
  every item draws its ``q`` from its own ``torch.Generator``, so an item's tokens do not depend on the rest of the
  batch; with one shared ``generator`` (or torch's global RNG) the whole ``(B, V)`` noise is drawn at once, exactly
  as the official code does, so ``torch.manual_seed(s)`` reproduces the official samples;
* prefix prompting (``prompt=``) and a per-step ``callback`` for inspection.

Beyond the official model: **Token-Shuffle** (``shuffle_window = s > 1``, `token_shuffle`: the transformer reads
``s x s`` windows of the grid and emits the ``s^2`` tokens of a window per step) and CFG schedules
(``cfg_schedule``: constant, the official rule, or ramps over the tokens). ``s = 1`` with the constant schedule is
the official model exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, SwiGLU
from torch import nn

from zoo import api
from zoo.api import Generator, Tokens, check_choice
from zoo.registry import register_architecture
from zoo.sampling import draw, filter_logits
from zoo.small_batch import MAX_ROWS, MIN_WIDTH, small_batch_linear

from .token_shuffle import CFG_SCHEDULES, TokenShuffle, TokenUnshuffle, cfg_scale_at, shuffle_codes, unshuffle_codes


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ARConfig:
    """Hyperparameters (official ``ModelArgs`` names where they exist).

    Attributes:
        dim, n_layer, n_head, n_kv_head: width, depth, query heads, key/value heads (None = n_head; fewer = GQA).
        multiple_of, ffn_dim_multiplier: SwiGLU hidden size = multiple of `multiple_of` above
            ``int(ffn_dim_multiplier * int(8 * dim / 3))``.
        rope_base, norm_eps, initializer_range: rotary base, RMSNorm epsilon, std of the official normal init.
        vocab_size: codes per position (the paired tokenizer's single vocabulary).
        block_size: tokens per item (256 for a 16 x 16 grid, 576 for 24 x 24).
        grid_size: ``(rows, cols)`` of the token grid (2-D rotary embedding, raster reading order), or None for a 1-D
            sequence (1-D rotary embedding: audio frames, 1-D tokenizers). ``rows * cols == block_size``.
        num_classes: class labels 0..num_classes-1 (0 = unconditional: one learned start token, no labels).
        cls_token_num: class tokens before the codes (the c2i model has 1; only 1 is supported).
        class_dropout_prob: training-time label dropout to the null class (> 0 also creates the null-class row that
            CFG needs).
        token_dropout_p, attn_dropout_p, resid_dropout_p, ffn_dropout_p, drop_path_rate: training regularisation.
        modality: what the paired tokenizer decodes to ("image" or "audio").
        tokenizer: registry name of the paired tokenizer (filled from the ModelSpec by `zoo.load`), or None.
        cfg_scale, cfg_interval, temperature, top_k, top_p: sampling defaults (`generate` arguments left None).
        label_names: a name per class (`zoo generate --class NAME`, grid captions), or None.
        shuffle_window: Token-Shuffle window ``s`` (`token_shuffle`): the transformer reads ``s x s`` windows of the
            token grid, ``block_size / s^2`` positions, and emits one window per step. 1 = the plain GPT.
        shuffle_mlp_blocks: residual MLP blocks of the shuffle and of the unshuffle (``s > 1`` only).
        cfg_schedule: how the guidance scale ramps over the image tokens (`token_shuffle.CFG_SCHEDULES`;
            ``"constant"`` is LlamaGen's).
    """

    architecture: str = "llamagen-gpt"
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    vocab_size: int = 16384
    block_size: int = 256
    grid_size: tuple[int, int] | None = (16, 16)
    num_classes: int = 1000
    cls_token_num: int = 1
    class_dropout_prob: float = 0.1
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    modality: str = "image"
    tokenizer: str | None = None
    cfg_scale: float = 2.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    label_names: tuple[str, ...] | None = None
    shuffle_window: int = 1
    shuffle_mlp_blocks: int = 2
    cfg_schedule: str = "constant"

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p",
                                                 "label_names", "cfg_schedule")

    def __post_init__(self):
        if self.label_names is not None:
            self.label_names = tuple(str(n) for n in self.label_names)
            if len(self.label_names) != self.num_classes:
                raise ValueError(f"label_names: one per class ({self.num_classes}), got {len(self.label_names)}")
        if self.grid_size is not None:
            self.grid_size = tuple(int(v) for v in self.grid_size)
            if len(self.grid_size) != 2 or self.grid_size[0] * self.grid_size[1] != self.block_size:
                raise ValueError(f"grid_size {self.grid_size} must be (rows, cols) with rows * cols == block_size "
                                 f"({self.block_size})")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not a multiple of n_head {self.n_head}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {kv}")
        head_dim = self.dim // self.n_head
        if head_dim % (4 if self.grid_size is not None else 2):
            raise ValueError(f"head_dim {head_dim} must be a multiple of {4 if self.grid_size else 2} for the "
                             f"{'2-D' if self.grid_size else '1-D'} rotary embedding")
        if self.cls_token_num != 1:
            raise ValueError(f"cls_token_num: the class-conditional model has one class token, got "
                             f"{self.cls_token_num}")
        if self.num_classes < 0 or self.vocab_size < 1 or self.block_size < 1:
            raise ValueError("num_classes must be >= 0, vocab_size and block_size >= 1")
        if self.modality not in ("image", "audio"):
            raise ValueError(f"modality must be 'image' or 'audio', got {self.modality!r}")
        api.check_sampling_args(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                                cfg_scale=self.cfg_scale)
        check_choice("cfg_schedule", self.cfg_schedule, CFG_SCHEDULES)
        s = self.shuffle_window
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"shuffle_window must be an int >= 1, got {s!r}")
        if s > 1:
            if self.grid_size is None or self.grid_size[0] % s or self.grid_size[1] % s:
                raise ValueError(f"shuffle_window {s}: Token-Shuffle needs a token grid that tiles into {s} x {s} "
                                 f"windows, got grid_size {self.grid_size}")
            if self.dim % (s * s):
                raise ValueError(f"shuffle_window {s}: dim {self.dim} must be a multiple of s^2 = {s * s}")
            if self.shuffle_mlp_blocks < 0:
                raise ValueError(f"shuffle_mlp_blocks must be >= 0, got {self.shuffle_mlp_blocks}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def slots(self) -> int:
        """Tokens per transformer position (``shuffle_window ** 2``)."""
        return self.shuffle_window ** 2

    @property
    def seq_len(self) -> int:
        """Transformer positions per item after the class token (``block_size / shuffle_window ** 2``)."""
        return self.block_size // self.slots

    @property
    def seq_grid(self) -> tuple[int, int] | None:
        """The grid the transformer positions form (the window grid), or None for a 1-D sequence."""
        if self.grid_size is None:
            return None
        return self.grid_size[0] // self.shuffle_window, self.grid_size[1] // self.shuffle_window

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)


# ----------------------------------------------------------------------------------------------------------------
# rotary embeddings


def rope_table(config: ARConfig, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(cls_token_num + seq_len, head_dim / 2)`` float32: row p rotates position p (with
    Token-Shuffle the positions are windows, rotated by their place in the window grid). The class-token rows are
    zero (not the identity), as in the official table."""
    n = config.head_dim
    with torch.device(device):
        if config.grid_size is not None:
            half = n // 2
            freqs = 1.0 / (config.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
            rows, cols = config.seq_grid
            fy = torch.outer(torch.arange(rows), freqs)                                # (rows, n/4)
            fx = torch.outer(torch.arange(cols), freqs)                                # (cols, n/4)
            angles = torch.cat([fy[:, None, :].expand(rows, cols, -1), fx[None, :, :].expand(rows, cols, -1)],
                               dim=-1).flatten(0, 1)                                   # (rows * cols, n/2)
        else:
            freqs = 1.0 / (config.rope_base ** (torch.arange(0, n, 2)[: n // 2].float() / n))
            angles = torch.outer(torch.arange(config.block_size), freqs)              # (L, n/2)
        zeros = torch.zeros(config.cls_token_num, n // 2)
        return torch.cat([zeros, torch.cos(angles)]), torch.cat([zeros, torch.sin(angles)])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x (B, S, H, D)`` in float32 by the rows ``(S, D/2)``."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(3).type_as(x)


# ----------------------------------------------------------------------------------------------------------------
# layers


class RMSNorm(nn.Module):
    """The official RMSNorm: statistics in float32, rounded to the input dtype, then times the weight.

    Not ``timm.layers.RmsNorm``: it computes the statistics in the input dtype (bf16 inputs lose precision) and
    multiplies by the weight before rounding; in float32 both agree bit for bit."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Fused bias-free ``wqkv`` (rows ``[q; k; v]``), GQA, rotary q/k, SDPA; optionally reads/writes a KV cache."""

    def __init__(self, config: ARConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.n_kv_head = config.n_kv_head or config.n_head
        self.dim = config.dim
        self.wqkv = nn.Linear(config.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.attn_dropout_p = config.attn_dropout_p
        self.resid_dropout = nn.Dropout(config.resid_dropout_p)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        b, s, _ = x.shape
        kv = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv, kv], dim=-1)
        q = apply_rope(q.view(b, s, self.n_head, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(b, s, self.n_kv_head, self.head_dim), cos, sin).transpose(1, 2)
        v = v.view(b, s, self.n_kv_head, self.head_dim).transpose(1, 2)
        mask, causal = None, True
        if cache is not None:
            k_cache, v_cache = cache
            k_cache[:, :, start: start + s] = k
            v_cache[:, :, start: start + s] = v
            k, v = k_cache[:, :, : start + s], v_cache[:, :, : start + s]
            if s == 1:
                causal = False  # the newest position sees every written one
            elif start > 0:
                causal = False
                mask = torch.ones(s, start + s, dtype=torch.bool, device=x.device).tril(start)
        if self.n_kv_head != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.attn_dropout_p if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, self.dim)))


class TransformerBlock(nn.Module):
    def __init__(self, config: ARConfig, drop_path: float):
        super().__init__()
        self.attention = Attention(config)
        # timm's SwiGLU is the official FFN: w2(silu(w1 x) * w3 x) with w1 -> fc1_g, w3 -> fc1_x, w2 -> fc2, no
        # biases, dropout after the output projection only (drop1 = 0).
        self.feed_forward = SwiGLU(config.dim, config.ffn_hidden, bias=False, drop=(0.0, config.ffn_dropout_p))
        self.attention_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x, cos, sin, cache=None, start: int = 0):
        h = x + self.drop_path(self.attention(self.attention_norm(x), cos, sin, cache, start))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))


class ClassEmbedder(nn.Module):
    """Class embeddings; row ``num_classes`` is the null class (CFG, label dropout, unconditional start token)."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.has_null = dropout_prob > 0 or num_classes == 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, D)


# ----------------------------------------------------------------------------------------------------------------
# sampling


# ----------------------------------------------------------------------------------------------------------------
# the generator


@register_architecture("llamagen-gpt")
class ARGenerator(Generator):
    """LlamaGen's GPT over the codes of any tokenizer with one code per position (see the module docstring).

    `generate` returns `Tokens` of the paired tokenizer (``config.tokenizer``, or one given to `pair`); without a
    paired tokenizer it returns plain `Tokens` of layout ``"grid"`` (full grids of a 2-D model) or ``"sequence"``
    with no ``model`` in their meta.
    """

    config_class = ARConfig
    modality = "image"
    #: Decoding with at most this many rows per step (batch, x2 with CFG) runs its float32 CPU matrix products as
    #: ``(W @ x.T).T`` (`zoo.small_batch.small_batch_linear`: 2-4x faster products on CPU) when the model is at
    #: least `small_batch_min_width` wide; 0 turns it off.
    small_batch_rows: int = MAX_ROWS
    small_batch_min_width: int = MIN_WIDTH

    def __init__(self, config: ARConfig):
        super().__init__(config)
        c = config
        self.modality = c.modality
        self.num_classes = c.num_classes or None
        self.label_names = c.label_names
        self.cls_token_num, self.block_size = c.cls_token_num, c.block_size
        # registration order = the official one, so the official init under the same seed gives the same weights
        self.cls_embedding = ClassEmbedder(c.num_classes, c.dim, c.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout_p)
        dpr = [x.item() for x in torch.linspace(0, c.drop_path_rate, c.n_layer, device="cpu")]
        self.layers = nn.ModuleList(TransformerBlock(c, dpr[i]) for i in range(c.n_layer))
        self.norm = RMSNorm(c.dim, eps=c.norm_eps)
        self.output = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.slots = c.slots
        if c.shuffle_window > 1:  # Token-Shuffle; s = 1 adds nothing (the plain GPT, the official state dict)
            self.shuffle = TokenShuffle(c.dim, c.shuffle_window, c.shuffle_mlp_blocks, c.norm_eps)
            self.unshuffle = TokenUnshuffle(c.dim, c.shuffle_window, c.shuffle_mlp_blocks, c.norm_eps)
        self._rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, float32, built on first use
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official init: every Linear / Embedding weight ~ N(0, initializer_range), the head zero. The
        Token-Shuffle MLPs keep PyTorch's default init (scaled to their fan-in): with N(0, 0.02) the compressed
        token embeddings reach the transformer ~100x smaller than with it, and training starts much slower."""
        std = self.config.initializer_range
        shuffle = {id(m) for name in ("shuffle", "unshuffle") if hasattr(self, name) for m in getattr(self, name).modules()}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module) not in shuffle:
                nn.init.normal_(module.weight, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    # --- tables ----------------------------------------------------------------------------------------------------
    def rope(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 rotary table ``(cos, sin)`` on `device` (computed once per device)."""
        device = torch.device(device or self.device)
        key = str(device)
        if key not in self._rope:
            self._rope[key] = rope_table(self.config, device)
        return self._rope[key]

    def freqs_cis(self) -> torch.Tensor:
        """The rotary table in the official layout ``(cls_token_num + block_size, head_dim / 2, 2)``."""
        cos, sin = self.rope("cpu")
        return torch.stack([cos, sin], dim=-1)

    @property
    def has_null_class(self) -> bool:
        return self.cls_embedding.has_null

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    # --- teacher-forced ------------------------------------------------------------------------------------------
    def _check_labels(self, labels, batch: int, device) -> torch.Tensor:
        """Labels for `forward`: class ids, or the null class (``num_classes``) where it exists; None = null."""
        if labels is None:
            if self.num_classes is not None:
                raise ValueError(f"{self.name or self.architecture} is class-conditional: give labels")
            return torch.full((batch,), self.null_class, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device).reshape(-1)
        if labels.is_floating_point() or labels.shape[0] != batch:
            raise ValueError(f"labels: expected {batch} integer class ids, got {tuple(labels.shape)} {labels.dtype}")
        hi = self.cls_embedding.embedding_table.num_embeddings - 1
        if int(labels.min()) < 0 or int(labels.max()) > hi:
            raise ValueError(f"labels: class ids must be in 0..{hi}"
                             + (f" ({hi} = the null class)" if self.has_null_class else ""))
        return labels.long()

    def forward(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Teacher-forced logits: ``codes (B, L)`` (1 <= L <= block_size, reading order) -> ``(B, L, V)`` float32,
        where ``logits[:, j]`` predicts ``codes[:, j]`` from the class token and ``codes[:, :j]`` (the official
        ``model(idx=codes[:, :-1], cond_idx=labels)``). With Token-Shuffle, ``logits[:, j]`` predicts ``codes[:, j]``
        from the class token and the windows before j's window, and L must be whole rows of windows. In training
        mode labels are dropped to the null class with probability ``class_dropout_prob``."""
        codes = api.check_codes(codes, self.config.vocab_size, 2, "codes")
        b, n = codes.shape
        if n > self.block_size:
            raise ValueError(f"codes: at most block_size = {self.block_size} positions, got {n}")
        labels = self._check_labels(labels, b, codes.device)
        s, grid = self.config.shuffle_window, self.config.grid_size
        if s > 1:
            windows = shuffle_codes(codes, grid, s)                                   # (B, W, s^2)
            inputs = self.shuffle(self.tok_embeddings(windows[:, :-1]))               # (B, W - 1, D)
        else:
            inputs = self.tok_embeddings(codes[:, :-1])                               # (B, L - 1, D)
        h = self.tok_dropout(torch.cat([self.cls_embedding(labels), inputs], dim=1))
        cos, sin = self.rope(h.device)
        cos, sin = cos[: h.shape[1]], sin[: h.shape[1]]
        for layer in self.layers:
            h = layer(h, cos, sin)
        if s > 1:
            return unshuffle_codes(self.output(self.unshuffle(self.norm(h))).float(), grid, s)  # (B, L, V)
        return self.output(self.norm(h)).float()

    def loss(self, codes: torch.Tensor, labels=None) -> torch.Tensor:
        """Mean next-token cross-entropy over every position (the official training loss)."""
        return self.training_loss(self(codes, labels), codes)

    # --- generation ----------------------------------------------------------------------------------------------
    @staticmethod
    def check_training_codes(config: ARConfig, tokens) -> None:
        """The GPT's vocabulary, length and grid must be those of the pre-tokenized codes (`generators.trainer`):
        `ValueError` naming the fields to change."""
        if tokens.codes.ndim != 2:
            raise ValueError(f"the tokenizer {tokens.meta.get('tokenizer')} has {tokens.codes.shape[-1]} codes per "
                             "position; the GPT reads one (a single-codebook tokenizer)")
        wrong = {}
        if config.vocab_size != tokens.vocab_size:
            wrong["vocab_size"] = (config.vocab_size, tokens.vocab_size)
        if config.block_size != tokens.codes.shape[1]:
            wrong["block_size"] = (config.block_size, tokens.codes.shape[1])
        if (tuple(config.grid_size) if config.grid_size else None) != tokens.grid_size:
            wrong["grid_size"] = (config.grid_size, tokens.grid_size)
        if config.num_classes and int(tokens.labels.max()) >= config.num_classes:
            wrong["num_classes"] = (config.num_classes, int(tokens.labels.max()) + 1)
        if wrong:
            raise ValueError(f"the GPT does not fit the tokenizer {tokens.meta.get('tokenizer')}: "
                             + ", ".join(f"{k} is {a}, the codes need {b}" for k, (a, b) in wrong.items()))

    @staticmethod
    def training_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy from `forward`'s logits ``(B, L, V)`` and the codes ``(B, L)``."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))

    def check_pairing(self, tok) -> None:
        if tuple(tok.vocab_sizes) != (self.config.vocab_size,):
            raise ValueError(f"{self.name or self.architecture} models {self.config.vocab_size} codes per position, "
                             f"its tokenizer {tok.name or tok.architecture} has vocabularies {tok.vocab_sizes}")

    def _tokenizer(self):
        """The paired tokenizer, or None when none is paired."""
        if self._paired is None and not self.config.tokenizer:
            return None
        return self.paired_model()

    def _prompt_codes(self, prompt, batch: int, device) -> torch.Tensor:
        if prompt is None:
            return torch.zeros(batch, 0, dtype=torch.long, device=device)
        if isinstance(prompt, Tokens):
            tok = self._tokenizer()
            seq = tok.to_sequence(prompt) if tok is not None else prompt.to_sequence()
            if seq.shape[-1] != 1:
                raise ValueError(f"prompt: this model reads one code per position, the tokens have {seq.shape[-1]}")
            if prompt.lengths is not None:
                lengths = prompt.lengths.unique()
                if len(lengths) != 1:
                    raise ValueError(f"prompt: every item's prompt must have the same length, got "
                                     f"{prompt.lengths.tolist()}")
                seq = seq[:, : int(lengths[0])]
            codes = seq[..., 0]
        else:
            codes = torch.as_tensor(prompt)
            if codes.ndim == 1:
                codes = codes[None]
        if codes.ndim != 2:
            raise ValueError(f"prompt: expected codes (B, k) in reading order, got shape {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            return torch.zeros(batch, 0, dtype=torch.long, device=device)
        codes = api.check_codes(codes, self.config.vocab_size, 2, "prompt")
        if codes.shape[1] >= self.block_size:
            raise ValueError(f"prompt: {codes.shape[1]} tokens leave nothing to generate (block_size "
                             f"{self.block_size}: at most {self.block_size - 1} prompt tokens)")
        if codes.shape[0] == 1:
            codes = codes.expand(batch, -1)
        elif codes.shape[0] != batch:
            raise ValueError(f"prompt: expected 1 or {batch} rows (one per output item), got {codes.shape[0]}")
        return codes.to(device)

    @torch.no_grad()
    def generate(self, labels=None, *, prompt: Tokens | torch.Tensor | None = None, num_samples: int = 1,
                 cfg_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, steps: int | None = None, seed: int | Sequence[int] | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 cfg_interval: int | None = None, cfg_schedule: str | None = None, sample: bool = True,
                 progress: bool = False, callback: Callable[[dict[str, Any]], None] | None = None) -> Tokens:
        """Sample codes autoregressively (the official ``generate``; see the module docstring).

        Args:
            labels: class ids, each giving `num_samples` items (label-major); None for unconditional models.
            prompt: codes to continue, ``(B, k)`` / ``(k)`` in reading order or `Tokens` (of the paired tokenizer);
                one row per output item, or one row for all. The output starts with them.
            cfg_scale: guidance scale (used when > 1; the null class needs ``class_dropout_prob > 0``).
            temperature, top_k (0 = off), top_p (1 = off): as the official ``sample``.
            steps: tokens to generate (default: the rest of ``block_size``; partial grids are refused when the
                paired tokenizer reads grids).
            seed: an int (sample k of every label uses ``seed + k``) or one int per item: per-item generators.
            generator: one ``torch.Generator`` shared by the batch (the official draws), or one per item.
            cfg_interval: guidance is applied to tokens ``0..cfg_interval + 1`` of the sequence (positions counted
                from the first prompt token), then switched off for good; -1 = always (the official rule: decode
                step i, which draws token i + 1, is unguided once ``cfg_interval > -1 and i > cfg_interval``).
            cfg_schedule: how the scale ramps over the tokens (`token_shuffle.cfg_scale_at`: "constant" = the
                official rule, "linear", "half-linear", "cosine").
            sample: False = greedy (the most likely token; no random draws).
            callback: called after every step (one token, or one window of ``s^2`` tokens with Token-Shuffle:
                then every tensor below has a slot dimension before the vocabulary) with ``{"index", "model_logits", "logits", "probs", "tokens"}``:
                the raw model output rows, the logits handed to sampling (after CFG, before temperature), the
                probabilities drawn from, and the tokens drawn.
        """
        c = self.config
        cfg_scale = c.cfg_scale if cfg_scale is None else cfg_scale
        temperature = c.temperature if temperature is None else temperature
        top_k = c.top_k if top_k is None else top_k
        top_p = c.top_p if top_p is None else top_p
        cfg_interval = c.cfg_interval if cfg_interval is None else cfg_interval
        cfg_schedule = c.cfg_schedule if cfg_schedule is None else cfg_schedule
        check_choice("cfg_schedule", cfg_schedule, CFG_SCHEDULES)
        api.check_sampling_args(num_samples=num_samples, temperature=temperature, top_k=top_k, top_p=top_p,
                                cfg_scale=cfg_scale, steps=steps)
        if isinstance(cfg_interval, bool) or not isinstance(cfg_interval, (int, float)):
            raise ValueError(f"cfg_interval must be a number (-1 = guide every token), got {cfg_interval!r}")
        labels, seeds = self.item_labels_and_seeds(labels, num_samples, seed)
        batch = num_samples if labels is None else len(labels)
        device = self.device
        prompt_codes = self._prompt_codes(prompt, batch, device)
        k = prompt_codes.shape[1]
        steps = self.block_size - k if steps is None else steps
        if k + steps > self.block_size:
            raise ValueError(f"steps: {k} prompt tokens + {steps} new ones exceed block_size {self.block_size}")
        tok = self._tokenizer()
        if tok is not None and tok.token_layout in ("grid", "residual_grid") and k + steps != self.block_size:
            raise ValueError(f"steps: {tok.name or tok.architecture} decodes full grids of {self.block_size} tokens, "
                             f"{k} prompt + {steps} new tokens do not fill one")
        if self.slots > 1:  # Token-Shuffle reads and writes whole windows
            window_row = self.config.shuffle_window * self.config.grid_size[1]
            if k % window_row or (k + steps) % window_row:
                raise ValueError(f"Token-Shuffle (window {self.config.shuffle_window}) generates whole rows of "
                                 f"windows: the prompt ({k} tokens) and prompt + steps ({k + steps}) must be "
                                 f"multiples of {window_row} tokens")
        guided = cfg_scale > 1.0
        if guided and (self.num_classes is None or not self.has_null_class):
            raise ValueError(f"cfg_scale {cfg_scale} > 1 needs a null class, which "
                             f"{self.name or self.architecture} does not have"
                             + (" (an unconditional model)" if self.num_classes is None else
                                " (class_dropout_prob = 0)") + ": use cfg_scale <= 1")
        generators = api.item_generators(batch, seed=seeds, generator=generator, device=device)
        cond = (torch.full((batch,), self.null_class, dtype=torch.long) if labels is None else labels).to(device)
        rows = 2 * batch if guided else batch  # rows of every decode-step product
        routed = device.type == "cpu" and rows <= self.small_batch_rows and c.dim >= self.small_batch_min_width
        with small_batch_linear(routed, self.small_batch_rows):
            codes = self._sample(cond, prompt_codes, steps, guided=guided, cfg_scale=float(cfg_scale),
                                 cfg_interval=cfg_interval, cfg_schedule=cfg_schedule,
                                 temperature=float(temperature), top_k=int(top_k),
                                 top_p=float(top_p), generators=generators, sample=sample, progress=progress,
                                 callback=callback)
        return self._to_tokens(codes, tok, labels, seeds)

    def _sample(self, cond: torch.Tensor, prompt: torch.Tensor, steps: int, *, guided: bool, cfg_scale: float,
                cfg_interval: float, cfg_schedule: str, temperature: float, top_k: int, top_p: float, generators,
                sample: bool, progress: bool, callback) -> torch.Tensor:
        """The decoding loop with a static KV cache: prefill (class token + prompt), then one position per step
        (one token, or one window of ``slots`` tokens with Token-Shuffle). Returns codes ``(B, k + steps)`` in
        reading order."""
        c = self.config
        slots, grid = self.slots, c.grid_size
        batch, k = prompt.shape
        kw, sw = k // slots, steps // slots  # prompt positions and decode steps (windows with Token-Shuffle)
        total = k + steps
        rows = 2 * batch if guided else batch
        n_pos = c.cls_token_num + kw + sw - 1  # the last drawn position is never fed back
        n_kv = c.n_kv_head or c.n_head
        dtype = self.tok_embeddings.weight.dtype
        cache = torch.zeros(c.n_layer, 2, rows, n_kv, max(n_pos, 1), c.head_dim, dtype=dtype, device=cond.device)
        caches = [(cache[i, 0], cache[i, 1]) for i in range(c.n_layer)]
        cos, sin = self.rope(cond.device)
        out = torch.empty(batch, kw + sw, slots, dtype=torch.long, device=cond.device)  # (B, positions, slots)
        out[:, :kw] = shuffle_codes(prompt, grid, c.shuffle_window) if slots > 1 else prompt[..., None]

        if slots > 1:  # every code's compressed embedding, once per call: (V, D / slots)
            compressed = self.shuffle.compress(self.tok_embeddings.weight)

        def embed(codes: torch.Tensor) -> torch.Tensor:  # (rows, n, slots) -> (rows, n, D)
            return self.shuffle.mix(compressed[codes]) if slots > 1 else self.tok_embeddings(codes[..., 0])

        def run(h: torch.Tensor, start: int) -> torch.Tensor:
            n = h.shape[1]
            cs, sn = cos[start: start + n], sin[start: start + n]
            for layer, kv in zip(self.layers, caches):
                h = layer(h, cs, sn, kv, start)
            h = self.norm(h[:, -1])  # (rows, D): the last position only
            return self.output(self.unshuffle(h) if slots > 1 else h[:, None]).float()  # (rows, slots, V)

        ids = torch.cat([cond, torch.full_like(cond, self.null_class)]) if guided else cond
        h = self.cls_embedding.embedding_table(ids)[:, None]
        if kw:
            h = torch.cat([h, embed(out[:, :kw].repeat(rows // batch, 1, 1))], dim=1)
        model_logits = run(h, 0)
        iterator = range(sw)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"{self.name or self.architecture}", unit="tok" if slots == 1 else "step")
        for t in iterator:
            pos = kw + t  # position of this step's token (window) in the sequence
            if t > 0:
                prev = out[:, pos - 1: pos]
                if guided:
                    prev = prev.repeat(2, 1, 1)
                model_logits = run(embed(prev), c.cls_token_num + pos - 1)
            logits = model_logits
            if guided:
                first = pos * slots  # the official rule, in tokens: decode step i = first - 1
                if cfg_interval <= -1 or first - 1 <= cfg_interval:
                    scale = cfg_scale_at(cfg_schedule, cfg_scale, first + slots, total)
                    cond_logits, uncond_logits = logits.split(batch, dim=0)
                    logits = uncond_logits + (cond_logits - uncond_logits) * scale
                else:  # guidance is off for good: keep the conditional half of the batch only
                    guided = False
                    caches = [(kc[:batch], vc[:batch]) for kc, vc in caches]
                    logits = logits[:batch]
            probs = F.softmax(filter_logits(logits / max(temperature, 1e-5), top_k, top_p), dim=-1)
            out[:, pos] = draw(probs, generators, sample)
            if callback is not None:
                squeeze = (lambda x: x[:, 0]) if slots == 1 else (lambda x: x)
                callback({"index": pos * slots, "model_logits": squeeze(model_logits), "logits": squeeze(logits),
                          "probs": squeeze(probs), "tokens": squeeze(out[:, pos])})
        if slots > 1:
            return unshuffle_codes(out, grid, c.shuffle_window)
        return out[..., 0]

    def _to_tokens(self, codes: torch.Tensor, tok, labels, seeds) -> Tokens:
        meta = {}
        if labels is not None:
            meta["labels"] = labels.tolist()
        if seeds is not None:
            meta["seeds"] = list(seeds)
        grid = self.config.grid_size
        if tok is not None:
            # a grid tokenizer gets this model's grid, which may differ from the tokenizer's default input size
            # (a 384-px GPT with a VQ registered at 256 px): the VQ decoder is convolutional and takes any grid
            return tok.from_sequence(codes[..., None], grid_size=grid if tok.token_layout == "grid" else None,
                                     **meta)
        if grid is not None and codes.shape[1] == self.block_size:
            return Tokens(codes.view(len(codes), *grid), "grid", (self.config.vocab_size,), meta=meta)
        return Tokens(codes, "sequence", (self.config.vocab_size,), meta=meta)

    # --- card ------------------------------------------------------------------------------------------------------
    def capabilities(self) -> dict[str, Any]:
        c = self.config
        return {**super().capabilities(), "num_classes": self.num_classes, "tokens_per_item": c.block_size,
                "tokens_per_step": c.slots, "grid_size": c.grid_size, "vocab_size": c.vocab_size,
                "default_sampling": {f: getattr(c, f) for f in ARConfig.RUNTIME_FIELDS}}

    def card_facts(self) -> dict[str, Any]:
        c = self.config
        layout = "grid" if c.grid_size else "sequence"
        shape = f"{c.grid_size[0]} x {c.grid_size[1]} grid, raster order" if c.grid_size else "1-D sequence"
        return {
            **super().card_facts(),
            "layers / heads / width": f"{c.n_layer} / {c.n_head} / {c.dim}",
            "token layout": f"{layout} ({shape}, {c.block_size} tokens per item)",
            "vocabulary": c.vocab_size,
            "rotary embedding": ("2-D (rows, columns" + (" of the window grid)" if c.slots > 1 else ")")
                                 if c.grid_size else "1-D"),
            **({"token-shuffle": f"{c.shuffle_window} x {c.shuffle_window} windows ({c.seq_len} positions, "
                                 f"{c.slots} tokens per step), {c.shuffle_mlp_blocks} residual MLP blocks each side"}
               if c.slots > 1 else {}),
            "sampling defaults": f"cfg {c.cfg_scale:g} ({c.cfg_schedule}), temperature {c.temperature:g}, top-k {c.top_k}, "
                                 f"top-p {c.top_p:g}",
        }

    def evaluate(self, split: str = "test", per_class: int | None = None) -> dict[str, Any]:
        """The zoo's generation table for this model (references, this model at its settings and without CFG),
        against the real `split`: Fashion-MNIST for image generators (generators.quality.protocol, 1,000 samples
        per class), spoken digits for audio generators (generators.quality.audio_protocol, 100 per digit)."""
        from generators.quality import audio_protocol, protocol

        judge = protocol if self.modality == "image" else audio_protocol
        per_class = per_class or (1000 if self.modality == "image" else 100)
        return judge.generation_table([self], per_class=per_class, split=split)

    def card_usage(self) -> str:
        cls = f"[0, {self.num_classes - 1}], " if self.num_classes else ""
        return (
            f"tokens = model.generate({cls}num_samples=2, seed=0)   # codes of the paired tokenizer; per-item seeds\n"
            f"images = model.sample({cls}num_samples=2, seed=0)     # generate, then decode through it"
        )


__all__ = ["ARConfig", "ARGenerator", "apply_rope", "draw", "filter_logits", "find_multiple", "rope_table"]
