"""Training a FlexTok on Accelerate: first the VAE, then the encoder + FSQ + rectified-flow decoder on its latents.

No official training loop is released (ml-flextok issue #2); this follows the paper and the released modules:

* **VAE** (diffusers ``AutoencoderKL``): L1 + MSE reconstruction and a small KL term; afterwards the latent
  scaling factor is set to ``1 / std`` of the posterior-mode latents on training crops (as Stable Diffusion's was
  chosen), so the flow sees unit-variance latents.
* **Tokenizer**: the VAE is frozen and the latents of a bank of random photo crops are computed once (posterior
  mode, the deterministic tokenization the model uses at inference). Per item, nested dropout keeps the first
  ``k`` registers with ``k`` drawn from the powers of two up to N (``size_sampling_mode="pow2"``) and the CFG null
  condition replaces the registers with probability ``cond_dropout``; the rectified-flow loss is the MSE between
  the decoder's velocity and ``noise - latents`` at ``x_t = t * noise + (1 - t) * latents`` with logit-normal ``t``
  (official ``MinRFNoiseModule``; ``logit_mean`` shifts it towards noise, as SD3's timestep shift does). FSQ passes
  gradients straight through. REPA is not used (no DINOv2 offline).

  Why the shift: without REPA, a small decoder trained at the official logit-normal(0, 1) learns to denoise from
  the noised latents alone and stops reading the registers (in a 1,200-step probe the encoder's gradient norm fell
  to 0.002 and the velocity error at t = 1 was the same for 1 and 64 tokens); at ``logit_mean = 1`` (mean t 0.7)
  the encoder keeps a gradient 90x larger. ``autoencoder_steps`` first trains at t = 1 only (the decoder sees pure
  noise and must rebuild the latents from the registers alone), so that the decoder starts out reading them.

  Why ``keep_all_prob`` (items that keep all N registers, on top of the nested-dropout draw): with pow2 alone only
  1 item in log2(N) + 1 trains the full length, and a small model learns it slowly (in 1,000-step probes at t = 1
  on held-out photos, all 64 tokens decoded at 15.3 dB after 4,000 pow2 steps, 17.7 dB after 1,000 steps that
  always kept all 64).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from zoo.checkpoints import load_into
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, indexed_batches, train_loop

from .model import FlexTok, FlexTokConfig, build_vae
from .vae import FlexTokVAE, FlexTokVAEConfig


# ------------------------------------------------------------------------------------------------------------------
# data


def photo_pyramid(photos: dict[str, torch.Tensor], size: int, max_side: int = 384) -> list[torch.Tensor]:
    """Each photo ``(3, H, W)`` resized (bicubic, antialiased) so its shorter side is ``size * 2**(j/2)`` for every
    j with a result no larger than `max_side` pixels (nor than the photo): the scales crops are taken from."""
    levels = []
    for img in photos.values():
        short = min(img.shape[-2:])
        j = 0
        while True:
            side = round(size * 2 ** (j / 2))
            if side > min(max_side, short):
                break
            scale = side / short
            hw = (max(size, round(img.shape[-2] * scale)), max(size, round(img.shape[-1] * scale)))
            levels.append(F.interpolate(img[None], size=hw, mode="bicubic", antialias=True)[0].clamp(0, 1))
            j += 1
    return levels


def random_crops(levels: list[torch.Tensor], size: int, n: int, seed: int) -> torch.Tensor:
    """`n` random ``size x size`` crops ``(n, 3, size, size)`` in [0, 1] from the pyramid levels (uniform over
    levels, then position), half of them mirrored, with their RGB channels in a random order (most of the training
    photos are grey: permuting the channels of the colour ones is what teaches colours beyond theirs)."""
    rng = random.Random(seed)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = levels[rng.randrange(len(levels))]
        y, x = rng.randint(0, img.shape[-2] - size), rng.randint(0, img.shape[-1] - size)
        crop = img[:, y: y + size, x: x + size]
        crop = crop.flip(-1) if rng.random() < 0.5 else crop
        out[i] = crop[rng.sample(range(3), 3)]
    return out


# ------------------------------------------------------------------------------------------------------------------
# VAE


@dataclass
class VAETrainConfig:
    steps: int = 3000
    batch_size: int = 16
    lr: float = 4e-4
    warmup_steps: int = 100
    kl_weight: float = 1e-6
    crops: int = 20000
    crop_size: int = 0  # training crop side in pixels; 0 = the model's image_size (the VAE is fully convolutional)
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100


def train_vae(model_config: FlexTokConfig, tc: VAETrainConfig, photos: dict[str, torch.Tensor], output_dir: str,
              resume: bool = False, accelerator: Accelerator | None = None):
    """Train the FlexTok VAE of `model_config` on photo crops with `zoo.training.train_loop`; returns
    (vae, scaling_factor). Checkpoints: ``output_dir/checkpoints`` (model: the `_Autoencode` wrapper, ``vae.*``)."""
    size = tc.crop_size or model_config.image_size
    crops = random_crops(photo_pyramid(photos, size), size, tc.crops, tc.seed)

    def build(accelerator: Accelerator) -> Parts:
        autoencoder = _Autoencode(build_vae(model_config))
        opt = torch.optim.AdamW(autoencoder.parameters(), lr=tc.lr, betas=(0.9, 0.99), weight_decay=0.0)
        return Parts(models={"autoencoder": autoencoder}, optimizers={"autoencoder": opt})

    def step(s: TrainStep) -> dict:
        images = s.batch
        x = images * 2 - 1
        recon, kl = s.models["autoencoder"](x)
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        s.update("autoencoder", rec + tc.kl_weight * kl, max_grad_norm=1.0)
        psnr = -10 * torch.log10(F.mse_loss((recon.detach() + 1) / 2, images) + 1e-12)
        return {"rec": rec, "psnr": psnr}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=tc.save_every,
                      log_every=tc.log_every, desc="vae")
    trained = train_loop(loop, output_dir, build, indexed_batches(_Repeat(crops), tc.batch_size), step,
                         resume=resume, accelerator=accelerator)
    vae = trained.models["autoencoder"].vae.eval()
    return vae, latent_scaling_factor(vae, crops[:2048])


class _Autoencode(torch.nn.Module):
    """Images in [-1, 1] -> (reconstruction from a posterior sample, mean KL): one forward for DDP."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl().mean()


