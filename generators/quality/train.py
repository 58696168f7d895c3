"""The recipe of the Fashion-MNIST classifier (`fashion-mnist-classifier`) on `zoo.training.train_loop`.

Data: `zoo.data.fashion_mnist("train")` (55,000 images; validation and test are never trained on), random shifts of
up to 2 pixels and horizontal flips; batches drawn at random per step (seeded by the loop). AdamW with warmup +
cosine, label smoothing 0.1. `scripts/train_fashion_classifier.py` is the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from zoo.checkpoints import load_into
from zoo.data import fashion_mnist
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, train_loop

from .classifier import FashionClassifier, FashionClassifierConfig


@dataclass
class ClassifierTrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    seed: int = 0


def augment(images: torch.Tensor) -> torch.Tensor:
    """Per image: a shift of up to 2 pixels (zero fill) and a horizontal flip with probability 1/2 (torch's RNG,
    which the loop seeds per step)."""
    n = images.shape[0]
    padded = F.pad(images, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, n))
    out = torch.stack([padded[i, :, dy[i]: dy[i] + 28, dx[i]: dx[i] + 28] for i in range(n)])
    flip = torch.rand(n) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train(tc: ClassifierTrainConfig, output_dir: str, resume: bool = False,
          accelerator: Accelerator | None = None, config: FashionClassifierConfig | None = None) -> FashionClassifier:
    """Train with `zoo.training.train_loop` (checkpoints in ``output_dir/checkpoints``); returns the model in eval
    mode."""
    images, labels = fashion_mnist("train")

    def build(accelerator: Accelerator) -> Parts:
        model = FashionClassifier(config or FashionClassifierConfig())
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        return Parts(models={"model": model}, optimizers={"model": opt})

    def batches(step: int, rank: int, world: int):
        idx = torch.randint(0, len(images), (tc.batch_size,))  # the loop seeds torch per (seed, step, rank)
        return augment(images[idx]), labels[idx]

    def step(s: TrainStep) -> dict:
        x, y = s.batch
        loss = F.cross_entropy(s.models["model"](x), y, label_smoothing=tc.label_smoothing)
        s.update("model", loss, max_grad_norm=1.0)
        return {"loss": loss}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=1000, log_every=200,
                      desc="fashion-classifier")
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    return trained.models["model"].eval()


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> FashionClassifier:
    """The model of a `train` checkpoint folder, with the config of registry entry `spec` (`zoo eval`; the family's
    checkpoint reader: the spoken-digit classifier's is `audio_train.model_from_checkpoint`)."""
    if spec.architecture == "digit-cnn":
        from .audio_train import model_from_checkpoint as digit_model_from_checkpoint

        return digit_model_from_checkpoint(checkpoint, spec, run)
    model = FashionClassifier(FashionClassifierConfig(**spec.config))
    load_into(model, checkpoint_model_state(checkpoint), source=str(Path(checkpoint) / "model.safetensors"))
    model.card_info["spec"] = spec
    return model.eval()
