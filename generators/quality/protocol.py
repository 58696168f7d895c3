"""The generation benchmark, in one place: how every image generator of the zoo is scored on Fashion-MNIST.

* The judge is `fashion-mnist-classifier`, trained on the train split (its test accuracy is the reference).
* For a class-conditional generator: `per_class` samples of each of the 10 classes (seeds 0..per_class-1), at the
  generator's chosen settings; **accuracy** = the share the classifier assigns to the conditioning class (to compare
  with its accuracy on real test images), **Fréchet distance** = between the classifier's penultimate features of
  the samples and of the real test set (10,000 images), as FID does with Inception features.
* Reference rows: real train images (10,000, the first of the split) against the test set; the paired tokenizer's
  reconstructions of the test set; and the same generator without CFG.
* Speed: images/s at batch 1 and 64 (CPU unless the model is elsewhere).

Images of any size and channel count are mapped to the classifier's 28 x 28 grey input by
`zoo.data.fashion_mnist_gray28`; the tokenizers see Fashion-MNIST as `zoo.data.fashion_mnist_rgb32`.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

import zoo
from zoo import data
from zoo.metrics import frechet_distance

CLASSIFIER = "fashion-mnist-classifier"
COLUMNS = ["rows", "settings", "images", "accuracy %", "Fréchet distance", "images/s (batch 1 / 64)"]


@functools.lru_cache(maxsize=1)
def classifier():
    return zoo.load(CLASSIFIER)


@torch.inference_mode()
def features_and_predictions(images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, torch.Tensor]:
    """The classifier's penultimate features ``(N, D)`` (float64) and class ids ``(N,)`` of `images`."""
    clf = classifier()
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        f = clf.features(images[i: i + batch_size])
        feats.append(f.double().cpu())
        preds.append(clf.head(f).argmax(-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds)


@functools.lru_cache(maxsize=2)
def real(split: str = "test") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A split's images, labels and classifier features (``"test"``: the reference of the table; ``"validation"``:
    for choosing settings)."""
    images, labels = data.fashion_mnist(split)
    return images, labels, features_and_predictions(images)[0]


def score(images: torch.Tensor, labels: torch.Tensor, split: str = "test") -> dict[str, float]:
    """Accuracy (%) of the classifier on `images` against `labels`, and the Fréchet distance to the real `split`."""
    feats, preds = features_and_predictions(images)
    return {"accuracy": round(100 * (preds == labels.cpu()).float().mean().item(), 2),
            "frechet": round(max(0.0, frechet_distance(feats, real(split)[2])), 3), "images": len(images)}


def reconstruction_row(tokenizer, split: str = "test") -> list:
    """The tokenizer's reconstructions of the real `split` images, scored."""
    images, labels, _ = real(split)
    recon = torch.cat([tokenizer.reconstruct(data.fashion_mnist_rgb32(images[i: i + 500])).cpu()
                       for i in range(0, len(images), 500)])
    return _row(f"{tokenizer.name} reconstructions of the {split} images", "-", score(recon, labels, split))


def reference_rows(split: str = "test", n_train: int = 10000) -> list[list]:
    """The real `split` images themselves and real train images, scored against the real `split`."""
    images, labels, _ = real(split)
    train, train_labels = data.fashion_mnist("train")
    return [_row(f"real {split} images", "-", score(images, labels, split)),
            _row(f"real train images (first {n_train})", "-", score(train[:n_train], train_labels[:n_train], split))]


def _row(name: str, settings: str, s: dict, speed: str = "-") -> list:
    return [name, settings, s["images"], s["accuracy"], s["frechet"], speed]


def settings_text(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items()) or "defaults"


