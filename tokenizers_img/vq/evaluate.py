"""Evaluation of a VQ tokenizer on Fashion-MNIST (the data the tiny tokenizer is trained on): reconstruction PSNR /
SSIM on the 28 x 28 pictures, codebook usage, and what the zoo's Fashion-MNIST classifier sees in the
reconstructions (accuracy, Fréchet distance in its features against the real test set), beside a grey thumbnail of
the nearest number of bits and the real images."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

import zoo
from zoo import data, metrics

from .model import LlamaGenVQ

CLASSIFIER = "fashion-mnist-classifier"


def thumbnail(images: torch.Tensor, side: int) -> torch.Tensor:
    """``(N, 1, 28, 28)`` -> the same size through an 8-bit grey ``side x side`` thumbnail (bicubic down and up)."""
    small = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)
    small = (small * 255).round() / 255
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


@functools.lru_cache(maxsize=1)
def classifier():
    return zoo.load(CLASSIFIER)


@torch.inference_mode()
def classifier_view(images: torch.Tensor, labels: torch.Tensor, real_features) -> tuple[float, float, object]:
    """(accuracy %, Fréchet distance to `real_features`, features) of the classifier on `images`."""
    clf = classifier()
    feats = torch.cat([clf.features(images[i: i + 500]).double().cpu() for i in range(0, len(images), 500)])
    preds = clf.head(feats.float().to(clf.device)).argmax(-1).cpu()
    accuracy = 100 * (preds == labels).float().mean().item()
    fd = metrics.frechet_distance(feats.numpy(), real_features) if real_features is not None else 0.0
    return round(accuracy, 2), round(fd, 3), feats.numpy()


@torch.inference_mode()
def fashion_table(model: LlamaGenVQ, split: str = "test", batch_size: int = 500, limit: int | None = None) -> dict:
    """The table; `limit`: only the first images of the split (quick checks)."""
    images, labels = data.fashion_mnist(split)
    images, labels = images[:limit], labels[:limit]
    size = model.config.image_size
    codes, recon = [], []
    for i in range(0, len(images), batch_size):
        x = data.fashion_mnist_rgb32(images[i: i + batch_size])
        if size != 32:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
        tokens = model.encode(x, resize="none")
        codes.append(tokens.codes.cpu())
        recon.append(data.fashion_mnist_gray28(model.decode(tokens).cpu()))
    codes, recon = torch.cat(codes), torch.cat(recon)
    counts = torch.bincount(codes.flatten(), minlength=model.codebook_size).double()
    p = counts / counts.sum()
    perplexity = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    bits = codes[0].numel() * math.log2(model.codebook_size)
    side = min((max(1, math.floor(math.sqrt(bits / 8))) + d for d in (0, 1)), key=lambda s: abs(8 * s * s - bits))
    base = thumbnail(images, side)
    real_acc, _, real_feats = classifier_view(images, labels, None)  # Fréchet distances: against these same images
    rows = []
    for name, out, b in ((f"this tokenizer ({codes.shape[1]} x {codes.shape[2]} codes)", recon, round(bits)),
                         (f"grey {side}x{side} thumbnail (8 bit, bicubic)", base, 8 * side * side)):
        acc, fd, _ = classifier_view(out, labels, real_feats)
        rows.append([name, b, round(float(metrics.psnr(out, images).mean()), 2),
                     round(float(metrics.ssim(out.expand(-1, 3, -1, -1), images.expand(-1, 3, -1, -1)).mean()), 4),
                     acc, fd])
    rows.append(["real images", "-", "-", "-", real_acc, 0.0])
    description = (
        f"Fashion-MNIST {split} split (zoo.data.fashion_mnist, {len(images)} images), encoded as 32 x 32 RGB "
        f"(zoo.data.fashion_mnist_rgb32), scored on the 28 x 28 grey pictures: PSNR (dB) and SSIM; accuracy (%) of "
        f"{CLASSIFIER} on the reconstructions and the Fréchet distance of its features to the real images'. Codebook "
        f"usage on this split: {int((counts > 0).sum())} of {model.codebook_size} codes, perplexity {perplexity:.1f}."
    )
    return {"description": description, "columns": ["images", "bits", "psnr", "ssim", "accuracy %", "Fréchet distance"],
            "rows": rows, "codes_used": int((counts > 0).sum()), "perplexity": perplexity}
