"""A small CNN classifier of Fashion-MNIST: the judge of the generation table (its penultimate layer gives the
features of the Fréchet distance). Trained here on the train split (`scripts/train_fashion_classifier.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from zoo.api import ZooModel
from zoo.data import FASHION_MNIST_CLASSES, fashion_mnist_gray28
from zoo.registry import register_architecture


@dataclass
class FashionClassifierConfig:
    """Attributes:
        channels: widths of the three conv stages (two 3x3 convs each; 2x2 max-pool after the first two).
        features: width of the penultimate layer (the Fréchet-distance features).
        dropout: before the last layer, in training.
    """

    architecture: str = "fashion-cnn"
    channels: Sequence[int] = (16, 32, 64)
    features: int = 128
    num_classes: int = 10
    dropout: float = 0.3

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"channels: three conv stages, got {self.channels}")


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


@register_architecture("fashion-cnn")
class FashionClassifier(ZooModel):
    """``forward(images) -> logits (B, 10)``; `features(images) -> (B, features)`. Images: Fashion-MNIST
    ``(B, 1, 28, 28)`` or any generated ``(B, 3, H, W)``, in [0, 1] (mapped by `zoo.data.fashion_mnist_gray28`)."""

    config_class = FashionClassifierConfig
    kind = "classifier"
    modality = "image"
    label_names = FASHION_MNIST_CLASSES

    def __init__(self, config: FashionClassifierConfig):
        super().__init__(config)
        c1, c2, c3 = config.channels
        self.body = nn.Sequential(_stage(1, c1), nn.MaxPool2d(2), _stage(c1, c2), nn.MaxPool2d(2), _stage(c2, c3),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())                      # (B, c3)
        self.neck = nn.Sequential(nn.Linear(c3, config.features), nn.ReLU())                 # (B, features)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.features, config.num_classes))

    def _gray28(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
            raise ValueError(f"images: expected a float (B, C, H, W) tensor in [0, 1], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        if images.shape[1] == 1 and images.shape[-2:] == (28, 28):
            return images
        if images.shape[1] != 3:
            raise ValueError(f"images: expected (B, 1, 28, 28) or (B, 3, H, W), got {tuple(images.shape)}")
        return fashion_mnist_gray28(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, features)``."""
        return self.neck(self.body(self._gray28(images).to(self.device)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Class ids ``(B,)`` of `images`, in batches."""
        return torch.cat([self(images[i: i + batch_size]).argmax(-1).cpu() for i in range(0, len(images), batch_size)])

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Accuracy on a Fashion-MNIST split, overall and per class (`zoo eval`)."""
        from zoo.data import fashion_mnist

        images, labels = fashion_mnist(split)
        correct = self.eval().predict(images) == labels
        rows = [["all", len(labels), round(100 * correct.float().mean().item(), 2)]]
        rows += [[name, int((labels == c).sum()), round(100 * correct[labels == c].float().mean().item(), 2)]
                 for c, name in enumerate(self.label_names)]
        return {"description": f"Fashion-MNIST {split} split (zoo.data.fashion_mnist), top-1 accuracy in %.",
                "columns": ["class", "images", "accuracy %"], "rows": rows}

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, 1, 28, 28, generator=g), {}

    def card_facts(self) -> dict[str, Any]:
        return {**super().card_facts(), "input": "(B, 1, 28, 28) or (B, 3, H, W) in [0, 1]",
                "classes": ", ".join(self.label_names), "features": self.config.features}

    def card_usage(self) -> str:
        return "logits = model(images)        # Fashion-MNIST (B, 1, 28, 28) or generated (B, 3, H, W) in [0, 1]"
