"""WavTokenizer building blocks: SEANet encoder, Vocos backbone, ISTFT head.

Numerics follow the official code (jishengpeng/WavTokenizer @ 5cf440d) operation for operation, including its
quirks: the SEANet convs pad asymmetrically (extra sample on the left) with one reflect pad that also fills the
last window; very short inputs are zero-extended before reflecting; the ISTFT head uses "same" padding with a
window-envelope division.

Every module also takes optional per-item valid lengths, so that a zero-padded batch of different-length clips
gives each item exactly what it would give alone:
* convs re-pad each item at its own end (reflect in the encoder, zeros in the backbone), via one gather;
* GroupNorm statistics and attention keys only cover each item's valid frames;
* the ISTFT overlap-add and its window envelope only sum each item's valid frames.
With ``lengths=None`` (every item full length) the plain official code path runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# ----------------------------------------------------------------------------------------------------------------
# masks and padding


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, 1, size)`` float mask, 1 on valid positions."""
    return (torch.arange(size, device=lengths.device)[None] < lengths[:, None]).unsqueeze(1).float()


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """The official ``pad1d(mode='reflect')``: zero-extend inputs too short to reflect, reflect, crop back."""
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = max_pad - length + 1 if length <= max_pad else 0
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


def reflect_pad_per_item(x: torch.Tensor, lengths: torch.Tensor, left: int, rights: torch.Tensor) -> torch.Tensor:
    """`reflect_pad` of each item's valid part ``x[b, :, :lengths[b]]`` with its own right padding, in one gather.

    Returns ``(B, C, max(left + lengths + rights))``; positions past an item's own padded length hold zeros.
    """
    batch, channels, _ = x.shape
    width = int((left + lengths + rights).max())
    # Each item is reflected about the end of its (possibly zero-extended) signal of length `ext`.
    ext = torch.maximum(lengths, torch.clamp(rights, min=left) + 1)[:, None]  # (B, 1)
    s = torch.arange(width, device=x.device)[None] - left  # (1, W) position in the unpadded signal
    src = torch.where(s < 0, -s, torch.where(s < ext, s, 2 * (ext - 1) - s))  # (B, W)
    valid = (src >= 0) & (src < lengths[:, None]) & (s < (lengths + rights)[:, None])
    zero_column = x.shape[-1]
    src = torch.where(valid, src, torch.full_like(src, zero_column))
    x_ext = F.pad(x, (0, 1))  # a zero column to read for every invalid position
    return torch.gather(x_ext, 2, src[:, None, :].expand(batch, channels, width))


# ----------------------------------------------------------------------------------------------------------------
# SEANet encoder (EnCodec's, as WavTokenizer configures it)


