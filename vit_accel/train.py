"""The recipe of the digits ViTs (`vit-tiny-digits`, `vit-tiny-digits-routing`) on `zoo.training.train_loop`.

Data: zoo.data digits (train 0-1,299; validation 1,300-1,499 and test 1,500-1,796 are never trained on),
upsampled to 32x32 (vit_accel.evaluate.digits), random affine augmentation; each epoch is one fixed shuffle (the
same on every process, each process taking its share). AdamW with warmup + cosine, label smoothing, a complete
checkpoint every epoch. With ``method="routing"`` the model gets token routers (vit_accel.routing) and the loss adds
``budget_weight`` x the compute-budget loss and ``distill`` x the KL to the frozen `init` model; the routers'
Gumbel noise falls linearly from 1 to 0 over the first ``anneal`` share of the steps. scripts/train_vit_digits.py
is the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

import zoo
from zoo.checkpoints import load_into
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, make_accelerator, train_loop

from . import routing
from .evaluate import digits, predict, top1
from .models import AcceleratedViT, AcceleratedViTConfig
from .trained import DIGITS_VIT, ROUTING_KWARGS


@dataclass
class DigitsTrainConfig:
    method: str | None = None         # "routing": train with token routers
    init: str | None = None           # zoo folder to start from (and, with distill > 0, the frozen teacher)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    target: float = ROUTING_KWARGS["target"]  # routing budget
    budget_weight: float = 4.0
    anneal: float = 0.7
    distill: float = 0.0
    seed: int = 0


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine per image: rotation +-12 degrees, scale 0.9-1.1, shift +-3 px (of 32); zero fill."""
    n = images.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale, shift = u[:, 0] * math.radians(12), 1 + 0.1 * u[:, 1], u[:, 2:] * (3 / 16)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def build_models(tc: DigitsTrainConfig) -> tuple[AcceleratedViT, AcceleratedViT | None]:
    """The model to train and (for `distill`) the frozen teacher."""
    method_kwargs = dict(ROUTING_KWARGS, target=tc.target) if tc.method == "routing" else {}
    model = AcceleratedViT(AcceleratedViTConfig(**DIGITS_VIT, method=tc.method, method_kwargs=method_kwargs))
    teacher = None
    if tc.init:
        base = zoo.load(f"local-dir:{tc.init}")
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(".router." not in key for key in missing):
            raise ValueError(f"{tc.init} does not fit: missing {missing}, unexpected {unexpected}")
        teacher = base.eval().requires_grad_(False) if tc.distill > 0 else None
    elif tc.distill > 0:
        raise ValueError("distill needs init (the teacher)")
    return model, teacher


def train(tc: DigitsTrainConfig, output_dir: str, resume: bool = False,
          accelerator: Accelerator | None = None) -> AcceleratedViT:
    """Train a digits ViT with `zoo.training.train_loop` (checkpoints in ``output_dir/checkpoints``); returns it
    unwrapped, in eval mode."""
    images, labels = digits("train")
    accelerator = accelerator or make_accelerator(output_dir)  # an epoch's steps depend on the process count
    world = accelerator.num_processes
    steps_per_epoch = len(images) // (tc.batch_size * world)
    total = tc.epochs * steps_per_epoch
    teacher = None

    def build(accelerator: Accelerator) -> Parts:
        nonlocal teacher
        model, teacher = build_models(tc)
        if teacher is not None:
            teacher.to(accelerator.device)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        return Parts(models={"model": model}, optimizers={"model": opt})

    def batches(step: int, rank: int, world: int):
        epoch, within = divmod(step, steps_per_epoch)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(tc.seed * 1000 + epoch))
        idx = order[rank::world][within * tc.batch_size:(within + 1) * tc.batch_size]
        return augment(images[idx]), labels[idx]

    def step(s: TrainStep) -> dict:
        model = s.models["model"]
        inner = s.accelerator.unwrap_model(model)
        x, y = s.batch
        logs = {}
        if tc.method == "routing":
            routing.set_noise(inner.vit, max(0.0, 1 - s.index / (tc.anneal * total)))
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
        if tc.method == "routing":
            loss = loss + tc.budget_weight * routing.budget_loss(inner.vit)
            logs["full-path fraction"] = routing.stats(inner.vit).full_fraction.float().mean()
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x).log_softmax(-1)
            loss = loss + tc.distill * F.kl_div(logits.log_softmax(-1), target, log_target=True,
                                                reduction="batchmean")
        s.update("model", loss, max_grad_norm=1.0)
        return {"loss": loss, **logs}

    loop = LoopConfig(steps=total, warmup_steps=tc.warmup_epochs * steps_per_epoch, seed=tc.seed,
                      save_every=steps_per_epoch, log_every=5 * steps_per_epoch, desc="vit-digits")
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    return trained.models["model"].eval()


def heldout_table(model: AcceleratedViT, name: str) -> dict:
    """The card's table: held-out top-1 (and, for routing, the executed block MACs)."""
    images, labels = digits("test")
    model.cpu()
    columns, row = ["model", "held-out top-1"], [name, f"{100 * top1(predict(model, images), labels):.2f} %"]
    description = f"Held-out digits: the last {len(labels)} images of scikit-learn digits (zoo.data.digits)."
    if model.config.method == "routing":
        with torch.inference_mode():  # all held-out images in one batch: stats of every image
            model(images)
        st = routing.stats(model.vit)
        full = routing.block_macs(model.vit.blocks[0], torch.tensor(65)).item() * len(model.vit.blocks)
        columns += ["block MACs / image (mean)", "vs. all tokens", "full-path fraction"]
        row += [f"{st.macs.float().mean().item() / 1e6:.2f} M", f"{st.macs.float().mean().item() / full:.3f}",
                f"{st.full_fraction.mean().item():.3f}"]
        description += (" MACs: the transformer blocks and routers, per image on its own routed tokens (the patch "
                        f"embedding and head add a constant); all tokens: {full / 1e6:.2f} M.")
    return {"description": description, "columns": columns, "rows": [row]}


def export(model: AcceleratedViT, name: str, out: str | Path) -> dict:
    """Measure on the held-out digits and write the zoo folder with the numbers in its card; returns the table."""
    table = heldout_table(model, name)
    model.card_info["spec"] = zoo.model_info(name)
    model.card_info["metrics"] = table
    Path(out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return table


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> AcceleratedViT:
    """The model of a `train` checkpoint folder, with the config of registry entry `spec` (`zoo eval`)."""
    model = AcceleratedViT(AcceleratedViTConfig(**spec.config))
    load_into(model, checkpoint_model_state(checkpoint), source=str(Path(checkpoint) / "model.safetensors"))
    model.card_info["spec"] = spec
    return model.eval()
