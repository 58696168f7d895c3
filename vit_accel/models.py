"""A timm ViT with a token-reduction method applied, as a zoo model (`zoo.load`, `save_pretrained`, model card).

The config names the timm architecture and its keyword arguments (plain JSON values), and the method with its
arguments; the method is applied with `vit_accel.patch` at build time, so the weights are the plain timm ones
(``vit.*`` keys) and a saved folder loads with or without the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from zoo.api import ZooModel, as_image_batch
from zoo.registry import register_architecture

from .patch import METHODS, patch, unpatch


@dataclass
class AcceleratedViTConfig:
    architecture: str = "vit-accel"
    timm_model: str = "vit_tiny_patch16_224"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    # input normalisation applied by `forward` to images in [0, 1]
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)} or None, got {self.method!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)


@register_architecture("vit-accel")
class AcceleratedViT(ZooModel):
    """`forward(images)` takes images in [0, 1], (B, C, H, W), and returns the classifier logits (B, num_classes)."""

    config_class = AcceleratedViTConfig
    kind = "accelerator"
    modality = "image"

    def __init__(self, config: AcceleratedViTConfig):
        super().__init__(config)
        import timm

        if not timm.is_model(config.timm_model):
            raise ValueError(f"timm_model: {config.timm_model!r} is not a timm model name")
        self.vit = timm.create_model(config.timm_model, pretrained=False, **config.timm_kwargs)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1), persistent=False)
        if config.method is not None:
            patch(self.vit, config.method, **config.method_kwargs)

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, 3, *self.vit.patch_embed.img_size, generator=g), {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = as_image_batch(images)
        return self.vit((images - self.mean) / self.std)

    def with_method(self, method: str | None, **method_kwargs: Any) -> "AcceleratedViT":
        """Re-patch in place with another method (None: the plain model); the weights are untouched."""
        unpatch(self.vit)
        if method is not None:
            patch(self.vit, method, **method_kwargs)
        self.config = dataclasses.replace(self.config, method=method, method_kwargs=dict(method_kwargs))
        return self

    def card_facts(self) -> dict[str, Any]:
        facts = super().card_facts()
        facts.update(backbone=self.config.timm_model, method=self.config.method or "none",
                     method_arguments=self.config.method_kwargs or "-")
        return facts

    def card_usage(self) -> str:
        return "logits = model(images)  # images in [0, 1], (B, 3, H, W)"

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """The digits ViTs: every token-reduction method at several levels on the held-out digits (MACs, top-1,
        agreement with the unpatched model; `zoo eval`; .evaluate.digits_table)."""
        from .evaluate import digits_table

        return digits_table(self, split=split)
