"""The recipe of the spoken-digit classifier (`spoken-digit-classifier`) on `zoo.training.train_loop`.

Data: `zoo.data.spoken_digits("train")` (2,000 one-second clips of 25 voice names; the validation and test voices are
never trained on). Nothing of any tokenizer is trained on: the judge must read decoded audio through generic,
documented degradations only. Augmentation per clip, in this order (each "maybe" with probability 1/2):
maybe a speed perturbation of 0.9..1.1 (resampling: tempo, pitch and formants together, as a different vocal tract);
a random time shift of -0.04..+0.12 s (zero fill, so the word may start anywhere from 0.01 to 0.17 s in); maybe a
synthetic small-room reverb (RT60 0.05..0.3 s); maybe STFT phase noise (up to +-0.5 pi per bin: the smeared, phasey
sound of a vocoder); maybe a harmonic buzz (a sawtooth at f0 70..300 Hz following the clip's envelope, 30..12 dB
below its peak); maybe a low-pass at 3..10 kHz; maybe a spectral tilt (a gain linear in frequency, 0 dB at 0 Hz to
-24..+6 dB at 12 kHz); maybe white noise 55..20 dB below the clip's peak; a random gain of -12..+3 dB (clipped to
[-1, 1]). Then SpecAugment on the log-mel image (two masks of up to 6 mel bands, two of up to 8 frames, filled with
the image's mean). The network's front end (`DigitClassifierConfig`) stops at 8 kHz and removes each band's mean.
Batches are drawn at random per step (seeded by the loop). AdamW with warmup + cosine, label smoothing 0.1.
`scripts/train_digit_classifier.py` is the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from zoo.checkpoints import load_into
from zoo.data import SPEECH_SAMPLE_RATE, spoken_digits
from zoo.training import LoopConfig, Parts, TrainStep, checkpoint_model_state, train_loop

from .audio_classifier import DigitClassifier, DigitClassifierConfig


@dataclass
class DigitClassifierTrainConfig:
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.1
    max_shift_back: float = 0.04     # seconds the word may move earlier
    max_shift_forward: float = 0.12  # seconds the word may move later
    tilt_prob: float = 0.5
    min_tilt_db: float = -24.0       # the tilt's gain at 12 kHz
    max_tilt_db: float = 6.0
    noise_prob: float = 0.5
    min_noise_db: float = -55.0      # white noise, relative to the clip's peak
    max_noise_db: float = -20.0
    min_gain_db: float = -12.0
    max_gain_db: float = 3.0
    reverb_prob: float = 0.5
    min_rt60: float = 0.05           # seconds: an exponentially decaying noise impulse response (a small room)
    max_rt60: float = 0.3
    phase_prob: float = 0.5
    max_phase: float = 0.5           # STFT phase noise, uniform in +-max_phase * pi (a vocoder-like degradation)
    buzz_prob: float = 0.5
    min_buzz_db: float = -30.0       # a sawtooth at a random f0, following the clip's envelope, relative to its peak
    max_buzz_db: float = -12.0
    lowpass_prob: float = 0.5
    min_lowpass_hz: float = 3000.0
    max_lowpass_hz: float = 10000.0
    speed_prob: float = 0.5
    min_speed: float = 0.9           # resampled by 1 / speed: tempo, pitch and formants move together
    max_speed: float = 1.1
    freq_masks: int = 2              # SpecAugment on the log-mel image: masks of up to max_freq_mask bands ...
    max_freq_mask: int = 6
    time_masks: int = 2              # ... and of up to max_time_mask frames, filled with the image's mean
    max_time_mask: int = 8
    seed: int = 0


def augment(clips: torch.Tensor, tc: DigitClassifierTrainConfig, sample_rate: int = SPEECH_SAMPLE_RATE) -> torch.Tensor:
    """Per clip ``(B, T)``: a time shift (zero fill, same length), maybe a spectral tilt, maybe white noise, and a
    gain, clipped to [-1, 1] (torch's RNG, which the loop seeds per step; see the module docstring)."""
    n, length = clips.shape
    if tc.speed_prob > 0:
        clips = _speed(clips, tc)
    back, forward = round(tc.max_shift_back * sample_rate), round(tc.max_shift_forward * sample_rate)
    shifts = torch.randint(-back, forward + 1, (n,)).tolist()
    padded = F.pad(clips, (forward, back))  # a clip shifted by s starts at padded offset forward - s
    out = torch.stack([padded[i, forward - s: forward - s + length] for i, s in enumerate(shifts)])
    if tc.reverb_prob > 0:
        out = _reverb(out, tc, sample_rate)
    if tc.phase_prob > 0:
        out = _phase_noise(out, tc)
    if tc.buzz_prob > 0:
        out = _buzz(out, tc, sample_rate)
    spectrum = torch.fft.rfft(out)
    if tc.lowpass_prob > 0:
        hz = torch.linspace(0, sample_rate / 2, spectrum.shape[-1])
        cutoff = tc.min_lowpass_hz + (tc.max_lowpass_hz - tc.min_lowpass_hz) * torch.rand(n, 1)
        cutoff = torch.where(torch.rand(n, 1) < tc.lowpass_prob, cutoff, torch.full_like(cutoff, 1e9))
        spectrum = spectrum * torch.sigmoid((cutoff - hz) / 200.0)
    frequency = torch.linspace(0, 1, spectrum.shape[-1])                      # 0 .. sample_rate / 2
    tilt_db = tc.min_tilt_db + (tc.max_tilt_db - tc.min_tilt_db) * torch.rand(n, 1)
    tilt_db = tilt_db * (torch.rand(n, 1) < tc.tilt_prob)
    out = torch.fft.irfft(spectrum * 10 ** (tilt_db * frequency / 20), n=length)
    noise_db = tc.min_noise_db + (tc.max_noise_db - tc.min_noise_db) * torch.rand(n, 1)
    noise = torch.randn(n, length) * out.abs().amax(1, keepdim=True) * 10 ** (noise_db / 20)
    out = out + noise * (torch.rand(n, 1) < tc.noise_prob)
    gain_db = tc.min_gain_db + (tc.max_gain_db - tc.min_gain_db) * torch.rand(n, 1)
    return (out * 10 ** (gain_db / 20)).clamp(-1, 1)


def _speed(x: torch.Tensor, tc: DigitClassifierTrainConfig) -> torch.Tensor:
    """Maybe play each clip at a random speed in [min_speed, max_speed] (linear resampling, cut / zero-padded at the
    end): speed perturbation, which moves formants as a different vocal-tract length does."""
    n, length = x.shape
    speed = tc.min_speed + (tc.max_speed - tc.min_speed) * torch.rand(n)
    chosen = (torch.rand(n) < tc.speed_prob).tolist()
    out = x.clone()
    for i in range(n):
        if chosen[i]:
            y = F.interpolate(x[i][None, None], size=round(length / speed[i].item()), mode="linear",
                              align_corners=False)[0, 0]
            out[i] = F.pad(y, (0, max(0, length - len(y))))[:length]
    return out


def _reverb(x: torch.Tensor, tc: DigitClassifierTrainConfig, sample_rate: int) -> torch.Tensor:
    """Maybe convolve each clip with a synthetic room response: a unit direct path plus exponentially decaying
    white noise (RT60 in [min_rt60, max_rt60]), scaled to the clip's peak."""
    n, length = x.shape
    t = torch.arange(round(0.4 * sample_rate)) / sample_rate
    rt60 = tc.min_rt60 + (tc.max_rt60 - tc.min_rt60) * torch.rand(n, 1)
    ir = torch.randn(n, len(t)) * torch.exp(-6.9 * t / rt60) * 0.1
    ir[:, 0] = 1.0
    size = length + len(t)
    wet = torch.fft.irfft(torch.fft.rfft(x, n=size) * torch.fft.rfft(ir, n=size), n=size)[:, :length]
    wet = wet * x.abs().amax(1, keepdim=True) / wet.abs().amax(1, keepdim=True).clamp_min(1e-8)
    return torch.where(torch.rand(n, 1) < tc.reverb_prob, wet, x)


def _phase_noise(x: torch.Tensor, tc: DigitClassifierTrainConfig) -> torch.Tensor:
    """Maybe add uniform noise of up to +-max_phase * pi to the phase of every STFT bin (512-point, hop 128) and
    resynthesise: the smeared, phasey sound of a vocoder."""
    n, length = x.shape
    chosen = torch.rand(n) < tc.phase_prob
    amount = tc.max_phase * torch.rand(n, 1, 1)
    window = torch.hann_window(512)
    spec = torch.stft(x[chosen], 512, 128, window=window, return_complex=True)
    noise = (torch.rand(spec.shape) * 2 - 1) * torch.pi * amount[chosen]
    out = x.clone()
    out[chosen] = torch.istft(spec * torch.polar(torch.ones_like(noise), noise), 512, 128, window=window,
                              length=length)
    return out


def _buzz(x: torch.Tensor, tc: DigitClassifierTrainConfig, sample_rate: int) -> torch.Tensor:
    """Maybe add a sawtooth at a random f0 (70..300 Hz) that follows the clip's 10 ms amplitude envelope, at
    min_buzz_db..max_buzz_db relative to the clip's peak: the harmonic buzz of a low-rate vocoder."""
    n, length = x.shape
    f0 = 70 + 230 * torch.rand(n, 1)
    t = torch.arange(length) / sample_rate
    saw = 2 * torch.frac(f0 * t + torch.rand(n, 1)) - 1
    win = round(0.01 * sample_rate)
    frames = F.pad(x.abs(), (0, -length % win)).reshape(n, -1, win).mean(-1)           # 10 ms frames
    envelope = F.interpolate(frames[:, None], size=length, mode="linear", align_corners=False)[:, 0]
    envelope = envelope / envelope.amax(1, keepdim=True).clamp_min(1e-8)
    db = tc.min_buzz_db + (tc.max_buzz_db - tc.min_buzz_db) * torch.rand(n, 1)
    buzz = saw * envelope * x.abs().amax(1, keepdim=True) * 10 ** (db / 20)
    return x + buzz * (torch.rand(n, 1) < tc.buzz_prob)


def spec_augment(mel: torch.Tensor, tc: DigitClassifierTrainConfig) -> torch.Tensor:
    """SpecAugment on log-mel images ``(B, 1, bands, frames)``: `freq_masks` masks of 0..max_freq_mask bands and
    `time_masks` of 0..max_time_mask frames per image, filled with the image's mean."""
    if not (tc.freq_masks or tc.time_masks):
        return mel
    n, _, bands, frames = mel.shape
    keep = torch.ones(n, 1, bands, frames, dtype=torch.bool)
    for size, count, axis in ((bands, tc.freq_masks, 2), (frames, tc.time_masks, 3)):
        widest = tc.max_freq_mask if axis == 2 else tc.max_time_mask
        for _ in range(count):
            width = torch.randint(0, widest + 1, (n, 1))
            start = (torch.rand(n, 1) * (size - width + 1)).floor()
            pos = torch.arange(size)[None]
            hit = (pos >= start) & (pos < start + width)                              # (n, size)
            keep &= ~(hit[:, None, :, None] if axis == 2 else hit[:, None, None, :])
    fill = mel.mean((-2, -1), keepdim=True)
    return torch.where(keep.to(mel.device), mel, fill)


def train(tc: DigitClassifierTrainConfig, output_dir: str, resume: bool = False,
          accelerator: Accelerator | None = None, config: DigitClassifierConfig | None = None) -> DigitClassifier:
    """Train with `zoo.training.train_loop` (checkpoints in ``output_dir/checkpoints``); returns the model in eval
    mode."""
    clips, labels = spoken_digits("train")

    def build(accelerator: Accelerator) -> Parts:
        model = DigitClassifier(config or DigitClassifierConfig())
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        return Parts(models={"model": model}, optimizers={"model": opt})

    def batches(step: int, rank: int, world: int):
        idx = torch.randint(0, len(clips), (tc.batch_size,))  # the loop seeds torch per (seed, step, rank)
        return augment(clips[idx], tc), labels[idx]

    def step(s: TrainStep) -> dict:
        x, y = s.batch
        model = s.models["model"]
        net = getattr(model, "module", model)  # SpecAugment sits between the front end and the network
        mel = spec_augment(net.log_mel(net.fit_length(x)), tc)
        loss = F.cross_entropy(net.head(net.neck(net.body(mel))), y, label_smoothing=tc.label_smoothing)
        s.update("model", loss, max_grad_norm=1.0)
        return {"loss": loss}

    loop = LoopConfig(steps=tc.steps, warmup_steps=tc.warmup_steps, seed=tc.seed, save_every=500, log_every=100,
                      desc="digit-classifier")
    trained = train_loop(loop, output_dir, build, batches, step, resume=resume, accelerator=accelerator)
    return trained.models["model"].eval()


def model_from_checkpoint(checkpoint: str | Path, spec, run: str | Path | None = None) -> DigitClassifier:
    """The model of a `train` checkpoint folder, with the config of registry entry `spec`."""
    model = DigitClassifier(DigitClassifierConfig(**spec.config))
    load_into(model, checkpoint_model_state(checkpoint), source=str(Path(checkpoint) / "model.safetensors"))
    model.card_info["spec"] = spec
    return model.eval()
