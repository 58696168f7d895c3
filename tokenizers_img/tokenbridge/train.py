"""Training recipe of a small KL VAE of MAR's architecture on Fashion-MNIST (the bundled `kl-vae-tiny-fashion`), on
`zoo.training.train_loop`; TokenBridge then quantizes its latents post-training, with no retraining.

The official KL-16 comes from LDM's recipe (L1 + LPIPS + a PatchGAN, KL weight 1e-6 on summed elements). Here, on
32 x 32 Fashion-MNIST (`zoo.data.fashion_mnist_rgb32`, train split only): L1 + MSE reconstruction of a posterior
draw (the reparameterisation trick) and ``kl_weight`` times the KL divergence to N(0, I) averaged over latent
elements; no LPIPS (its weights cannot be downloaded here) and no GAN. After training, ``scaling_factor`` is set to
``1 / std`` of the posterior means over 10,000 training images (as MAR's 0.2325 does for KL-16), so that scaled
latents have unit variance, as the quantizer's N(0, 1) bins assume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from zoo import data
from zoo.checkpoints import load_into
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, train_loop

from .vae import MARVAE, MARVAEConfig


@dataclass
class VAETrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    kl_weight: float = 1e-3   # per latent element (mean), against L1 + MSE per pixel (mean)
    seed: int = 0


class VAEObjective(torch.nn.Module):
    """The VAE plus its training losses (one module, so Accelerate prepares and saves one model)."""

    def __init__(self, model: MARVAE, tc: VAETrainConfig):
        super().__init__()
        self.model, self.tc = model, tc

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # images (B, 3, H, W) in [-1, 1]
        vae = self.model.vae
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec_loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1.0 - posterior.logvar).mean()
        return {"loss": rec_loss + self.tc.kl_weight * kl, "reconstruction": rec_loss, "kl": kl,
                "latent_std": posterior.mean.detach().std()}


@torch.no_grad()
def fit_scaling_factor(model: MARVAE, count: int = 10_000, batch_size: int = 500) -> float:
    """``1 / std`` of the posterior means over the first `count` training images (all channels pooled)."""
    images, _ = data.fashion_mnist("train")
    means = [model.encode_moments(data.fashion_mnist_rgb32(images[i: i + batch_size]) * 2 - 1)[0]
             for i in range(0, min(count, len(images)), batch_size)]
    return round(1.0 / torch.cat(means).std().item(), 4)


def train(tc: VAETrainConfig, config: MARVAEConfig, output_dir: str, resume: bool = False,
          accelerator: Accelerator | None = None) -> MARVAE:
    """Train on the Fashion-MNIST train split; returns the VAE in eval mode with its fitted ``scaling_factor``."""
    images, _ = data.fashion_mnist("train")

    def build(accelerator: Accelerator) -> Parts:
        objective = VAEObjective(MARVAE(config), tc)
        opt = torch.optim.AdamW(objective.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
        return Parts(models={"objective": objective}, optimizers={"objective": opt})

    def batches(step: int, rank: int, world: int):
        idx = torch.randint(0, len(images), (tc.batch_size,))  # the loop seeds torch per (seed, step, rank)
        return data.fashion_mnist_rgb32(images[idx]) * 2 - 1

    def step(s: TrainStep) -> dict:
        out = s.models["objective"](s.batch)
        s.update("objective", out["loss"], max_grad_norm=1.0)
        return out

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=500, log_every=100,
                      desc="kl-vae")
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    model = trained.models["objective"].model.eval()
    model.config.scaling_factor = fit_scaling_factor(model)
    return model


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> MARVAE:
    """The VAE of a `train` checkpoint folder, with the config of registry entry `spec` (its scaling factor is
    refitted on the training images)."""
    model = MARVAE(MARVAEConfig(**spec.config))
    load_into(model, checkpoint_model_state(checkpoint, prefix="model."),
              source=str(Path(checkpoint) / "model.safetensors"))
    model.config.scaling_factor = fit_scaling_factor(model.eval())
    model.card_info["spec"] = spec
    return model
