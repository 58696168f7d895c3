"""Evaluation of a TokenBridge tokenizer on Fashion-MNIST: the continuous VAE against its post-training quantization
at the configured bits and at fewer, so the "near-lossless at 6 bits" claim is checked here. PSNR / SSIM on the
28 x 28 pictures, and what the zoo's Fashion-MNIST classifier sees in the reconstructions (accuracy, Fréchet
distance in its features to the real images), plus how Gaussian the scaled latents are (their std, and how evenly
the codes of the configured quantizer are used: equal-probability bins give every code 1 / levels)."""

from __future__ import annotations

import math

import torch

from tokenizers_img.vq.evaluate import CLASSIFIER, classifier_view
from zoo import data, metrics

from .quantizer import GaussianQuantizer


@torch.inference_mode()
def fashion_table(tok, split: str = "test", batch_size: int = 500, limit: int | None = None,
                  fewer_bits: tuple[int, ...] = (5, 4, 3, 2)) -> dict:
    images, labels = data.fashion_mnist(split)
    images, labels = images[:limit], labels[:limit]
    latents = torch.cat([tok.autoencoder.encode(data.fashion_mnist_rgb32(images[i: i + batch_size]).to(tok.device),
                                                resize="none").cpu()
                         for i in range(0, len(images), batch_size)])  # (N, C, h, w) scaled posterior modes
    c = tok.config
    values_per_image = latents.shape[-2] * latents.shape[-1] * latents.shape[1]

    def decoded(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([data.fashion_mnist_gray28(tok.autoencoder.decode(z[i: i + batch_size].to(tok.device)).cpu())
                          for i in range(0, len(z), batch_size)])

    real_acc, _, real_feats = classifier_view(images, labels, None)
    rows = []

    def add(name: str, bits, z: torch.Tensor) -> None:
        out = decoded(z)
        acc, fd, _ = classifier_view(out, labels, real_feats)
        rows.append([name, bits, round(float(metrics.psnr(out, images).mean()), 2),
                     round(float(metrics.ssim(out.expand(-1, 3, -1, -1), images.expand(-1, 3, -1, -1)).mean()), 4),
                     acc, fd])

    add("continuous VAE (posterior mode, float32)", "-", latents)
    codes = None
    for bits in (c.bits, *[b for b in fewer_bits if b < c.bits]):
        q = GaussianQuantizer(2 ** bits, c.value_min, c.value_max, c.std_range)  # on CPU, as the latents
        q_codes, values = q.quantize(latents.flatten(2).transpose(1, 2))
        if bits == c.bits:
            codes = q_codes
        add(f"quantized, {bits} bits per channel" + (" (this tokenizer)" if bits == c.bits else ""),
            values_per_image * bits, values.transpose(1, 2).reshape(latents.shape))
    rows.append(["real images", "-", "-", "-", real_acc, 0.0])
    levels = tok.quantizer.levels
    p = torch.bincount(codes.flatten(), minlength=levels).double() / codes.numel()
    entropy = -(p[p > 0] * p[p > 0].log2()).sum().item()
    per_channel_std = latents.transpose(0, 1).flatten(1).std(1)
    description = (
        f"Fashion-MNIST {split} split (zoo.data.fashion_mnist, {len(images)} images), encoded as 32 x 32 RGB "
        f"(zoo.data.fashion_mnist_rgb32) to {latents.shape[1]} x {latents.shape[2]} x {latents.shape[3]} latents, "
        f"scored on the 28 x 28 grey pictures: PSNR (dB) and SSIM; accuracy (%) of {CLASSIFIER} on the "
        f"reconstructions and the Fréchet distance of its features to the real images'. Scaled latents: std "
        f"{latents.std().item():.3f} (per channel {per_channel_std.min().item():.2f} .. "
        f"{per_channel_std.max().item():.2f}); code entropy at {c.bits} bits: {entropy:.2f} of {math.log2(levels):.0f} "
        f"bits."
    )
    return {"description": description, "columns": ["latents", "bits", "psnr", "ssim", "accuracy %",
                                                     "Fréchet distance"],
            "rows": rows, "code_entropy_bits": round(entropy, 3), "latent_std": round(latents.std().item(), 4)}
