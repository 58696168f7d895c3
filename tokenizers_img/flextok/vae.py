"""The FlexTok VAE on its own (``EPFL-VILAB/flextok_vae_c{4,8,16}``, or the tiny f4 one trained here): a diffusers
``AutoencoderKL``.

The released VAE repos are in diffusers layout (``config.json`` + ``diffusion_pytorch_model.safetensors``, keys
without a prefix); `checkpoint_filter_fn` maps them to this module's ``vae.*`` keys and checks every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from zoo import io as zio
from zoo.api import ZooModel
from zoo.registry import register_architecture

from .model import FlexTokConfig, build_vae


@dataclass
class FlexTokVAEConfig:
    architecture: str = "flextok-vae"
    image_size: int = 256
    vae_latent_channels: int = 16
    vae_block_out_channels: Sequence[int] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    vae_act_fn: str = "silu"
    vae_mid_block_add_attention: bool = True
    # the factor a FlexTok tokenizer multiplies these latents by (None = not known); `encode` does not apply it
    vae_scaling_factor: float | None = None

    def __post_init__(self):
        self.vae_block_out_channels = tuple(int(c) for c in self.vae_block_out_channels)


@register_architecture("flextok-vae")
class FlexTokVAE(ZooModel):
    """Images ``(B, 3, H, W)`` in [0, 1] <-> unscaled posterior-mode latents ``(B, C, H/f, W/f)``, ``f`` the
    downsampling factor (8 for the released VAEs)."""

    config_class = FlexTokVAEConfig
    kind = "autoencoder"
    modality = "image"

    def __init__(self, config: FlexTokVAEConfig):
        super().__init__(config)
        fields = {k: v for k, v in vars(config).items() if k.startswith("vae_") or k == "image_size"}
        vae_config = FlexTokConfig(**fields, patch_size=1)
        self.downsample = vae_config.vae_downsample
        self.vae = build_vae(vae_config)

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, 3, self.config.image_size, self.config.image_size, generator=g), {}

    @torch.inference_mode()
    def encode(self, x, *, resize: str = "center_crop", sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (tensor, PIL, path or a list; resized as in `FlexTok.encode`) -> latents ``(B, C, h, w)``:
        the posterior mode, or a draw from it with `sample`."""
        images = zio.image_batch(x, self.config.image_size, resize)
        f = self.downsample
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"images: height and width must be multiples of {f}, got {tuple(images.shape[-2:])}")
        dist = self.vae.encode(images.to(self.vae.device) * 2 - 1).latent_dist
        return dist.sample(generator) if sample else dist.mode()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` -> images ``(B, 3, f h, f w)`` in [0, 1]."""
        c = self.config.vae_latent_channels
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != c:
            raise ValueError(f"latents: expected a (B, {c}, h, w) tensor, got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents: contain NaN or infinite values")
        return ((self.vae.decode(latents.to(self.vae.device, self.vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)

    def card_facts(self) -> dict[str, Any]:
        c = self.config
        return {**super().card_facts(), "latent": f"{c.vae_latent_channels} channels, f{self.downsample}"}

    def card_usage(self) -> str:
        return (f"latents = model.encode(img)   # (B, C, H/{self.downsample}, W/{self.downsample}), unscaled posterior "
                "mode\nimg = model.decode(latents)")

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Held-out photos: PSNR / SSIM of the reconstructions against bicubic thumbnails (`zoo eval`;
        .evaluate.vae_table)."""
        from .evaluate import vae_table

        return vae_table(self, split=split)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: FlexTokVAE) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> ``vae.*``; every key must exist in `model` with the same shape."""
    expected = model.state_dict()
    out, problems = {}, []
    for key, value in state_dict.items():
        target = key if key.startswith("vae.") else f"vae.{key}"
        if target not in expected:
            problems.append(f"unexpected {key}")
        elif expected[target].shape != value.shape:
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(expected[target].shape)}")
        else:
            out[target] = value
    problems += [f"missing {k}" for k in expected if k not in out]
    if problems:
        raise ValueError("not a FlexTok VAE checkpoint of this architecture: " + "; ".join(problems[:8])
                         + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))
    return out
