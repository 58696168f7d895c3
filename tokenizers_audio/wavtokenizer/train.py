"""Training WavTokenizer with the official recipe, on Accelerate.

Losses (decoder/experiment.py, decoder/loss.py of the official code): log-mel L1 (weight 45), hinge GAN losses
and L1 feature matching for a multi-period (HiFi-GAN MPD, periods 2/3/5/7/11) and a multi-resolution (Vocos/UnivNet
MRD, three STFTs) discriminator, and the VQ commitment loss (x1000); the codebook is k-means initialised on the first
batch, EMA-updated, and dead codes (EMA count < 2) are restarted from the batch. AdamW (betas 0.8, 0.9) and a
cosine schedule with warmup for both optimisers; a random `bandwidth_id` per step trains all AdaLayerNorm rows.
The discriminator widths are configurable so a tiny model trains on a CPU; ``mel_only_steps`` trains the
generator on the mel loss alone first (Vocos' ``pretrain_mel_steps``). The loop, checkpoints and resuming are
`zoo.training.train_loop`'s; this module gives the models, the data and the GAN step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from zoo.checkpoints import load_into
from zoo.metrics import log_mel
from zoo.training import (LoopConfig, Parts, TrainStep, checkpoint_model_state, cosine_factor, indexed_batches,
                          train_loop)

from .model import WavTokenizer, WavTokenizerConfig

# ----------------------------------------------------------------------------------------------------------------
# discriminators


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN period discriminator: the waveform folded to ``(T / p, p)`` and 2D convs along time."""

    def __init__(self, period: int, channels: int = 32, num_embeddings: int = 4):
        super().__init__()
        self.period = period
        widths = [1, channels, channels * 4, channels * 8, channels * 8]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), (3, 1) if i < 3 else 1, padding=(2, 0)))
            for i in range(4)
        )
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))
        self.embed = nn.Embedding(num_embeddings, widths[-1])  # conditional on bandwidth_id, as officially

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor):
        # x: (B, T)
        pad = -x.shape[-1] % self.period
        x = F.pad(x, (0, pad), mode="reflect")[:, None]
        x = x.view(x.shape[0], 1, -1, self.period)  # (B, 1, T / p, p)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        score = self.post(x) + (x * self.embed(bandwidth_id)[:, :, None, None]).sum(1, keepdim=True)
        features.append(score)
        return score.flatten(1), features


class ResolutionDiscriminator(nn.Module):
    """UnivNet/Vocos resolution discriminator on a linear-magnitude STFT (rectangular window)."""

    def __init__(self, n_fft: int, hop: int, channels: int = 32, num_embeddings: int = 4):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (7, 5), padding=(3, 2))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, 3, (2, 1), padding=1)),
            weight_norm(nn.Conv2d(channels, channels, 3, (2, 2), padding=1)),
        ])
        self.post = weight_norm(nn.Conv2d(channels, 1, 3, padding=1))
        self.embed = nn.Embedding(num_embeddings, channels)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor):
        window = torch.ones(self.n_fft, device=x.device)
        spec = torch.stft(x, self.n_fft, self.hop, window=window, center=True, return_complex=True).abs()
        h = spec[:, None].transpose(2, 3)  # (B, 1, T, F)
        features = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
            features.append(h)
        score = self.post(h) + (h * self.embed(bandwidth_id)[:, :, None, None]).sum(1, keepdim=True)
        features.append(score)
        return score.flatten(1), features


class Discriminators(nn.Module):
    def __init__(self, channels: int = 32, periods=(2, 3, 5, 7, 11),
                 resolutions=((1024, 256), (2048, 512), (512, 128))):
        super().__init__()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)
        self.mrd = nn.ModuleList(ResolutionDiscriminator(n, h, channels) for n, h in resolutions)

    def forward(self, x: torch.Tensor, bandwidth_id: torch.Tensor):
        return [d(x, bandwidth_id) for d in self.mpd], [d(x, bandwidth_id) for d in self.mrd]


def hinge_d_loss(real, fake) -> torch.Tensor:
    return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)) / len(real)


def hinge_g_loss(fake) -> torch.Tensor:
    return sum(F.relu(1 - f).mean() for f, _ in fake) / len(fake)


def feature_matching(real, fake) -> torch.Tensor:
    """L1 between real and fake feature maps: summed over layers, averaged over discriminators (Vocos)."""
    total = 0.0
    for (_, fr), (_, ff) in zip(real, fake):
        total = total + sum(F.l1_loss(b, a.detach()) for a, b in zip(fr, ff))
    return total / len(real)


# ----------------------------------------------------------------------------------------------------------------
# data and the recipe


