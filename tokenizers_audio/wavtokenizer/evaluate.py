"""Held-out evaluation of a WavTokenizer, with two references at the same bitrate.

* **untrained**: the same architecture with random weights; its codebook is k-means-fitted to the encoder's outputs
  on training speech (so it uses its codes, it is just not trained);
* **mel-VQ + Griffin-Lim**: a plain codec at exactly the same bitrate: 16-band log-mel frames at the model's frame
  rate, vector-quantised with a codebook of the same size (k-means on training speech, vector-quantize-pytorch),
  inverted with torchaudio's InverseMelScale + Griffin-Lim.
"""

from __future__ import annotations

import torch
import torchaudio
from vector_quantize_pytorch import VectorQuantize

from zoo import data, metrics

from .model import WavTokenizer

SPLIT_DESCRIPTION = {
    "test": "The test split of zoo.data.speech (espeak-ng): 24 clips, 2 voices and 12 sentences never seen in "
            "training or validation",
    "validation": "The validation split of zoo.data.speech (espeak-ng): 12 clips, 1 voice and 12 sentences never "
                  "seen in training or test",
}
METRICS_DESCRIPTION = (
    ", 24 kHz. mel = log-mel L1 distance, stft = multi-resolution STFT distance (both lower is better), "
    "si_sdr in dB, stoi = classic STOI (pystoi), pesq = wide-band PESQ at 16 kHz."
)


@torch.inference_mode()
def evaluate(model: WavTokenizer, clips: list[torch.Tensor], batch_size: int = 8) -> dict[str, float]:
    """Mean metrics of `model` reconstructing 24 kHz `clips` (batched, different lengths)."""
    recon = []
    for start in range(0, len(clips), batch_size):
        recon += model.decode_list(model.encode(clips[start: start + batch_size], sample_rate=model.sample_rate))
    return mean_metrics(recon, clips, model.sample_rate)


def mean_metrics(recon: list[torch.Tensor], clips: list[torch.Tensor], sample_rate: int) -> dict[str, float]:
    rows = [metrics.audio_metrics(r[None], c[None], sample_rate) for r, c in zip(recon, clips)]
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


@torch.inference_mode()
def untrained_reference(model: WavTokenizer, train_clips: list[torch.Tensor], seed: int = 0) -> WavTokenizer:
    """Same config, random weights, codebook k-means-fitted on the encoder's outputs for training speech."""
    torch.manual_seed(seed)
    ref = WavTokenizer(model.config)
    wav = torch.cat(train_clips[:32])[None]
    latent, _ = ref.encode_latent(wav)
    ref.quantizer.train()
    ref.quantizer(latent.transpose(1, 2))  # first training-mode call: k-means init (official recipe)
    return ref.eval()


class MelVQGriffinLim:
    """Log-mel frames -> `codebook_size`-entry VQ -> Griffin-Lim: a plain codec at a WavTokenizer's bitrate."""

    def __init__(self, sample_rate: int, hop_length: int, codebook_size: int, n_mels: int = 16):
        self.sample_rate, self.hop = sample_rate, hop_length
        n_fft = 4 * hop_length
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop_length,
                                                        n_mels=n_mels, power=1.0)
        self.inverse = torchaudio.transforms.InverseMelScale(n_fft // 2 + 1, n_mels, sample_rate)
        self.griffin_lim = torchaudio.transforms.GriffinLim(n_fft, n_iter=32, hop_length=hop_length, power=1.0)
        self.vq = VectorQuantize(dim=n_mels, codebook_size=codebook_size, kmeans_init=True, kmeans_iters=20,
                                 rotation_trick=False)

    def _frames(self, wav: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wav).clamp_min(1e-5)).T  # (frames, n_mels)

    def fit(self, clips: list[torch.Tensor]) -> "MelVQGriffinLim":
        self.vq.train()
        self.vq(torch.cat([self._frames(c) for c in clips])[None])  # k-means init on all training frames
        self.vq.eval()
        return self

    @torch.inference_mode()
    def reconstruct(self, wav: torch.Tensor) -> torch.Tensor:
        quantized, _, _ = self.vq(self._frames(wav)[None])
        spec = self.inverse(torch.exp(quantized[0].T))
        return self.griffin_lim(spec)[: wav.shape[-1]]


def reference_table(model: WavTokenizer, heldout: list[torch.Tensor] | None = None,
                    train_clips: list[torch.Tensor] | None = None, split: str = "test") -> dict:
    """The model and both references on the speech of `split`, as the ``metrics`` block of a model card."""
    heldout = heldout if heldout is not None else data.speech(split)
    train_clips = train_clips if train_clips is not None else data.speech("train")
    results = {"this model": evaluate(model, heldout)}
    results["same model, untrained"] = evaluate(untrained_reference(model, train_clips), heldout)
    plain = MelVQGriffinLim(model.sample_rate, model.hop_length, model.codebook_size).fit(train_clips[::4])
    results["mel-VQ + Griffin-Lim"] = mean_metrics([plain.reconstruct(c) for c in heldout], heldout, model.sample_rate)
    keys = list(results["this model"])
    rows = [[name, f"{model.bitrate:.0f}", *[round(r[k], 4) for k in keys]] for name, r in results.items()]
    return {"description": SPLIT_DESCRIPTION[split] + METRICS_DESCRIPTION, "columns": ["model", "bit/s", *keys], "rows": rows,
            "values": results}
