"""Measure token-reduction methods on the ViT trained here (`vit-tiny-digits`): MACs, held-out top-1, agreement.

`compare` patches the model with each method at several reduction levels and returns one table (rows of
`Result`); `markdown` prints it. Methods whose module is missing (written in parallel) are skipped with a note.
MACs per image come from `vit_accel.flops.count_macs` (linear layers and convolutions on the tensors they receive,
plus the attention matmuls: the papers' "GFLOPs" convention); for routing, whose cost depends on the image, the
mean of one-image forwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo import data

from .models import AcceleratedViT
from .patch import patch, unpatch


def digits(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """zoo.data digits (train 0-1,299, validation 1,300-1,499, test 1,500-1,796) as ``(N, 3, size, size)`` in [0, 1] and labels.

    The 8x8 images are upsampled bilinearly and repeated to 3 channels.
    """
    images, labels = data.digits(split)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images.expand(-1, 3, -1, -1).contiguous(), labels


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits ``(N, classes)`` of `model` on `images`, in batches."""
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


# Reduction levels per method: keyword arguments of `vit_accel.patch`. Routing levels are eval thresholds of the
# trained routing model (its training budget is threshold 0).
LEVELS: dict[str, list[dict[str, Any]]] = {
    "tome": [dict(r=r) for r in (2, 4, 8, 12)],
    "gtp": [dict(num_prop=p) for p in (2, 4, 8)],
    "hired": [dict(token_budget=b, layer=layer) for layer in (4, 1) for b in (0.5, 0.25)],
    "routing": [dict(threshold=t) for t in (-0.5, 0.0, 0.5, 1.0)],
}


@dataclass(frozen=True)
class Result:
    """One row: a method at one setting, measured on the held-out digits.

    `macs` is per image (the mean over images for input-dependent routing); `agreement` is the share of images
    whose predicted class equals the unpatched base model's.
    """

    method: str
    setting: str
    macs: float
    top1: float
    agreement: float


def mean_macs(model: nn.Module, images: torch.Tensor, per_image: bool = False) -> float:
    """MACs per image (vit_accel.flops.count_macs on normalised input); `per_image` averages one-image forwards
    (for input-dependent methods), otherwise one image stands for all."""
    from .flops import count_macs

    x = (images - model.mean) / model.std
    if not per_image:
        return float(count_macs(model.vit, x[:1]).total)
    return sum(count_macs(model.vit, x[i:i + 1]).total for i in range(len(x))) / len(x)


def _row(method: str, setting: str, model: AcceleratedViT, images: torch.Tensor, labels: torch.Tensor,
         reference: torch.Tensor, per_image: bool = False) -> Result:
    predicted = predict(model, images).argmax(-1)
    return Result(method, setting, mean_macs(model, images, per_image), (predicted == labels).float().mean().item(),
                  (predicted == reference).float().mean().item())


def _describe(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items())


def compare(base: AcceleratedViT, images: torch.Tensor, labels: torch.Tensor, routed: AcceleratedViT | None = None,
            levels: dict[str, list[dict[str, Any]]] = LEVELS,
            note: Callable[[str], None] = print) -> list[Result]:
    """Patch `base` with every method at every level (restoring it after each) and measure it.

    Args:
        base: the unpatched model (e.g. ``zoo.load("vit-tiny-digits")``); its predictions are the reference.
        images, labels: ``(N, 3, H, W)`` in [0, 1] and ``(N,)``.
        routed: the trained routing model (``vit-tiny-digits-routing``); routing rows are skipped without it,
            since untrained routers route nothing away.
        note: called with a line for every method skipped.
    """
    if base.config.method is not None:
        raise ValueError(f"base must be unpatched, it carries {base.config.method!r}")
    reference = predict(base, images).argmax(-1)
    rows = [_row("none", "-", base, images, labels, reference)]
    for method, settings in levels.items():
        if importlib.util.find_spec(f"vit_accel.{method}") is None:
            note(f"skipped {method}: vit_accel/{method}.py does not exist yet")
            continue
        if method == "routing":
            if routed is None:
                note("skipped routing: no trained routing model given")
                continue
            rows += _routing_rows(routed, settings, images, labels, reference)
            continue
        for kwargs in settings:
            patch(base.vit, method, **kwargs)
            try:
                rows.append(_row(method, _describe(kwargs), base, images, labels, reference))
            finally:
                unpatch(base.vit)
    return rows


