"""Training recipe of a LlamaGen VQ tokenizer on `zoo.training.train_loop` (the bundled `llamagen-vq-tiny-fashion`).

The official recipe (`tokenizer/tokenizer_image/vq_train.py`): reconstruction L1 (+ LPIPS perceptual and a PatchGAN
after a warm-up), the codebook loss ``|sg(z) - e|^2`` and the commitment loss ``0.25 |z - sg(e)|^2`` on
l2-normalised latents, a straight-through estimator. Here, on 32 x 32 Fashion-MNIST (`zoo.data.fashion_mnist_rgb32`,
the train split only): L1 + MSE reconstruction, the same codebook and commitment losses, no LPIPS (its weights
cannot be downloaded here) and no GAN (the images are tiny and simple). Two additions keep a small codebook in use:
the codebook starts from the encoder's latents of the first batch, and every `restart_every` steps codes unused
since the last restart are moved onto random latents of the batch.
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

from .model import LlamaGenVQ, VQConfig


@dataclass
class VQTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    commit_beta: float = 0.25      # official commit_loss_beta
    codebook_weight: float = 1.0   # official codebook_loss weight
    restart_every: int = 100       # dead-code restart period (0 = off)
    seed: int = 0


class VQObjective(torch.nn.Module):
    """The tokenizer plus its training losses (one module, so Accelerate prepares and saves one model)."""

    def __init__(self, model: LlamaGenVQ, tc: VQTrainConfig):
        super().__init__()
        self.model, self.tc = model, tc
        self.register_buffer("used", torch.zeros(model.config.codebook_size, dtype=torch.bool), persistent=True)
        self.register_buffer("initted", torch.zeros((), dtype=torch.bool), persistent=True)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        m, q = self.model, self.model.quantize
        h = m.encode_latents(images)                                       # (B, D, h, w)
        z = q.prepare(h.permute(0, 2, 3, 1))                               # (B, h, w, D), l2-normalised
        flat = z.reshape(-1, z.shape[-1])
        if not bool(self.initted):  # the codebook starts on real latents
            with torch.no_grad():
                pick = torch.randint(0, len(flat), (q.embedding.weight.shape[0],), device=flat.device)
                q.embedding.weight.copy_(flat[pick].detach())
                self.initted.fill_(True)
        ids = q.lookup(h.permute(0, 2, 3, 1)).reshape(-1)
        e = q.codebook()[ids].view_as(z)
        codebook_loss = F.mse_loss(e, z.detach())
        commit_loss = F.mse_loss(z, e.detach())
        quant = (z + (e - z).detach()).permute(0, 3, 1, 2)                 # straight-through
        recon = m.decode_quant(quant)
        rec_loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        loss = rec_loss + self.tc.codebook_weight * codebook_loss + self.tc.commit_beta * commit_loss
        with torch.no_grad():
            self.used[ids] = True
        return {"loss": loss, "reconstruction": rec_loss, "codebook": codebook_loss,
                "usage": self.used.float().mean(), "latents": flat.detach()}

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor) -> None:
        """Move the codes unused since the last restart onto random latents of the batch (after the optimizer
        step: the codebook must not change between the forward and the backward)."""
        weight = self.model.quantize.embedding.weight
        dead = (~self.used).nonzero().squeeze(1)
        if len(dead):
            pick = torch.randint(0, len(latents), (len(dead),), device=latents.device)
            weight[dead] = latents[pick].to(weight.dtype)
        self.used.zero_()


def train(tc: VQTrainConfig, config: VQConfig, output_dir: str, resume: bool = False,
          accelerator: Accelerator | None = None) -> LlamaGenVQ:
    """Train on the Fashion-MNIST train split with `zoo.training.train_loop`; returns the tokenizer in eval mode."""
    images, _ = data.fashion_mnist("train")

    def build(accelerator: Accelerator) -> Parts:
        objective = VQObjective(LlamaGenVQ(config), tc)
        opt = torch.optim.AdamW(objective.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
        return Parts(models={"objective": objective}, optimizers={"objective": opt})

    def batches(step: int, rank: int, world: int):
        idx = torch.randint(0, len(images), (tc.batch_size,))  # the loop seeds torch per (seed, step, rank)
        x = data.fashion_mnist_rgb32(images[idx])
        if config.image_size != 32:
            x = F.interpolate(x, size=(config.image_size,) * 2, mode="bilinear", antialias=True).clamp(0, 1)
        return x * 2 - 1

    def step(s: TrainStep) -> dict:
        objective = s.models["objective"]
        out = objective(s.batch)
        s.update("objective", out["loss"], max_grad_norm=1.0)
        if tc.restart_every > 0 and (s.index + 1) % tc.restart_every == 0:
            s.accelerator.unwrap_model(objective).restart_dead_codes(out["latents"])
        return {k: v for k, v in out.items() if k != "latents"}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=500, log_every=100,
                      desc="vq")
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    return trained.models["objective"].model.eval()


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> LlamaGenVQ:
    """The tokenizer of a `train` checkpoint folder, with the config of registry entry `spec` (`zoo eval`)."""
    model = LlamaGenVQ(VQConfig(**spec.config))
    load_into(model, checkpoint_model_state(checkpoint, prefix="model."),
              source=str(Path(checkpoint) / "model.safetensors"))
    model.card_info["spec"] = spec
    return model.eval()