@torch.no_grad()
def latent_scaling_factor(vae, images: torch.Tensor, batch_size: int = 128) -> float:
    """``1 / std`` of the posterior-mode latents of `images` (in [0, 1])."""
    latents = torch.cat([vae.encode(images[i: i + batch_size] * 2 - 1).latent_dist.mode()
                         for i in range(0, len(images), batch_size)])
    return float(1.0 / latents.float().std())


class _Repeat(torch.utils.data.Dataset):
    """Item `i` (any ``i >= 0``) of `items` read cyclically after one fixed shuffle: the same order in every run."""

    def __init__(self, items: torch.Tensor, seed: int = 0):
        self.items = items
        self.order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[self.order[i % len(self.items)]]


# ------------------------------------------------------------------------------------------------------------------
# encoder + FSQ + rectified-flow decoder


@dataclass
class FlexTokTrainConfig:
    steps: int = 8000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.05
    cond_dropout: float = 0.1
    keep_k_mode: str = "pow2"
    keep_all_prob: float = 0.0
    logit_mean: float = 0.0
    autoencoder_steps: int = 0
    crops: int = 30000
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100


KEEP_K_MODES = ("pow2", "uniform")


def sample_keep_k(batch: int, num_registers: int, mode: str, device=None) -> torch.Tensor:
    """Nested-dropout lengths ``(B,)`` in 1..N: powers of two up to N (N itself included), or uniform."""
    if mode == "pow2":
        choices = sorted({2 ** i for i in range(int(math.log2(num_registers)) + 1)} | {num_registers})
        pick = torch.randint(0, len(choices), (batch,), device=device)
        return torch.tensor(choices, device=device)[pick]
    if mode == "uniform":
        return torch.randint(1, num_registers + 1, (batch,), device=device)
    raise ValueError(f"keep_k_mode must be one of {KEEP_K_MODES}, got {mode!r}")


