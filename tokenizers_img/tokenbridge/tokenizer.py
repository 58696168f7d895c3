"""TokenBridge's tokenizer: a Gaussian VAE (MAR's KL-16, `vae.MARVAE`) whose scaled latents are quantized after
training, channel by channel (`quantizer.GaussianQuantizer`), with no retraining.

``encode(images)`` -> `Tokens` of layout ``"channels"``: codes ``(B, N, C)``, N = h * w latent positions in raster
order, C latent channels, each code in ``0..levels-1`` (64 for the released 6-bit setting). ``decode`` dequantises
(the bin's truncated-normal mean), restores the ``(B, C, h, w)`` grid and decodes through the VAE. Encoding uses the
posterior mode by default (deterministic); ``sample=True`` quantizes a posterior draw, as the official training and
``reconstruction.py`` do (per-item seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

from zoo import io as zio
from zoo.api import ImageTokenizer, Tokens, check_codes
from zoo.registry import register_architecture

from .quantizer import GaussianQuantizer
from .vae import MARVAE, MARVAEConfig, checkpoint_filter_fn as vae_checkpoint_filter_fn


@dataclass
class TokenBridgeTokenizerConfig(MARVAEConfig):
    """The VAE's fields (`MARVAEConfig`) and the quantizer's: ``2 ** bits`` levels over ``[value_min, value_max]``
    (scaled-latent units) clamped at ``std_range`` standard deviations (the official quant_bits 6, [-5, 5], 3)."""

    architecture: str = "tokenbridge-tokenizer"
    bits: int = 6
    value_min: float = -5.0
    value_max: float = 5.0
    std_range: float = 3.0

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 16:
            raise ValueError(f"bits: an int in 1..16, got {self.bits!r}")

    def vae_config(self) -> MARVAEConfig:
        names = {f.name for f in fields(MARVAEConfig)} - {"architecture"}
        return MARVAEConfig(**{n: getattr(self, n) for n in names})


@register_architecture("tokenbridge-tokenizer")
class TokenBridgeTokenizer(ImageTokenizer):
    """Images ``(B, 3, H, W)`` in [0, 1] <-> per-channel codes ``(B, h w, C)`` (see the module docstring)."""

    config_class = TokenBridgeTokenizerConfig
    token_layout = "channels"

    def __init__(self, config: TokenBridgeTokenizerConfig):
        super().__init__(config)
        self.autoencoder = MARVAE(config.vae_config())
        self.quantizer = GaussianQuantizer(2 ** config.bits, config.value_min, config.value_max, config.std_range)
        self.input_size = config.resolution
        self.downsample = self.autoencoder.downsample

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """One vocabulary per channel (all ``2 ** bits``): ``num_codebooks`` = codes per position."""
        return (self.quantizer.levels,) * self.channels

    @property
    def channels(self) -> int:
        return self.config.embed_dim

    def grid_size(self) -> tuple[int, int]:
        side = self.config.resolution // self.downsample
        return side, side

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w = input_shape[-2] // self.downsample, input_shape[-1] // self.downsample
        return h * w, self.channels

    # --- latents <-> codes -----------------------------------------------------------------------------------------
    def quantize_latents(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents ``(B, C, h, w)`` -> ``(codes (B, h w, C), dequantised latents (B, C, h, w))``."""
        latents = self.autoencoder._check_latents(latents)
        b, c, h, w = latents.shape
        codes, values = self.quantizer.quantize(latents.flatten(2).transpose(1, 2))
        return codes, values.transpose(1, 2).reshape(b, c, h, w)

    def codes_to_latents(self, tokens: Tokens | torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes ``(B, N, C)`` -> dequantised scaled latents ``(B, C, h, w)`` (the grid from `grid`, the tokens'
        ``image_size``, or the default input size)."""
        tokens = self.check_tokens(tokens)
        if isinstance(tokens, Tokens):
            if grid is None and "image_size" in tokens.meta:
                grid = tuple(s // self.downsample for s in tokens.meta["image_size"])
            tokens = tokens.codes
        codes = check_codes(torch.as_tensor(tokens), self.quantizer.levels, 3, "codes")
        b, n, c = codes.shape
        if c != self.channels:
            raise ValueError(f"codes: expected {self.channels} channels per position (B, N, {self.channels}), got "
                             f"{tuple(codes.shape)}")
        if grid is not None and grid[0] * grid[1] != n:
            raise ValueError(f"codes: {n} positions do not fill the {grid[0]} x {grid[1]} grid")
        grid = grid or self.grid_size()
        if grid[0] * grid[1] != n:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"codes: {n} positions is not the {grid[0]} x {grid[1]} grid of the default size, "
                                 "nor a square: give Tokens with meta['image_size']")
            grid = (side, side)
        values = self.quantizer.dequantize(codes.to(self.quantizer.reconstruction_values.device))
        return values.transpose(1, 2).reshape(b, c, *grid)

    # --- the zoo contract ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, x, *, resize: str = "center_crop", sample: bool = False, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tokens:
        """Images in [0, 1] -> `Tokens` ``(B, h w, C)``; `resize`, `sample`, `seed`, `generator` as
        `MARVAE.encode` (``sample=True``: quantize a posterior draw, the official behaviour)."""
        images = zio.image_batch(x, self.config.resolution, resize)
        latents = self.autoencoder.encode(images, resize="none", sample=sample, seed=seed, generator=generator)
        codes, _ = self.quantize_latents(latents)
        return self.make_tokens(codes, image_size=list(images.shape[-2:]))

    @torch.inference_mode()
    def decode(self, tokens: Tokens | torch.Tensor, *, seed=None, generator=None) -> torch.Tensor:
        """`Tokens` (or codes ``(B, N, C)``) -> images ``(B, 3, H, W)`` in [0, 1] (deterministic)."""
        return self.autoencoder.decode(self.codes_to_latents(tokens))

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Fashion-MNIST: the continuous VAE against its quantization at this and fewer bits (`zoo eval`;
        .evaluate.fashion_table)."""
        from .evaluate import fashion_table

        return fashion_table(self, split=split)

    def codes_to_embeddings(self, tokens: Tokens | torch.Tensor) -> torch.Tensor:
        """Dequantised latent vectors per position ``(B, N, C)``."""
        return self.codes_to_latents(tokens).flatten(2).transpose(1, 2)

    def card_facts(self) -> dict[str, Any]:
        c, (h, w) = self.config, self.grid_size()
        return {**super().card_facts(), "token shape": f"(B, {h * w}, {c.embed_dim}): {h} x {w} positions x "
                f"{c.embed_dim} channels at {c.resolution} px", "levels per channel": f"{2 ** c.bits} ({c.bits} bits)",
                "bits per image": h * w * c.embed_dim * c.bits, "VAE": f"f{self.downsample}, {c.embed_dim} channels, "
                f"latents x {c.scaling_factor:g}"}


def checkpoint_filter_fn(state_dict: dict, model: TokenBridgeTokenizer) -> dict[str, torch.Tensor]:
    """An official VAE checkpoint (``kl16.ckpt``) or a bare `MARVAE` state dict -> this tokenizer's state dict: the
    VAE's keys under ``autoencoder.``, and the quantizer's levels as the model computed them (they are not in the
    VAE file; the official generator checkpoints store the same values)."""
    if any(k.startswith("vae.") for k in state_dict):
        vae = dict(state_dict)
    else:
        vae = vae_checkpoint_filter_fn(state_dict, model.autoencoder)
    return {**{f"autoencoder.{k}": v for k, v in vae.items()},
            **{f"quantizer.{k}": v for k, v in model.quantizer.state_dict().items()}}


__all__ = ["TokenBridgeTokenizer", "TokenBridgeTokenizerConfig", "checkpoint_filter_fn"]
