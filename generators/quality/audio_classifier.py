"""A small log-mel CNN classifier of spoken digits: the judge of the audio generation protocol (its penultimate layer
gives the Fréchet-distance and nearest-neighbour features). Trained here on the train voices of
`zoo.data.spoken_digits` (`scripts/train_digit_classifier.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torchaudio
from torch import nn

from zoo import io as zio
from zoo.api import ZooModel
from zoo.data import SPEECH_SAMPLE_RATE, SPOKEN_DIGIT_SECONDS, SPOKEN_DIGITS
from zoo.registry import register_architecture

from .classifier import _stage


@dataclass
class DigitClassifierConfig:
    """Attributes:
        channels: widths of the three conv stages over the log-mel image (two 3x3 convs each; 2x2 max-pool after the
            first two; global average pool after the third).
        features: width of the penultimate layer (the Fréchet-distance and nearest-neighbour features).
        n_mels, n_fft, hop_length: the log-mel front end at `sample_rate` (40 x 76 frames for a 1.0 s clip).
        floor: log-mel values more than this far (natural log of power) below the clip's loudest bin are clamped:
            the input is relative to the clip's peak, so its level does not matter.
        dropout: before the last layer, in training.
        f_max: the mel filterbank's upper edge in Hz (None: sample_rate / 2).
        band_norm: subtract each mel band's mean over the clip's frames (after the floor): a fixed per-band gain,
            an equaliser's or a codec's, then does not matter.
    """

    architecture: str = "digit-cnn"
    channels: Sequence[int] = (16, 32, 64)
    features: int = 64
    num_classes: int = 10
    sample_rate: int = SPEECH_SAMPLE_RATE
    seconds: float = SPOKEN_DIGIT_SECONDS
    n_mels: int = 40
    n_fft: int = 1024
    hop_length: int = 320
    floor: float = 10.0
    dropout: float = 0.3
    f_max: float | None = 8000.0
    band_norm: bool = True

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3:
            raise ValueError(f"channels: three conv stages, got {self.channels}")


@register_architecture("digit-cnn")
class DigitClassifier(ZooModel):
    """``forward(clips) -> logits (B, 10)``; ``features(clips) -> (B, features)``.

    Clips: float ``(B, T)`` mono or ``(B, C, T)`` (channels averaged) at ``sample_rate=24000`` (another rate is
    resampled). Any length: every clip is cut or zero-padded **at its end** to exactly ``config.seconds`` (1.0 s),
    the form of `zoo.data.spoken_digits` (the word starting 0.05 s in); classify longer recordings by cutting them
    yourself. Level does not matter (the log-mel image is taken relative to the clip's peak).
    """

    config_class = DigitClassifierConfig
    kind = "classifier"
    modality = "audio"
    label_names = SPOKEN_DIGITS

    def __init__(self, config: DigitClassifierConfig):
        super().__init__(config)
        c1, c2, c3 = config.channels
        with torch.device("cpu"):  # torchaudio computes the filterbank with .item(): not on the meta device
            self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=config.sample_rate, n_fft=config.n_fft,
                                                            hop_length=config.hop_length, n_mels=config.n_mels,
                                                            f_max=config.f_max)
        self.body = nn.Sequential(_stage(1, c1), nn.MaxPool2d(2), _stage(c1, c2), nn.MaxPool2d(2), _stage(c2, c3),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())                      # (B, c3)
        self.neck = nn.Sequential(nn.Linear(c3, config.features), nn.ReLU())                 # (B, features)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.features, config.num_classes))

    @property
    def num_samples(self) -> int:
        return round(self.config.seconds * self.config.sample_rate)

    def fit_length(self, clips, sample_rate: int | None = None) -> torch.Tensor:
        """Clips as the classifier reads them: float ``(B, num_samples)``, mono, at ``config.sample_rate``, cut or
        zero-padded at the end."""
        if isinstance(clips, (list, tuple)):  # clips of different lengths: (T,) or (C, T) each
            if not clips:
                return torch.zeros(0, self.num_samples)
            return torch.cat([self.fit_length(c.reshape(1, -1, c.shape[-1]), sample_rate) for c in clips])
        if not isinstance(clips, torch.Tensor) or not clips.is_floating_point() or clips.ndim not in (2, 3):
            raise ValueError(f"clips: expected a float (B, T) or (B, C, T) tensor, got "
                             f"{getattr(clips, 'shape', type(clips).__name__)}")
        if clips.ndim == 3:
            clips = clips.mean(1)
        rate = sample_rate or self.config.sample_rate
        if rate != self.config.sample_rate:
            clips = zio.resample(clips, rate, self.config.sample_rate)
        n = self.num_samples
        if clips.shape[-1] >= n:
            return clips[:, :n].float()
        return nn.functional.pad(clips.float(), (0, n - clips.shape[-1]))

    def log_mel(self, clips: torch.Tensor) -> torch.Tensor:
        """``(B, num_samples)`` -> the network's input ``(B, 1, n_mels, frames)``, in about [-1, 1]."""
        power = self.mel(clips.to(self.device, torch.float32))
        logmel = power.clamp_min(1e-10).log()
        logmel = logmel - logmel.amax((-2, -1), keepdim=True)
        logmel = logmel.clamp_min(-self.config.floor) / (self.config.floor / 2) + 1
        if self.config.band_norm:
            logmel = logmel - logmel.mean(-1, keepdim=True)
        return logmel[:, None]

    def features(self, clips, sample_rate: int | None = None) -> torch.Tensor:
        """Penultimate features ``(B, features)``."""
        return self.neck(self.body(self.log_mel(self.fit_length(clips, sample_rate))))

    def forward(self, clips, sample_rate: int | None = None) -> torch.Tensor:
        return self.head(self.features(clips, sample_rate))

    @torch.inference_mode()
    def predict(self, clips: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
        """Class ids ``(B,)`` of `clips`, in batches."""
        return torch.cat([self(clips[i: i + batch_size]).argmax(-1).cpu() for i in range(0, len(clips), batch_size)])

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Accuracy on a `zoo.data.spoken_digits` split, overall and per digit (`zoo eval`)."""
        from zoo.data import SPOKEN_DIGIT_VOICES, spoken_digits

        clips, labels = spoken_digits(split)
        correct = self.eval().predict(clips) == labels
        rows = [["all", len(labels), round(100 * correct.float().mean().item(), 2)]]
        rows += [[name, int((labels == c).sum()), round(100 * correct[labels == c].float().mean().item(), 2)]
                 for c, name in enumerate(self.label_names)]
        voices = ", ".join(SPOKEN_DIGIT_VOICES[split])
        return {"description": f"zoo.data.spoken_digits {split} split (espeak-ng voices {voices}; none of them "
                               f"trained on unless the split is train), top-1 accuracy in %.",
                "columns": ["digit", "clips", "accuracy %"], "rows": rows}

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch_size, self.num_samples, generator=g) - 0.5) * 0.5, {}

    def card_facts(self) -> dict[str, Any]:
        return {**super().card_facts(),
                "input": f"(B, T) or (B, C, T) at {self.config.sample_rate} Hz, cut / zero-padded at the end to "
                         f"{self.config.seconds:g} s",
                "classes": ", ".join(self.label_names), "features": self.config.features}

    def card_usage(self) -> str:
        return "logits = model(clips)        # (B, T) at 24 kHz: spoken digits as zoo.data.spoken_digits makes them"