class RandomCrops(torch.utils.data.Dataset):
    """Random fixed-length crops of a list of clips, with a random peak gain in [-6, -1] dBFS (official recipe).

    Item `i` (any ``i >= 0``) is drawn from an RNG seeded by ``(seed, i)``: the same crop in every run."""

    def __init__(self, clips: list[torch.Tensor], crop: int, items_per_epoch: int | None = None, seed: int = 0):
        self.clips = [c if c.shape[-1] >= crop else F.pad(c, (0, crop - c.shape[-1])) for c in clips]
        self.crop, self.items, self.seed = crop, items_per_epoch, seed

    def __len__(self) -> int:
        if self.items is None:
            raise TypeError("RandomCrops without items_per_epoch has no length (any index is an item)")
        return self.items

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = random.Random(self.seed * 1_000_003 + i)
        clip = self.clips[rng.randrange(len(self.clips))]
        start = rng.randrange(clip.shape[-1] - self.crop + 1)
        x = clip[start: start + self.crop]
        gain_db = rng.uniform(-6, -1)
        return x / x.abs().max().clamp_min(1e-5) * 10 ** (gain_db / 20)


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 8
    crop_seconds: float = 1.0
    lr: float = 2e-4
    warmup_steps: int = 100
    mel_only_steps: int = 1000
    mel_weight: float = 45.0
    mrd_weight: float = 1.0
    disc_channels: int = 16
    seed: int = 3407
    save_every: int = 1000
    log_every: int = 50


def train(model_config: WavTokenizerConfig, train_config: TrainConfig, clips: list[torch.Tensor], output_dir: str,
          resume: bool = False, accelerator: Accelerator | None = None,
          init_state: dict[str, torch.Tensor] | None = None) -> WavTokenizer:
    """Train a WavTokenizer on 24 kHz `clips` with `zoo.training.train_loop`; checkpoints go to
    ``output_dir/checkpoints`` (models: generator, discriminators).

    Returns the trained model (unwrapped, eval mode). With `resume`, training continues from the newest checkpoint.
    `init_state` (a WavTokenizer state dict of `model_config`) starts the generator from trained weights
    (fine-tuning; the discriminators start fresh).
    """
    tc = train_config
    crop = int(tc.crop_seconds * model_config.sample_rate)
    gan_steps = max(1, tc.steps - tc.mel_only_steps)

    def build(accelerator: Accelerator) -> Parts:
        model, disc = WavTokenizer(model_config), Discriminators(tc.disc_channels)
        if init_state is not None:
            load_into(model, init_state, source="init_state")
        return Parts(
            models={"generator": model, "discriminator": disc},
            optimizers={"generator": torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(0.8, 0.9)),
                        "discriminator": torch.optim.AdamW(disc.parameters(), lr=tc.lr, betas=(0.8, 0.9))},
            # the discriminator's warmup + cosine starts with the GAN phase
            lr_factors={"discriminator": lambda s: cosine_factor(max(0, s - tc.mel_only_steps), tc.warmup_steps,
                                                                 gan_steps)},
        )

    def step(s: TrainStep) -> dict:
        model, disc = s.models["generator"], s.models["discriminator"]
        wav = s.batch
        bw = torch.randint(0, model_config.num_bandwidths, (1,), device=wav.device)
        use_gan = s.index >= tc.mel_only_steps
        audio, _, commit = model(wav, bandwidth_id=int(bw))
        audio = audio[..., : wav.shape[-1]]
        if use_gan:  # discriminator step
            real_p, real_r = disc(wav, bw)
            fake_p, fake_r = disc(audio.detach(), bw)
            loss_d = hinge_d_loss(real_p, fake_p) + tc.mrd_weight * hinge_d_loss(real_r, fake_r)
            s.update("discriminator", loss_d, max_grad_norm=1000.0)
        mel = F.l1_loss(log_mel(audio, model_config.sample_rate), log_mel(wav, model_config.sample_rate))
        loss_g = tc.mel_weight * mel + commit
        if use_gan:
            real_p, real_r = disc(wav, bw)
            fake_p, fake_r = disc(audio, bw)
            loss_g = loss_g + hinge_g_loss(fake_p) + tc.mrd_weight * hinge_g_loss(fake_r)
            loss_g = loss_g + feature_matching(real_p, fake_p) + tc.mrd_weight * feature_matching(real_r, fake_r)
        s.update("generator", loss_g, max_grad_norm=1000.0)
        return {"mel": mel, "commit": commit, "gen": loss_g}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=tc.save_every,
                      log_every=tc.log_every, keep_checkpoints=3, desc="wavtokenizer")
    batches = indexed_batches(RandomCrops(clips, crop, seed=tc.seed), tc.batch_size)
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    return trained.models["generator"].eval()


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> WavTokenizer:
    """The generator of a `train` checkpoint folder, with the config of registry entry `spec` (`zoo eval`)."""
    model = WavTokenizer(WavTokenizerConfig(**spec.config))
    path = Path(checkpoint) / "model.safetensors"
    load_into(model, checkpoint_model_state(checkpoint), source=str(path))
    model.card_info["spec"] = spec
    return model.eval()
