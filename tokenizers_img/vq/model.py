"""LlamaGen's VQ image tokenizer (Sun et al., 2024): a VQGAN-style CNN with an l2-normalised 8-dim codebook.

Paper: https://arxiv.org/abs/2406.06525 - official code: https://github.com/FoundationVision/LlamaGen
(``tokenizer/tokenizer_image/vq_model.py``; this is a re-implementation with the same module layout and key names).

Pipeline: image in [-1, 1] -> encoder (``conv_in``; per level ``num_res_blocks`` res blocks, single-head attention after
each of them at the last level, a stride-2 downsample after every level but the last; mid res-attn-res; GroupNorm,
swish, ``conv_out``) -> ``quant_conv`` (1x1 to ``codebook_embed_dim``) -> nearest l2-normalised codebook row -> ids.
Decoding: ids -> l2-normalised codebook rows -> ``post_quant_conv`` -> decoder (mid first, then the levels deepest
first, ``num_res_blocks + 1`` res blocks each, attention at the deepest level, nearest x2 + conv upsampling) -> image
in [-1, 1]. GroupNorm has 32 groups (``norm_groups``) and eps 1e-6 everywhere, swish is ``x * sigmoid(x)``.

Differences from the official code (none changes the ids; float outputs agree within float32 rounding, see
`tests/test_llamagen_vq.py`): attention runs through ``F.scaled_dot_product_attention`` instead of bmm + softmax;
the distance matrix is computed in chunks of rows (same formula, bounded memory for large batches); the lookup runs in
float32 when the model is cast to bf16 / fp16 (``quant_conv`` and the codebook stay float32); no training losses,
no usage log.

Quantizer (why not vector-quantize-pytorch). The project rule is to use vector-quantize-pytorch for VQ; its
``VectorQuantize(use_cosine_sim=True)`` (1.32) was checked against the official lookup and does not reproduce it:

* it never normalises the stored codebook at lookup (``dist = einsum(l2norm(x), embed)``; rows are normalised only at
  init and in its EMA update). The official lookup normalises ``embedding.weight`` on every call, and trained rows
  need not be unit norm (gradient steps move them off the sphere; the parity fixture's rows have norms 0.5-2 on
  purpose): loaded as stored, it picks other ids
  (24 of the fixture's 32 positions differ; with pre-normalised rows all 32 agree). Storing pre-normalised rows
  would make the converter lossy (the row norms cannot be given back by `to_official`);
* it ranks by cosine similarity (argmax of ``x . e``), the official code by ``|z|^2 + |e|^2 - 2 z . e`` computed in
  float32 (argmin). Both are the same ranking in exact arithmetic, but float32 rounding (up to 1e-6 in the official
  distance) decides near-ties differently: against a random unit 16,384 x 8 codebook, 3 in 100,000 random unit
  latents have a top-2 gap below 1e-6, and the two rules picked different ids for 1 of 409,600 latents (measured
  here, torch 2.14 on CPU). Rare, but not the official ids bit for bit;
* its state dict holds ``_codebook.embed`` (1, K, D) plus training buffers ``embed_avg`` (K x D), ``cluster_size``
  and ``initted`` that the official checkpoints do not have, and its l2norm uses eps 1e-6 (official F.normalize: 1e-12).

So the codebook is a plain ``nn.Embedding`` (official key ``quantize.embedding.weight``) with the official distance
and argmin, in float32 whatever the model's dtype. The training-only ``quantize.codebook_used`` buffer is not kept.

Preprocessing. The official demo and training code crop with ADM's ``center_crop_arr`` (PIL: BOX-halve while the short
side is >= 2x the size, BICUBIC resize of the short side, centre crop, uint8). ``encode(resize="center_crop")``
applies the zoo's rule instead (`zoo.io.resize_center_crop`: antialiased bicubic in torch on float images, then the
centre crop), like every other image tokenizer here; ``resize="adm"`` applies ADM's rule (`adm_center_crop`) and
reproduces the official inputs byte for byte; ``resize="none"`` encodes any size whose sides are multiples of the
downsampling factor (non-square included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo import io as zio
from zoo.api import ImageTokenizer, Tokens, as_image_batch, check_codes
from zoo.registry import register_architecture


@dataclass
class VQConfig:
    """Hyperparameters (official ``ModelArgs`` names in brackets where they differ).

    Attributes:
        image_size: default input size in pixels (`encode`'s centre crop, `example_input`, `grid_size`); codes made
            from other sizes decode to their own size.
        ch: base width of the encoder and decoder (``Encoder.ch`` / ``Decoder.ch``, official 128).
        ch_mult: width multipliers per level of the encoder (``encoder_ch_mult``); the downsampling factor is
            ``2 ** (len(ch_mult) - 1)``.
        decoder_ch_mult: the decoder's (``decoder_ch_mult``); None = the same as `ch_mult`.
        z_channels: channels of the encoder output / decoder input.
        num_res_blocks: res blocks per encoder level (the decoder has one more per level).
        codebook_size, codebook_embed_dim: the codebook (K rows of D dims).
        codebook_l2_norm: l2-normalise latents and codebook rows for the lookup (official True).
        norm_groups: GroupNorm groups (hard-coded 32 in the official code); every width must be a multiple.
        dropout: dropout in the res blocks (``dropout_p``); inactive at inference.
    """

    architecture: str = "llamagen-vq"
    image_size: int = 256
    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    decoder_ch_mult: Sequence[int] | None = None
    z_channels: int = 256
    num_res_blocks: int = 2
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    norm_groups: int = 32
    dropout: float = 0.0

    # settings that do not change what the codes mean (left out of `config_hash`)
    RUNTIME_FIELDS: ClassVar[frozenset[str]] = frozenset({"image_size"})

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.decoder_ch_mult is not None:
            self.decoder_ch_mult = tuple(int(m) for m in self.decoder_ch_mult)
        for name in ("ch", "z_channels", "num_res_blocks", "codebook_size", "codebook_embed_dim", "norm_groups",
                     "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.ch_mult or min(self.ch_mult) < 1 or (self.decoder_ch_mult is not None and (
                not self.decoder_ch_mult or min(self.decoder_ch_mult) < 1)):
            raise ValueError(f"ch_mult / decoder_ch_mult must be non-empty positive ints, got {self.ch_mult} / "
                             f"{self.decoder_ch_mult}")
        widths = {self.ch * m for m in self.ch_mult + self.dec_ch_mult}
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every width (ch x ch_mult: {sorted(widths)}) must be a multiple of norm_groups "
                             f"{self.norm_groups}")
        if self.image_size % self.downsample_factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the downsampling factor "
                             f"{self.downsample_factor}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def dec_ch_mult(self) -> tuple[int, ...]:
        return self.ch_mult if self.decoder_ch_mult is None else tuple(self.decoder_ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.dec_ch_mult) - 1)


# ----------------------------------------------------------------------------------------------------------------
# building blocks (official attribute names, so that checkpoints load key for key)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv3x3 twice, plus the input (through a 1x1 ``nin_shortcut`` when the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1-conv q / k / v / output, scale C^-1/2, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)              # (b, 1, h*w, c)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ``res`` blocks, each followed by ``attn[i]`` where the level has attention, then an optional
    ``downsample`` / ``upsample``."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, groups: int, dropout: float,
                 resample: type[nn.Module] | None):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups, dropout) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(blocks if attention else 0))
        if resample is Downsample:
            self.downsample = Downsample(cout)
        elif resample is Upsample:
            self.upsample = Upsample(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def _mid(channels: int, groups: int, dropout: float) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(channels, channels, groups, dropout), AttnBlock(channels, groups),
                          ResnetBlock(channels, channels, groups, dropout)])


class Encoder(nn.Module):
    def __init__(self, c: VQConfig, in_channels: int = 3):
        super().__init__()
        g, n = c.norm_groups, len(c.ch_mult)
        self.conv_in = nn.Conv2d(in_channels, c.ch, 3, padding=1)
        width = c.ch
        levels = []
        for i, mult in enumerate(c.ch_mult):
            last = i == n - 1
            levels.append(Level(width, c.ch * mult, c.num_res_blocks, attention=last, groups=g, dropout=c.dropout,
                                resample=None if last else Downsample))
            width = c.ch * mult
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = _mid(width, g, c.dropout)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """Level order as the official: ``conv_blocks[0]`` is the deepest (widest) level."""

    def __init__(self, c: VQConfig, out_channels: int = 3):
        super().__init__()
        g, mults = c.norm_groups, c.dec_ch_mult
        width = c.ch * mults[-1]
        self.conv_in = nn.Conv2d(c.z_channels, width, 3, padding=1)
        self.mid = _mid(width, g, c.dropout)
        levels = []
        for i in reversed(range(len(mults))):
            levels.append(Level(width, c.ch * mults[i], c.num_res_blocks + 1, attention=i == len(mults) - 1,
                                groups=g, dropout=c.dropout, resample=Upsample if i != 0 else None))
            width = c.ch * mults[i]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class CodebookQuantizer(nn.Module):
    """The official ``VectorQuantizer`` at inference: nearest row by ``|z|^2 + |e|^2 - 2 z . e`` on l2-normalised
    latents and rows (float32), ids by argmin (the first index on exact ties, as torch.argmin)."""

    # Rows of the (N, K) distance matrix computed at once: about 64 MiB of float32 per chunk.
    CHUNK_ELEMENTS = 1 << 24

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool = True):
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        with torch.no_grad():  # the official init (overwritten by any checkpoint)
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))

    def codebook(self) -> torch.Tensor:
        """``(K, D)`` float32 rows as the lookup sees them (l2-normalised when `l2_norm`)."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def prepare(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., D)`` -> float32, l2-normalised when `l2_norm`."""
        z = z.float()
        return F.normalize(z, p=2, dim=-1) if self.l2_norm else z

    def distances(self, flat: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """The official distance ``(N, K)`` for prepared latents ``(N, D)``."""
        e = self.codebook() if codebook is None else codebook
        return (flat ** 2).sum(dim=1, keepdim=True) + (e ** 2).sum(dim=1) - 2 * torch.mm(flat, e.t())

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., D)`` (not yet normalised) -> ids ``(...)`` int64."""
        flat = self.prepare(z).reshape(-1, z.shape[-1])
        e = self.codebook()
        step = max(1, self.CHUNK_ELEMENTS // e.shape[0])
        ids = [self.distances(flat[i: i + step], e).argmin(dim=1) for i in range(0, flat.shape[0], step)]
        return torch.cat(ids).reshape(z.shape[:-1])

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``quant_conv`` output ``(B, D, h, w)`` -> (quant ``(B, D, h, w)`` float32, ids ``(B, h, w)``).

        ``quant`` is the official straight-through value ``z_n + (e_n[id] - z_n)``, equal to the codebook row only to
        within float rounding (about 3e-8); decode codes through `LlamaGenVQ.decode_code`, as the official pipeline
        does."""
        z = h.permute(0, 2, 3, 1)
        ids = self.lookup(z)
        z_n = self.prepare(z)
        quant = z_n + (self.codebook()[ids] - z_n)
        return quant.permute(0, 3, 1, 2), ids


# ----------------------------------------------------------------------------------------------------------------
# preprocessing


def adm_center_crop(image, size: int):
    """ADM's ``center_crop_arr`` (the official preprocessing) on one PIL image: BOX-halve while the short side is at
    least ``2 * size``, BICUBIC-resize so that the short side is `size` (the long side rounded), then cut the centre
    ``size x size`` square. Returns a PIL RGB image."""
    from PIL import Image

    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    w, h = image.size
    top, left = (h - size) // 2, (w - size) // 2
    return image.crop((left, top, left + size, top + size))


def _pil_items(images) -> list:
    """Any accepted image input -> a list of PIL RGB images (float tensors are rounded to 8 bits, as ADM reads
    files)."""
    from PIL import Image

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images: got an empty list")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            try:
                with Image.open(item) as img:
                    out.append(img.convert("RGB"))
            except OSError as err:
                raise ValueError(f"{item}: cannot read image ({err})") from err
        elif isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
        else:
            batch = as_image_batch(item, "images" if len(items) == 1 else f"images[{i}]")
            out += [zio.tensor_to_pil(img) for img in batch]
    return out


# ----------------------------------------------------------------------------------------------------------------
# the tokenizer


@register_architecture("llamagen-vq")
class LlamaGenVQ(ImageTokenizer):
    """LlamaGen's VQ tokenizer: images -> a grid of ids ``(B, H/f, W/f)`` (f = 16 or 8) -> images."""

    config_class = VQConfig
    token_layout = "grid"
    RESIZE_MODES: ClassVar[tuple[str, ...]] = ("center_crop", "adm", "none")

    def __init__(self, config: VQConfig):
        super().__init__(config)
        c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quantize = CodebookQuantizer(c.codebook_size, c.codebook_embed_dim, c.codebook_l2_norm)
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.codebook_embed_dim, c.z_channels, 1)

    # --- facts ---------------------------------------------------------------------------------------------------
    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return (self.config.codebook_size,)

    @property
    def input_size(self) -> int:
        return self.config.image_size

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def grid_size(self) -> tuple[int, int]:
        g = self.config.image_size // self.downsample_factor
        return (g, g)

    def token_shape(self, input_shape: tuple[int, ...], resize: str = "center_crop") -> tuple[int, ...]:
        """``(h, w)`` codes for an image of ``(..., H, W)``: the default grid after a centre crop, ``(H/f, W/f)``
        with ``resize="none"``."""
        if resize != "none":
            return self.grid_size()
        return tuple(s // self.downsample_factor for s in self._check_size(input_shape[-2:]))

    @property
    def device(self) -> torch.device:
        return self.quantize.embedding.weight.device

    def cast(self, device=None, dtype=None) -> "LlamaGenVQ":
        """Move; with a float `dtype` the encoder, decoder and ``post_quant_conv`` are cast, while ``quant_conv`` and
        the codebook stay float32 (the lookup always runs in float32)."""
        self.to(device=device)
        if dtype is not None:
            for module in (self.encoder, self.decoder, self.post_quant_conv):
                module.to(dtype=dtype)
        return self

    def _check_size(self, hw) -> tuple[int, int]:
        h, w = int(hw[0]), int(hw[1])
        f = self.downsample_factor
        if h % f or w % f or h < f or w < f:
            raise ValueError(f"images: height and width must be positive multiples of the downsampling factor {f}, "
                             f"got {h}x{w} (use resize='center_crop' to bring them to {self.config.image_size})")
        return h, w

    # --- the official steps --------------------------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 3, H, W)`` -> ``quant_conv`` output ``(B, D, H/f, W/f)`` float32 (before the
        l2 normalisation)."""
        dtype = self.encoder.conv_in.weight.dtype
        h = self.encoder(images.to(self.device, dtype))
        return self.quant_conv(h.float())

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 3, H, W)`` -> ids ``(B, H/f, W/f)`` int64."""
        h = self.encode_latents(images)
        return self.quantize.lookup(h.permute(0, 2, 3, 1))

    def codes_to_quant(self, codes: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, h, w)`` -> codebook rows ``(B, D, h, w)`` float32 (official ``get_codebook_entry``)."""
        return self.quantize.codebook()[codes.to(self.device)].permute(0, 3, 1, 2).contiguous()

    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` vectors -> images in [-1, 1] (not clamped; official ``decode``)."""
        z = self.post_quant_conv(quant.to(self.post_quant_conv.weight.dtype))
        return self.decoder(z)

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """Ids ``(B, h, w)`` -> images in [-1, 1] ``(B, 3, h*f, w*f)`` (official ``decode_code``, not clamped)."""
        return self.decode_quant(self.codes_to_quant(codes))

    # --- public API ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x, *, resize: str = "center_crop") -> Tokens:
        """Images -> `Tokens` with codes ``(B, H/f, W/f)`` int64 (raster order for a generator).

        Args:
            x: a tensor ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1], a PIL image, a path, or a list of these.
            resize: ``"center_crop"`` (default): the zoo's rule (`zoo.io.resize_center_crop`: the shorter side
                resized to ``config.image_size`` with antialiased bicubic, then the centre square). ``"adm"``: the
                official preprocessing, ADM's ``center_crop_arr`` on 8-bit PIL images (`adm_center_crop`).
                ``"none"``: encoded at its own size; height and width must be multiples of the downsampling factor
                (non-square images give non-square grids).
        """
        if resize not in self.RESIZE_MODES:
            raise ValueError(f"resize must be one of {self.RESIZE_MODES}, got {resize!r}")
        size = self.config.image_size
        if resize == "adm":
            x, resize = [zio.pil_to_tensor(adm_center_crop(img, size)) for img in _pil_items(x)], "none"
        images = zio.image_batch(x, size, resize)
        h, w = self._check_size(images.shape[-2:])
        codes = self.tokenize(images.to(self.device) * 2 - 1)
        return self.make_tokens(codes, image_size=[h, w])

    def _codes(self, tokens) -> torch.Tensor:
        if isinstance(tokens, Tokens):
            tokens = self.check_tokens(tokens).codes
        return check_codes(tokens, self.codebook_size, ndim=3)

    @torch.inference_mode()
    def decode(self, tokens, *, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """`Tokens` or ids ``(B, h, w)`` -> images ``(B, 3, h*f, w*f)`` in [0, 1]. Deterministic: `seed` and
        `generator` are accepted and ignored."""
        out = self.decode_code(self._codes(tokens))
        return ((out.float() + 1) / 2).clamp(0, 1)

    def codes_to_embeddings(self, tokens) -> torch.Tensor:
        """`Tokens` or ids ``(B, h, w)`` -> ``(B, h*w, D)`` l2-normalised codebook rows in raster order (float32)."""
        codes = self._codes(tokens)
        with torch.no_grad():  # a constant lookup (a normal tensor, usable in a generator's training graph)
            return self.quantize.codebook()[codes.to(self.device).flatten(1)]

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Fashion-MNIST: reconstruction PSNR / SSIM, codebook usage, the classifier's view of the reconstructions,
        against a grey thumbnail of the nearest bits (`zoo eval`; .evaluate.fashion_table)."""
        from .evaluate import fashion_table

        return fashion_table(self, split=split)

    # --- card ---------------------------------------------------------------------------------------------------------
    def card_facts(self) -> dict[str, Any]:
        c, f = self.config, self.downsample_factor
        g = c.image_size // f
        return {
            **super().card_facts(),
            "token shape": f"(B, H/{f}, W/{f}): {g} x {g} = {g * g} at {c.image_size} x {c.image_size}",
            "quantizer": f"VQ, {c.codebook_size} codes of {c.codebook_embed_dim} dims"
                         + (", l2-normalised (cosine) lookup" if c.codebook_l2_norm else ""),
            "image size": f"{c.image_size} x {c.image_size} by default; any multiple of {f} with resize='none'",
            "bits per image": f"{g * g * (c.codebook_size - 1).bit_length()} at {c.image_size} px",
        }

    def card_usage(self) -> str:
        g = self.grid_size()[0]
        return (
            "img = zoo.io.load_image(\"photo.png\")        # (3, H, W) in [0, 1]\n"
            f"tokens = tok.encode(img)                   # tokens.codes: (B, {g}, {g}) int64 (centre crop)\n"
            "recon = tok.decode(tokens)                 # (B, 3, H, W) in [0, 1]\n"
            "tokens = tok.encode(img, resize=\"adm\")     # the official ADM centre crop instead"
        )