class ELU(nn.Module):
    """ELU (alpha 1) as ``exp(x) - 1`` for x <= 0: PyTorch's CPU ELU goes through a scalar ``expm1`` that took 40 %
    of the encoder's time; ``exp`` is vectorised. The two differ by at most one float32 ulp of 1 (1.2e-7)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, x, torch.exp(x.clamp_max(0)) - 1)


class SConv1d(nn.Module):
    """Weight-normed Conv1d with SEANet's non-causal "same" padding (reflect, extra sample on the left)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation))
        self.stride = stride
        effective_kernel = (kernel_size - 1) * dilation + 1
        padding_total = effective_kernel - stride
        self.pad_right = padding_total // 2
        self.pad_left = padding_total - self.pad_right

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        # x: (B, C, T); lengths: (B,) valid samples per item, or None when all are T
        if lengths is None:
            extra = -x.shape[-1] % self.stride  # fills the last window: output has ceil(T / stride) frames
            if self.pad_left or self.pad_right or extra:
                x = reflect_pad(x, self.pad_left, self.pad_right + extra)
            return self.conv(x), None
        extra = -lengths % self.stride
        x = reflect_pad_per_item(x, lengths, self.pad_left, self.pad_right + extra)
        return self.conv(x), -(-lengths // self.stride)


class SEANetResnetBlock(nn.Module):
    """ELU -> conv k3 (dim -> dim/2) -> ELU -> conv k1 (-> dim), plus a k1-conv shortcut."""

    def __init__(self, dim: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2):
        super().__init__()
        hidden = dim // compress
        # indices 1 and 3 hold the convs, as in the official nn.Sequential (0 and 2 are ELUs)
        self.block = nn.ModuleList([ELU(), SConv1d(dim, hidden, kernel_size, dilation=dilation),
                                    ELU(), SConv1d(hidden, dim, 1)])
        self.shortcut = SConv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        h = x
        for layer in self.block:
            h = layer(h, lengths)[0] if isinstance(layer, SConv1d) else layer(h)
        return self.shortcut(x, lengths)[0] + h, lengths


class SLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection (causal: padding at the end cannot leak back)."""

    segment = 1024  # frames per LSTM call; the state carries over, so the result is that of one call

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        seq = x.permute(2, 0, 1)  # (T, B, C)
        if seq.shape[0] <= self.segment:
            y, _ = self.lstm(seq)
        else:  # long inputs: cache-sized input projections instead of one (T, B, 4C) buffer
            parts, state = [], None
            for start in range(0, seq.shape[0], self.segment):
                part, state = self.lstm(seq[start: start + self.segment], state)
                parts.append(part)
            y = torch.cat(parts)
        return y.permute(1, 2, 0) + x, lengths


class SEANetEncoder(nn.Module):
    """Waveform ``(B, 1, T)`` -> latent ``(B, dimension, ceil(T / hop))``.

    Layout of ``model`` (kept index for index with the official ``nn.Sequential``, so checkpoints map 1:1):
    0 stem conv k7; then per stride: resnet block, ELU, strided conv (kernel 2 x stride); LSTM; ELU; final conv k7.
    """

    def __init__(self, strides: list[int], n_filters: int = 32, dimension: int = 512, lstm_layers: int = 2,
                 kernel_size: int = 7, last_kernel_size: int = 7, residual_kernel_size: int = 3):
        super().__init__()
        layers: list[nn.Module] = [SConv1d(1, n_filters, kernel_size)]
        mult = 1
        for stride in strides:
            layers += [
                SEANetResnetBlock(mult * n_filters, residual_kernel_size),
                ELU(),
                SConv1d(mult * n_filters, mult * n_filters * 2, kernel_size=2 * stride, stride=stride),
            ]
            mult *= 2
        layers += [SLSTM(mult * n_filters, lstm_layers), ELU(), SConv1d(mult * n_filters, dimension, last_kernel_size)]
        self.model = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        x, lengths = self.frontend(x, lengths)
        return self.backend(x, lengths)

    def frontend(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """The conv stack: ``(B, 1, T)`` -> ``(B, C, ceil(T / hop))``. Purely local, so it can run in tiles."""
        return _run(self.model[:-3], x, lengths)

    def backend(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """LSTM, ELU, final conv at the frame rate: ``(B, C, F)`` -> ``(B, dimension, F)``."""
        return _run(self.model[-3:], x, lengths)

    def frontend_context(self) -> tuple[int, int]:
        """Samples of input left and right of frame ``j`` (at sample ``j * hop``) that its front-end output reads."""
        left = right = 0
        step = 1  # input samples per position at the current layer's input
        for layer in self.model[:-3]:
            convs = [m for m in layer.block if isinstance(m, SConv1d)] if isinstance(layer, SEANetResnetBlock) \
                else [layer] if isinstance(layer, SConv1d) else []
            for conv in convs:  # the resnet shortcut is a k1 conv and reads nothing more than its main path
                span = (conv.conv.kernel_size[0] - 1) * conv.conv.dilation[0]
                left += conv.pad_left * step
                right += (span - conv.pad_left) * step
                step *= conv.stride
        return left, right


def _run(layers, x: torch.Tensor, lengths: torch.Tensor | None):
    for layer in layers:
        if isinstance(layer, ELU):
            x = layer(x)
        else:
            x, lengths = layer(x, lengths)
    return x, lengths


# ----------------------------------------------------------------------------------------------------------------
# Vocos backbone (with WavTokenizer's attention "pos_net" in front of the ConvNeXt stack)


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm whose statistics cover only the valid frames of each item. x: (B, C, T), mask: (B, 1, T)."""
    if mask is None:
        return norm(x)
    batch, channels, frames = x.shape
    groups = norm.num_groups
    xg = x.reshape(batch, groups, channels // groups, frames)
    m = mask[:, None]  # (B, 1, 1, T)
    count = m.sum(dim=(2, 3), keepdim=True) * (channels // groups)
    mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
    var = ((xg - mean).pow(2) * m).sum(dim=(2, 3), keepdim=True) / count
    xg = (xg - mean) / torch.sqrt(var + norm.eps)
    return xg.reshape(batch, channels, frames) * norm.weight[:, None] + norm.bias[:, None]


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames past each item's end, so a zero-padded conv sees what it would see for the item alone."""
    return x if mask is None else x * mask


class ResnetBlock(nn.Module):
    """GN -> swish -> conv k3 -> GN -> swish -> dropout -> conv k3, plus the residual (LDM-style, 1D)."""

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, channels, eps=1e-6)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = F.silu(masked_group_norm(x, self.norm1, mask))
        h = self.conv1(_masked(h, mask))
        h = self.dropout(F.silu(masked_group_norm(h, self.norm2, mask)))
        h = self.conv2(_masked(h, mask))
        return x + h


class AttnBlock(nn.Module):
    """One-head softmax self-attention over all frames, 1x1-conv projections, scale C^-0.5."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.q = nn.Conv1d(channels, channels, 1)
        self.k = nn.Conv1d(channels, channels, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = masked_group_norm(x, self.norm, mask)
        q, k, v = (proj(h).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))  # (B, 1, T, C)
        key_mask = None if mask is None else mask.bool()[:, None]  # (B, 1, 1, T): attend to valid frames only
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, 1, T, C)
        return x + self.proj_out(h[:, 0].transpose(1, 2))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then a per-`bandwidth_id` scale and shift."""

    def __init__(self, num_embeddings: int, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C); bandwidth_id: (1,) or (B,) long -> scale/shift (1 or B, C), broadcast over time
        x = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        return x * self.scale(bandwidth_id)[:, None] + self.shift(bandwidth_id)[:, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise conv k7 -> AdaLayerNorm -> Linear -> GELU -> Linear -> layer scale, plus the residual."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale_init: float, num_embeddings: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(num_embeddings, dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dwconv(_masked(x, mask)).transpose(1, 2)  # (B, T, C)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h, bandwidth_id))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """Features ``(B, C_in, T)`` -> hidden ``(B, T, dim)`` (the input of the ISTFT head).

    embed conv k7 -> pos_net [Resnet, Resnet, Attn, Resnet, Resnet, GroupNorm] -> AdaLayerNorm -> ConvNeXt x N ->
    final LayerNorm.
    """

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int,
                 num_embeddings: int = 4, layer_scale_init: float | None = None):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = AdaLayerNorm(num_embeddings, dim)
        scale = layer_scale_init or 1 / num_layers
        self.convnext = nn.ModuleList(
            [ConvNeXtBlock(dim, intermediate_dim, scale, num_embeddings) for _ in range(num_layers)]
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(self._init_weights)
        # built after the init above, as in the official code (pos_net keeps PyTorch's default init)
        self.pos_net = nn.ModuleList([ResnetBlock(dim), ResnetBlock(dim), AttnBlock(dim),
                                      ResnetBlock(dim), ResnetBlock(dim), nn.GroupNorm(32, dim, eps=1e-6)])

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C_in, T); mask: (B, 1, T) valid frames, or None when all are valid
        x = self.embed(_masked(x, mask))  # (B, dim, T)
        for block in self.pos_net:
            x = masked_group_norm(x, block, mask) if isinstance(block, nn.GroupNorm) else block(x, mask)
        x = self.norm(x.transpose(1, 2), bandwidth_id).transpose(1, 2)
        for block in self.convnext:
            x = block(x, bandwidth_id, mask)
        return self.final_layer_norm(x.transpose(1, 2))  # (B, T, dim)


# ----------------------------------------------------------------------------------------------------------------
# ISTFT head


class ISTFTHead(nn.Module):
    """Hidden ``(B, T, dim)`` -> waveform ``(B, T * hop)`` via log-magnitude + phase and a "same"-padded ISTFT."""

    def __init__(self, dim: int, n_fft: int, hop_length: int):
        super().__init__()
        if (n_fft - hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even for 'same' padding, got {n_fft} - {hop_length}")
        self.n_fft, self.hop_length = n_fft, hop_length
        self.out = nn.Linear(dim, n_fft + 2)
        # periodic Hann, part of the checkpoint; cloned: hann_window returns a view of an (n_fft + 1) storage
        self.register_buffer("window", torch.hann_window(n_fft).clone())

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.out(x).transpose(1, 2).float()  # (B, n_fft + 2, T); the spectral math runs in float32
        log_mag, phase = x.chunk(2, dim=1)
        mag = torch.exp(log_mag).clip(max=1e2)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))  # (B, n_fft/2 + 1, T)
        if mask is not None:
            spec = spec * mask  # silent frames past each item's end
        return self.istft(spec, mask)

    def istft(self, spec: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        frames = spec.shape[-1]
        window = self.window.float()
        pad = (self.n_fft - self.hop_length) // 2
        frames_td = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * window[None, :, None]
        out_size = (frames - 1) * self.hop_length + self.n_fft
        fold = dict(output_size=(1, out_size), kernel_size=(1, self.n_fft), stride=(1, self.hop_length))
        y = F.fold(frames_td, **fold)[:, 0, 0, pad:-pad]  # overlap-add, "same" trim: (B, T * hop)
        window_sq = window.square()[None, :, None].expand(1, -1, frames)
        if mask is not None:
            window_sq = window_sq * mask  # each item's envelope sums only its own frames
        envelope = F.fold(window_sq, **fold)[:, 0, 0, pad:-pad]  # (1 or B, T * hop)
        if mask is None:
            return y / envelope
        return torch.where(envelope > 1e-11, y / envelope.clamp_min(1e-11), torch.zeros_like(y))
