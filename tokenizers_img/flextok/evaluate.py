"""Held-out evaluation of a FlexTok: PSNR / SSIM of reconstructions from k tokens, against bicubic baselines.

The bicubic baseline stores an image as a ``side x side`` RGB thumbnail with 8 bits per value (bicubic,
antialiased downsampling) and upsamples it back bicubically: ``side**2 * 24`` bits, to compare with the tokens'
``k * log2(codebook_size)`` bits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo import data, metrics
from zoo.io import resize_center_crop

from .model import FlexTok
from .vae import FlexTokVAE

KS = (1, 4, 16, 64, 256)
BICUBIC_SIDES = (2, 4, 11)  # plus the smallest thumbnail storing at least as many bits as all the tokens


def thumbnail_side(bits: float) -> int:
    """The smallest ``side`` whose 8-bit RGB ``side x side`` thumbnail stores at least `bits` bits."""
    return math.ceil(math.sqrt(bits / 24))


def heldout_images(size: int) -> torch.Tensor:
    """``(15, 3, size, size)`` in [0, 1]: each held-out photo centre-cropped at `size`, and the four tiles of its
    centre crop at ``2 * size`` (so the set has whole scenes and close-ups)."""
    images = []
    for photo in data.photos("heldout").values():
        images.append(resize_center_crop(photo[None], size))
        big = resize_center_crop(photo[None], 2 * size)[0]
        images += [big[:, y: y + size, x: x + size][None] for y in (0, size) for x in (0, size)]
    return torch.cat(images)


def bicubic_baseline(images: torch.Tensor, side: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> the same size through an 8-bit ``side x side`` thumbnail."""
    small = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)
    small = (small * 255).round() / 255
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


@torch.inference_mode()
def reconstruct(model: FlexTok, images: torch.Tensor, ks: tuple[int, ...], seed: int = 0,
                batch_size: int = 64) -> dict[int, torch.Tensor]:
    """Reconstructions of `images` from their first k tokens, for every k in `ks`. All (image, k) pairs go through
    the decoder together in batches that mix different k (``keep_k`` per item), with fixed noise (`seed`)."""
    codes = model.encode(images, resize="none").codes                                      # (B, N)
    b = codes.shape[0]
    pairs_codes = codes.repeat(len(ks), 1)                                                 # (len(ks) * B, N)
    keep = torch.tensor(ks).repeat_interleave(b)
    generator = torch.Generator(model.device).manual_seed(seed)
    out = torch.cat([model.decode(pairs_codes[i: i + batch_size], keep_k=keep[i: i + batch_size],
                                  generator=generator, image_size=tuple(images.shape[-2:]))
                     for i in range(0, len(keep), batch_size)])
    return {k: out[j * b: (j + 1) * b] for j, k in enumerate(ks)}


def reference_table(model: FlexTok, seed: int = 0) -> dict:
    """The card's quality table: this model at k = 1, 4, 16, 64, ... all tokens, then the bicubic baselines."""
    images = heldout_images(model.config.image_size)
    n = model.config.num_registers
    ks = tuple(sorted({k for k in KS if k < n} | {n}))
    bits_per_token = math.log2(model.codebook_size)
    recon = reconstruct(model, images, ks, seed=seed)
    rows = []
    for k in ks:
        rows.append([f"this model, {k} token{'s' if k > 1 else ''}", round(k * bits_per_token),
                     round(float(metrics.psnr(recon[k], images).mean()), 2),
                     round(float(metrics.ssim(recon[k], images).mean()), 4)])
    full_side = thumbnail_side(n * bits_per_token)
    bicubic_psnr = {}
    for side in sorted(set(BICUBIC_SIDES) | {full_side}):
        base = bicubic_baseline(images, side)
        bicubic_psnr[side] = round(float(metrics.psnr(base, images).mean()), 2)
        rows.append([f"bicubic via {side}x{side} thumbnail", side * side * 24, bicubic_psnr[side],
                     round(float(metrics.ssim(base, images).mean()), 4)])
    size = model.config.image_size
    description = (
        f"Held-out photographs never seen in training (zoo.data.photos: {', '.join(data.HELD_OUT_PHOTOS)}): "
        f"{len(images)} images of {size} x {size} (each photo centre-cropped, plus the four tiles of its centre crop "
        f"at {2 * size} px). Decoded with {model.config.default_steps} Euler steps, guidance "
        f"{model.config.default_guidance_scale:g}, fixed noise (seed {seed}); PSNR in dB and SSIM on [0, 1] RGB. "
        f"bits = k x log2({model.codebook_size}) for the tokens, side^2 x 24 for an 8-bit RGB thumbnail."
    )
    return {"description": description, "columns": ["reconstruction", "bits", "psnr", "ssim"], "rows": rows,
            "psnr_by_k": {k: row[2] for k, row in zip(ks, rows)},
            "bicubic_psnr_at_full_bits": bicubic_psnr[full_side]}


@torch.inference_mode()
def vae_table(vae: FlexTokVAE) -> dict:
    """The card's table for a VAE alone: PSNR / SSIM of its reconstructions (posterior mode) of the held-out set,
    and of bicubic thumbnails on the latent grid and with as many values as the latent."""
    images = heldout_images(vae.config.image_size)
    recon = vae.decode(vae.encode(images, resize="none"))
    size, c, f = vae.config.image_size, vae.config.vae_latent_channels, vae.downsample
    grid, same_values = size // f, math.floor(math.sqrt(c * (size // f) ** 2 / 3))
    rows = [["this VAE", c * grid * grid, round(float(metrics.psnr(recon, images).mean()), 2),
             round(float(metrics.ssim(recon, images).mean()), 4)]]
    for side in (grid, same_values):
        base = bicubic_baseline(images, side)
        rows.append([f"bicubic via {side}x{side} RGB thumbnail", 3 * side * side,
                     round(float(metrics.psnr(base, images).mean()), 2),
                     round(float(metrics.ssim(base, images).mean()), 4)])
    description = (
        f"Held-out photographs never seen in training (zoo.data.photos: {', '.join(data.HELD_OUT_PHOTOS)}): "
        f"{len(images)} images of {size} x {size} (as for the FlexTok tables), encoded to the posterior mode "
        f"({c} x {grid} x {grid} latents, float) and decoded; PSNR in dB and SSIM on [0, 1] RGB. The thumbnails "
        f"(8-bit, bicubic down and up) are a reference: on the latent grid, and with as many values as the latent."
    )
    return {"description": description, "columns": ["reconstruction", "values", "psnr", "ssim"], "rows": rows}