def sample_per_class(gen, per_class: int, batch_size: int, convert, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` samples of every class (sample k of a class uses seed k), in batches of `batch_size`, each batch
    passed through `convert`; the samples and their labels ``(N,)`` (any modality)."""
    labels = torch.arange(gen.num_classes).repeat_interleave(per_class)
    seeds = list(range(per_class)) * gen.num_classes
    out = [convert(gen.sample(labels[i: i + batch_size], seed=seeds[i: i + batch_size], **settings))
           for i in range(0, len(labels), batch_size)]
    return torch.cat(out), labels


def samples_per_second(gen, batch: int, repeats: int = 2, **settings) -> float:
    """Samples/s of ``gen.sample`` at `batch` (after one warm-up sample), generation and decoding."""
    labels = torch.arange(batch) % gen.num_classes
    gen.sample(labels[:1], seed=[0], **settings)  # warm-up
    start = time.perf_counter()
    for r in range(repeats):
        gen.sample(labels, seed=list(range(r * batch, (r + 1) * batch)), **settings)
    return batch * repeats / (time.perf_counter() - start)


def rows_of_generator(gen, *, sample, score, row, per_class: int, settings: dict | None, speed: bool,
                      without_cfg: bool) -> list[list]:
    """A generator's rows in a protocol given by `sample(gen, per_class, **settings) -> (samples, labels)`,
    `score(samples, labels) -> dict` and `row(name, settings_text, scores, speed) -> list`: samples at `settings`
    (its defaults when None) with batch 1 / 64 speed, and (`without_cfg`) the same with ``cfg_scale=1.0``."""
    settings = dict(settings or {})
    samples, labels = sample(gen, per_class, **settings)
    rate = "-"
    if speed:
        rate = f"{samples_per_second(gen, 1, **settings):.2f} / {samples_per_second(gen, 64, **settings):.1f}"
    rows = [row(gen.name, settings_text(settings), score(samples, labels), rate)]
    if without_cfg:
        no_cfg = {**settings, "cfg_scale": 1.0}
        samples, labels = sample(gen, per_class, **no_cfg)
        rows.append(row(f"{gen.name}, no CFG", settings_text(no_cfg), score(samples, labels)))
    return rows


def paired_models(generators: list) -> list:
    """The generators' paired tokenizers / autoencoders, each once, in order (their reconstruction rows)."""
    out = {}
    for gen in generators:
        tok = gen.paired_model()
        out.setdefault(tok.name, tok)
    return list(out.values())


def sample_all(gen, per_class: int, batch_size: int = 250, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` samples of every class (sample k of a class uses seed k), in batches; images and labels."""
    return sample_per_class(gen, per_class, batch_size, lambda images: images.cpu(), **settings)


def generator_rows(gen, per_class: int = 1000, settings: dict | None = None, speed: bool = True,
                   split: str = "test", without_cfg: bool = True) -> list[list]:
    """The generator's rows: samples at `settings` (its defaults when None), and (`without_cfg`) the same without
    CFG."""
    return rows_of_generator(gen, sample=sample_all, score=lambda images, labels: score(images, labels, split),
                             row=_row, per_class=per_class, settings=settings, speed=speed, without_cfg=without_cfg)


def generation_table(generators: list, per_class: int = 1000, settings: dict[str, dict] | None = None,
                     split: str = "test", speed: bool = True) -> dict:
    """The one table: reference rows, the paired tokenizers' reconstructions, then every generator; Fréchet distances
    against the real `split` (``"test"`` for reporting, ``"validation"`` for choosing settings)."""
    rows = reference_rows(split) + [reconstruction_row(tok, split) for tok in paired_models(generators)]
    for gen in generators:
        rows += generator_rows(gen, per_class, (settings or {}).get(gen.name), speed=speed, split=split)
    description = (
        f"Fashion-MNIST, scored by {CLASSIFIER} (trained on the train split): accuracy = share of images the "
        f"classifier assigns to their (conditioning) class; Fréchet distance between its penultimate features of "
        f"the images and of the {len(real(split)[0])} real {split} images. Generators: {per_class} samples per class, "
        f"sample k of a class with seed k. images/s: CPU, batch 1 / 64 (generation and decoding)."
    )
    return {"description": description, "columns": COLUMNS, "rows": rows}