class RectifiedFlowObjective(torch.nn.Module):
    """Scaled VAE latents ``(B, C, h, w)`` -> the rectified-flow loss of the tokenizer (one forward, DDP-safe)."""

    def __init__(self, model: FlexTok, cond_dropout: float, keep_k_mode: str, logit_mean: float = 0.0,
                 keep_all_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= keep_all_prob <= 1.0:
            raise ValueError(f"keep_all_prob must be in [0, 1], got {keep_all_prob}")
        self.model, self.cond_dropout, self.keep_k_mode = model, cond_dropout, keep_k_mode
        self.logit_mean, self.keep_all_prob = logit_mean, keep_all_prob
        self.pure_noise = False  # set by the loop during the first `autoencoder_steps`: t = 1 for every item

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        m = self.model
        b = latents.shape[0]
        quants = m.encode_latents(latents)["quants"]                                   # (B, N, d), straight-through
        n = m.config.num_registers
        keep = sample_keep_k(b, n, self.keep_k_mode, latents.device)
        keep = torch.where(torch.rand(b, device=latents.device) < self.keep_all_prob, n, keep)
        uncond = torch.rand(b, device=latents.device) < self.cond_dropout
        t = torch.sigmoid(torch.randn(b, device=latents.device) + self.logit_mean)      # logit-normal timesteps
        if self.pure_noise:
            t = torch.ones_like(t)
        noise = torch.randn_like(latents)
        tt = t.view(b, 1, 1, 1)
        noised = tt * noise + (1 - tt) * latents
        velocity = m.decoder(quants, noised, t, keep, uncond).float()
        return F.mse_loss(velocity, noise - latents)


@torch.no_grad()
def encode_bank(model: FlexTok, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Scaled posterior-mode latents of `images` in [0, 1] ``(n, 3, H, W)`` -> ``(n, C, H/f, W/f)``."""
    return torch.cat([model.vae_encode(images[i: i + batch_size] * 2 - 1) for i in range(0, len(images), batch_size)])


def train_tokenizer(model: FlexTok, tc: FlexTokTrainConfig, photos: dict[str, torch.Tensor], output_dir: str,
                    resume: bool = False, accelerator: Accelerator | None = None,
                    init_weights: bool = True) -> FlexTok:
    """Train `model`'s encoder and decoder on its frozen VAE's latents of photo crops with
    `zoo.training.train_loop`; returns it in eval mode. Checkpoints: ``output_dir/checkpoints`` (model: the
    `RectifiedFlowObjective`, the tokenizer under ``model.*``).

    With `init_weights` the encoder and decoder are (re)initialised under the run's seed (`FlexTok.init_weights`,
    every one of their parameters), so that a run is reproducible whatever the global RNG was when `model` was
    built; False keeps the given weights (fine-tuning). The VAE is kept either way."""
    model.vae.requires_grad_(False).eval()
    size = model.config.image_size
    bank = encode_bank(model, random_crops(photo_pyramid(photos, size), size, tc.crops, tc.seed + 1))

    def build(accelerator: Accelerator) -> Parts:
        if init_weights:
            model.init_weights()
        objective = RectifiedFlowObjective(model, tc.cond_dropout, tc.keep_k_mode, tc.logit_mean, tc.keep_all_prob)
        trainable = [p for p in objective.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=tc.lr, betas=(0.9, 0.99), weight_decay=tc.weight_decay)
        return Parts(models={"objective": objective}, optimizers={"tokenizer": opt})

    def step(s: TrainStep) -> dict:
        objective = s.models["objective"]
        s.accelerator.unwrap_model(objective).pure_noise = s.index < tc.autoencoder_steps
        loss = objective(s.batch)
        s.update("tokenizer", loss, max_grad_norm=1.0)
        return {"flow loss": loss}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=tc.save_every,
                      log_every=tc.log_every, desc="flextok")
    trained = train_loop(loop, output_dir, build, indexed_batches(_Repeat(bank, tc.seed), tc.batch_size), step,
                         resume=resume, accelerator=accelerator)
    return trained.models["objective"].model.eval()


# ------------------------------------------------------------------------------------------------------------------
# training checkpoints -> models (``zoo eval --checkpoint``)


def _run_scaling(run: Path) -> float:
    meta = run / "vae" / "vae.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} is missing: the run folder (--run) must hold the VAE stage's vae/vae.json "
                                "(written when the VAE stage ends, or by --vae-from)")
    return json.loads(meta.read_text())["vae_scaling_factor"]


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None):
    """A checkpoint folder of `train_tokenizer` (a `FlexTok`) or `train_vae` (a `FlexTokVAE`, when `spec` is a VAE
    entry) of scripts/train_flextok.py, with the config of registry entry `spec` and the latent scaling factor of
    the run folder's ``vae/vae.json``. `run` defaults to the folder above ``tokenizer/`` (or ``vae/``):
    ``RUN/tokenizer/checkpoints/checkpoint_<i>``."""
    checkpoint = Path(checkpoint)
    run = Path(run) if run is not None else checkpoint.resolve().parents[2]
    source = str(checkpoint / "model.safetensors")
    if spec.architecture == "flextok-vae":
        fields = {f.name for f in dataclasses.fields(FlexTokVAEConfig)} - {"architecture", "vae_scaling_factor"}
        model = FlexTokVAE(FlexTokVAEConfig(**{k: v for k, v in spec.config.items() if k in fields},
                                            vae_scaling_factor=_run_scaling(run)))
        load_into(model.vae, checkpoint_model_state(checkpoint, prefix="vae."), source=source)
    else:
        model = FlexTok(FlexTokConfig(**{**spec.config, "vae_scaling_factor": _run_scaling(run)}))
        load_into(model, checkpoint_model_state(checkpoint, prefix="model."), source=source)
    model.card_info["spec"] = spec
    return model.eval()