def _routing_rows(routed: AcceleratedViT, settings: Iterable[dict[str, Any]], images: torch.Tensor,
                  labels: torch.Tensor, reference: torch.Tensor) -> list[Result]:
    """The routing model at each eval setting (rebuilt with those routing arguments, same weights), and with
    every token forced through every block (its fine-tuned backbone, unrouted)."""
    state = routed.state_dict()
    rows = []
    for kwargs in [dict(force="full"), *settings]:
        config = dataclasses.replace(routed.config, method_kwargs={**routed.config.method_kwargs, **kwargs})
        model = AcceleratedViT(config)
        model.load_state_dict(state)
        rows.append(_row("routing", _describe(kwargs), model.eval(), images, labels, reference, per_image=True))
    return rows


COLUMNS = ["method", "setting", "MMACs / image", "vs. base", "top-1 %", "agreement %"]


def table_rows(rows: list[Result]) -> list[list[str]]:
    """The rows as printed: MACs per image (and relative to the first row), held-out top-1 and agreement."""
    full = rows[0].macs
    return [[r.method, r.setting, f"{r.macs / 1e6:.2f}", f"{r.macs / full:.3f}", f"{100 * r.top1:.2f}",
             f"{100 * r.agreement:.2f}"] for r in rows]


def markdown(rows: list[Result]) -> str:
    """The table: MACs per image (and relative to the first row), held-out top-1 and agreement with the base."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(rows)]
    return "\n".join(lines)


BASE_MODEL, ROUTING_MODEL = "vit-tiny-digits", "vit-tiny-digits-routing"


def digits_table(model: AcceleratedViT, levels: dict[str, list[dict[str, Any]]] | None = None,
                 split: str = "test") -> dict[str, Any]:
    """`AcceleratedViT.evaluate` for the digits ViTs (`zoo eval vit-tiny-digits`): the `compare` table as a card's
    ``metrics`` block (plus ``results``: the `Result` rows).

    The unpatched digits ViT is the base and the bundled routing model gives the routing rows; evaluating the
    routing model takes the bundled `vit-tiny-digits` as its base. `levels`: default `LEVELS` (read at call time).
    """
    from .trained import DIGITS_VIT

    if model.config.timm_kwargs != DIGITS_VIT["timm_kwargs"]:
        raise NotImplementedError("AcceleratedViT.evaluate measures the digits ViTs (32 x 32 input, 10 classes; "
                                  f"vit_accel.trained.DIGITS_VIT); this one has {model.config.timm_kwargs}")
    import zoo

    notes: list[str] = []
    if model.config.method is None:
        base, base_name, routed_name = model, "this model", ROUTING_MODEL
        try:
            routed = zoo.load(ROUTING_MODEL)
        except (KeyError, FileNotFoundError, zoo.WeightsUnavailableError) as err:
            notes.append(f"no routing model ({err})")
            routed = None
    elif model.config.method == "routing":
        base, base_name, routed, routed_name = zoo.load(BASE_MODEL), BASE_MODEL, model, "this model"
    else:
        raise ValueError(f"evaluate the unpatched digits ViT (this one carries {model.config.method!r}): every "
                         "method is applied to it in turn")
    images, labels = digits(split)
    rows = compare(base, images, labels, routed=routed, levels=LEVELS if levels is None else levels,
                   note=notes.append)
    description = (
        f"The {split} split of scikit-learn digits (zoo.data.digits: {len(labels)} images). Every vit_accel "
        f"method at several reduction levels on {base_name} (unpatched: the first row); routing rows: {routed_name}. "
        "MMACs / image: vit_accel.flops.count_macs (linear layers, convolutions and attention matmuls on the tokens "
        "each actually gets; routing: the mean over the images); agreement: the share of images whose predicted "
        "class is the unpatched model's."
        + (" Skipped: " + "; ".join(notes) + "." if notes else "")
    )
    return {"description": description, "columns": list(COLUMNS), "rows": table_rows(rows), "results": rows}
