"""Reconstruction metrics for images and audio.

Images: PSNR, SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, on [0, 1] data).
Audio: log-mel L1 distance (Vocos/WavTokenizer setting: 24 kHz, n_fft 1024, hop 256, 100 mels), multi-resolution
STFT distance (spectral convergence + log-magnitude L1 at three resolutions), SI-SDR, and STOI / wide-band PESQ
through the `pystoi` / `pesq` packages when they are installed (PESQ at 16 kHz, as in the WavTokenizer paper).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from .io import resample

# --- images ------------------------------------------------------------------------------------------------------


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB for ``(B, C, H, W)`` tensors."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image mean SSIM for ``(B, C, H, W)`` tensors (valid-region Gaussian filtering)."""
    x, y = x.float(), y.float()
    channels = x.shape[1]
    g = _gaussian_window().to(x.device)
    kernel_h = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    kernel_v = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_v, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


# --- audio -------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop: int, n_mels: int) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop,
                                                n_mels=n_mels, power=1.0, center=True)


def _match(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(x.shape[-1], y.shape[-1])
    return x[..., :n].float(), y[..., :n].float()


def log_mel(wav: torch.Tensor, sample_rate: int = 24000, n_fft: int = 1024, hop: int = 256,
            n_mels: int = 100) -> torch.Tensor:
    mel = _mel_transform(sample_rate, n_fft, hop, n_mels).to(wav.device)(wav.float())
    return torch.log(mel.clamp_min(1e-7))


def mel_distance(x: torch.Tensor, y: torch.Tensor, sample_rate: int = 24000) -> torch.Tensor:
    """Mean L1 distance of log-mel spectrograms, per item (lower is better)."""
    x, y = _match(x, y)
    return (log_mel(x, sample_rate) - log_mel(y, sample_rate)).abs().flatten(1).mean(1)


def multi_resolution_stft_distance(x: torch.Tensor, y: torch.Tensor,
                                   resolutions=((512, 128), (1024, 256), (2048, 512))) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over resolutions, per item (lower is better)."""
    x, y = _match(x, y)
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    total = torch.zeros(x.shape[0], device=x.device)
    for n_fft, hop in resolutions:
        window = torch.hann_window(n_fft, device=x.device)
        sx = torch.stft(x, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-7)
        sy = torch.stft(y, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-7)
        sc = torch.linalg.norm((sy - sx).flatten(1), dim=1) / torch.linalg.norm(sy.flatten(1), dim=1).clamp_min(1e-7)
        mag = (sx.log() - sy.log()).abs().flatten(1).mean(1)
        total += sc + mag
    return total / len(resolutions)


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB, per item (higher is better)."""
    estimate, reference = _match(estimate, reference)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10(target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps) + eps)


def stoi(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Short-time objective intelligibility (pystoi, classic STOI), per item; needs ``pip install pystoi``."""
    from pystoi import stoi as _stoi

    estimate, reference = _match(estimate, reference)
    est = estimate.reshape(-1, estimate.shape[-1]).cpu().double().numpy()
    ref = reference.reshape(-1, reference.shape[-1]).cpu().double().numpy()
    return torch.tensor([_stoi(r, e, sample_rate, extended=False) for r, e in zip(ref, est)])


def pesq_wb(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Wide-band PESQ at 16 kHz, per item; needs ``pip install pesq``. Failed items score 1.0 (paper protocol)."""
    from pesq import pesq as _pesq

    estimate, reference = _match(estimate, reference)
    est = resample(estimate.reshape(-1, estimate.shape[-1]).cpu(), sample_rate, 16000).double().numpy()
    ref = resample(reference.reshape(-1, reference.shape[-1]).cpu(), sample_rate, 16000).double().numpy()
    scores = []
    for r, e in zip(ref, est):
        try:
            scores.append(_pesq(16000, r, e, "wb"))
        except Exception:  # pesq raises on silent or too-short input; the paper protocol scores those 1.0
            scores.append(1.0)
    return torch.tensor(scores)


def audio_metrics(estimate: torch.Tensor, reference: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Every audio metric available here, averaged over items: ``(B, T)`` tensors at `sample_rate`."""
    out = {
        "mel_distance": float(mel_distance(estimate, reference, sample_rate).mean()),
        "stft_distance": float(multi_resolution_stft_distance(estimate, reference).mean()),
        "si_sdr": float(si_sdr(estimate, reference).mean()),
    }
    try:
        out["stoi"] = float(stoi(estimate, reference, sample_rate).mean())
    except ImportError:
        pass
    try:
        out["pesq"] = float(pesq_wb(estimate, reference, sample_rate).mean())
    except ImportError:
        pass
    return out


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``(N, D)`` and ``(M, D)`` (numpy, float64):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (symmetric eigen-decompositions, no complex
    square roots)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())
