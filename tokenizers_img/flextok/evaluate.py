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


def thumbnail_side(bits: float) -> int:
    """The ``side`` whose 8-bit RGB ``side x side`` thumbnail (``24 side^2`` bits) is nearest to `bits` (at least 1):
    the fair baseline for a code of that many bits."""
    below = max(1, math.floor(math.sqrt(bits / 24)))
    return min((below, below + 1), key=lambda side: (abs(24 * side * side - bits), side))


def heldout_images(size: int, split: str = "test") -> torch.Tensor:
    """``(5 P, 3, size, size)`` in [0, 1] for the P photos of `split`: each photo centre-cropped at `size`, and the
    four tiles of its centre crop at ``2 * size`` (so the set has whole scenes and close-ups)."""
    images = []
    for photo in data.photos(split).values():
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


def reference_table(model: FlexTok, seed: int = 0, split: str = "test") -> dict:
    """The card's quality table: this model at k = 1, 4, 16, 64, ... all tokens, each beside the bicubic thumbnail
    storing the nearest number of bits (the fair baseline at that budget)."""
    images = heldout_images(model.config.image_size, split)
    n = model.config.num_registers
    ks = tuple(sorted({k for k in KS if k < n} | {n}))
    bits_per_token = math.log2(model.codebook_size)
    recon = reconstruct(model, images, ks, seed=seed)
    rows, psnr_by_k, thumbnail_psnr_by_k = [], {}, {}
    for k in ks:
        side = thumbnail_side(k * bits_per_token)
        base = bicubic_baseline(images, side)
        psnr_by_k[k] = round(float(metrics.psnr(recon[k], images).mean()), 2)
        thumbnail_psnr_by_k[k] = round(float(metrics.psnr(base, images).mean()), 2)
        rows.append([k, round(k * bits_per_token), psnr_by_k[k], round(float(metrics.ssim(recon[k], images).mean()), 4),
                     f"{side}x{side}", 24 * side * side, thumbnail_psnr_by_k[k],
                     round(float(metrics.ssim(base, images).mean()), 4)])
    size = model.config.image_size
    names = ", ".join(data.photo_names(split))
    description = (
        f"The {split} photographs of zoo.data.photos ({names}; never trained on): {len(images)} images of {size} x "
        f"{size} (each photo centre-cropped, plus the four tiles of its centre crop at {2 * size} px). Decoded with "
        f"{model.config.default_steps} Euler steps, guidance {model.config.default_guidance_scale:g}, fixed noise "
        f"(seed {seed}); PSNR in dB and SSIM on [0, 1] RGB. bits = k x log2({model.codebook_size}) for the tokens; "
        f"each row's baseline is the 8-bit RGB thumbnail (bicubic down and up) whose side^2 x 24 bits are nearest."
    )
    columns = ["tokens", "bits", "psnr", "ssim", "thumbnail", "thumbnail bits", "thumbnail psnr", "thumbnail ssim"]
    return {"description": description, "columns": columns, "rows": rows, "psnr_by_k": psnr_by_k,
            "thumbnail_psnr_by_k": thumbnail_psnr_by_k}


@torch.inference_mode()
def vae_table(vae: FlexTokVAE, split: str = "test") -> dict:
    """The card's table for a VAE alone: PSNR / SSIM of its reconstructions (posterior mode) of the held-out set,
    and of bicubic thumbnails on the latent grid and with as many values as the latent."""
    images = heldout_images(vae.config.image_size, split)
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
        f"The {split} photographs of zoo.data.photos ({', '.join(data.photo_names(split))}; never trained on): "
        f"{len(images)} images of {size} x {size} (as for the FlexTok tables), encoded to the posterior mode "
        f"({c} x {grid} x {grid} latents, float) and decoded; PSNR in dB and SSIM on [0, 1] RGB. The thumbnails "
        f"(8-bit, bicubic down and up) are a reference: on the latent grid, and with as many values as the latent."
    )
    return {"description": description, "columns": ["reconstruction", "values", "psnr", "ssim"], "rows": rows}
