"""Base interfaces shared by every family: `Tokens`, `Tokenizer`, `Generator`, and input validation.

Contracts at the boundary (each family converts to its own internal range):
* audio: float waveforms in [-1, 1], ``(T)``, ``(B, T)`` or ``(B, C, T)`` with an explicit ``sample_rate``;
* images: float in [0, 1], ``(B, 3, H, W)``;
* codes: int64; audio ``(B, Q, T)``, 1D image tokens ``(B, N)``, grid image tokens ``(B, H, W)``.
Bad input raises `ValueError` naming what was expected, before anything reaches a kernel.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from . import checkpoints


@dataclass
class Tokens:
    """Discrete tokens plus what decoding needs.

    Attributes:
        codes: int64 codes; audio ``(B, Q, T)``, images ``(B, N)`` or ``(B, H, W)``.
        lengths: ``(B,)`` int64 number of valid token frames per item (audio batches of different lengths), or None
            when every item uses the full length.
        meta: plain JSON-able facts for decoding: ``sample_rate`` of the input, ``num_samples`` (per-item input
            lengths), ``model`` (the tokenizer that made them), ...
    """

    codes: torch.Tensor
    lengths: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __getitem__(self, i: int) -> "Tokens":
        """Item `i` alone, trimmed to its valid length."""
        i = range(len(self))[i]  # negative indices; IndexError when out of range
        codes = self.codes[i : i + 1]
        lengths = None
        if self.lengths is not None:
            n = int(self.lengths[i])
            codes = codes[..., :n]
            lengths = self.lengths[i : i + 1]
        meta = dict(self.meta)
        if isinstance(meta.get("num_samples"), list):
            meta["num_samples"] = meta["num_samples"][i : i + 1]
        return Tokens(codes, lengths, meta)

    def to(self, device: torch.device | str) -> "Tokens":
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Tokens(self.codes.to(device), lengths, dict(self.meta))

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file (codes, lengths, and `meta` as JSON metadata), atomically."""
        tensors = {"codes": self.codes}
        if self.lengths is not None:
            tensors["lengths"] = self.lengths
        checkpoints.save_state_dict(tensors, path, metadata={"tokzoo.meta": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | Path) -> "Tokens":
        from safetensors import safe_open

        path = Path(path)
        tensors = checkpoints.read_state_dict(path)
        if "codes" not in tensors:
            raise ValueError(f"{path}: not a tokens file (no 'codes' tensor); write one with `zoo encode`")
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("tokzoo.meta", "{}"))
        return cls(tensors["codes"].long(), tensors.get("lengths"), meta)


# ----------------------------------------------------------------------------------------------------------------
# validation


def check_finite(x: torch.Tensor, what: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{what}: got an empty tensor of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")


def as_audio_batch(wav: torch.Tensor, what: str = "audio") -> torch.Tensor:
    """Validate a waveform and return it as float ``(B, C, T)``."""
    if not isinstance(wav, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor waveform, got {type(wav).__name__}")
    if not wav.is_floating_point():
        raise ValueError(f"{what}: expected a float waveform in [-1, 1], got dtype {wav.dtype}")
    if wav.ndim == 1:
        wav = wav[None, None]
    elif wav.ndim == 2:
        wav = wav[:, None]
    elif wav.ndim != 3:
        raise ValueError(f"{what}: expected shape (T), (B, T) or (B, C, T), got {tuple(wav.shape)}")
    if wav.shape[-1] == 0:
        raise ValueError(f"{what}: empty input (zero samples)")
    check_finite(wav, what)
    peak = float(wav.abs().max())
    if peak > 1 + 1e-3:
        raise ValueError(f"{what}: expected samples in [-1, 1], got a peak of {peak:.3g} (normalise the waveform)")
    return wav


def as_image_batch(img: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Validate an image tensor and return it as float ``(B, 3, H, W)`` in [0, 1]."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(img).__name__}")
    if not img.is_floating_point():
        raise ValueError(f"{what}: expected float values in [0, 1], got dtype {img.dtype} (divide uint8 by 255)")
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"{what}: expected shape (3, H, W) or (B, 3, H, W), got {tuple(img.shape)}")
    check_finite(img, what)
    lo, hi = float(img.min()), float(img.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{what}: expected values in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return img


def check_codes(codes: torch.Tensor, codebook_size: int, ndim: int, what: str = "codes") -> torch.Tensor:
    """Validate integer codes: `ndim` dimensions, values in ``[0, codebook_size)``; returns them as int64."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor of integer codes, got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"{what}: expected integer codes, got dtype {codes.dtype}")
    if codes.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        raise ValueError(f"{what}: got an empty tensor of shape {tuple(codes.shape)}")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"{what}: values must be in [0, {codebook_size}), got range [{lo}, {hi}]")
    return codes.long()


# ----------------------------------------------------------------------------------------------------------------
# base classes


class ZooModel(nn.Module, PyTorchModelHubMixin, library_name="tokzoo", tags=["tokzoo"]):
    """Common base: a config dataclass, Hub-layout save/load, and the model card.

    Subclasses set `config_class` (a dataclass whose field ``architecture`` names the registered architecture)
    and take ``config`` as their only constructor argument.
    """

    config_class: ClassVar[type]
    card_info: dict[str, Any]

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.card_info = {}  # filled by the loader: spec facts, measured quality (shown in the model card)

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def cast(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ZooModel":
        """Move to `device` / `dtype`; families override this to keep precision-critical parts in float32."""
        return self.to(device=device, dtype=dtype)

    def zoo_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def card_facts(self) -> dict[str, Any]:
        """Rows of the model card's facts table."""
        return {"architecture": self.architecture, "parameters": f"{self.num_parameters() / 1e6:.2f} M"}

    def card_usage(self) -> str:
        return "out = tok(...)"

    # --- PyTorchModelHubMixin hooks -------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *, config=None, repo_id=None, push_to_hub=False,
                        model_card_kwargs=None, **push_to_hub_kwargs):
        """Write ``model.safetensors``, ``config.json`` and ``README.md`` (a freshly generated model card) into
        `save_directory`, each atomically; optionally push the folder to the Hub (huggingface_hub's mixin)."""
        folder = Path(save_directory)
        self._save_pretrained(folder)
        config = config or self.zoo_config()
        with checkpoints.atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        with checkpoints.atomic_path(folder / "README.md") as tmp:
            self.generate_model_card(**(model_card_kwargs or {})).save(tmp)
        if push_to_hub:
            return self.push_to_hub(repo_id or folder.name, config=config, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        checkpoints.save_state_dict(self.state_dict(), Path(save_directory) / "model.safetensors",
                                    metadata={"format": "pt", "architecture": self.architecture})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, config=None, **kwargs):
        from . import hub

        is_folder = Path(model_id).is_dir()
        return hub.load_zoo_folder(model_id, hub=not is_folder, revision=revision, expected_class=cls,
                                   cache_dir=cache_dir)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        from . import cards

        return cards.model_card(self, **kwargs)


class Tokenizer(ZooModel):
    """A discrete tokenizer: ``encode(x) -> Tokens`` and ``decode(tokens) -> x``."""

    modality: ClassVar[str]

    @property
    def codebook_size(self) -> int:
        raise NotImplementedError

    @property
    def num_codebooks(self) -> int:
        return 1

    def encode(self, x, **kwargs) -> Tokens:
        raise NotImplementedError

    def decode(self, tokens: Tokens | torch.Tensor, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the codes (without batch) for an input of `input_shape` (without batch)."""
        raise NotImplementedError

    @torch.inference_mode()
    def reconstruct(self, x, **kwargs) -> torch.Tensor:
        return self.decode(self.encode(x, **kwargs))

    def card_facts(self) -> dict[str, Any]:
        return {**super().card_facts(), "codebook size": self.codebook_size, "codebooks": self.num_codebooks}


class AudioTokenizer(Tokenizer):
    modality = "audio"
    sample_rate: int
    hop_length: int

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second of audio: frames/s x codebooks x log2(codebook size)."""
        return self.frame_rate * self.num_codebooks * math.log2(self.codebook_size)

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(Q, T)`` codes for an input of ``(..., num_samples)`` at the model's sample rate."""
        return (self.num_codebooks, math.ceil(input_shape[-1] / self.hop_length))

    def card_facts(self) -> dict[str, Any]:
        return {
            **super().card_facts(),
            "token shape": f"(B, {self.num_codebooks}, T), T = ceil(samples / {self.hop_length})",
            "sample rate": f"{self.sample_rate} Hz",
            "tokens per second": f"{self.frame_rate:g}",
            "bitrate": f"{self.bitrate:.0f} bit/s",
        }

    def card_usage(self) -> str:
        return (
            "wav, sr = zoo.io.load_audio(\"speech.wav\")\n"
            "tokens = tok.encode(wav, sample_rate=sr)      # tokens.codes: (B, Q, T) int64\n"
            "audio = tok.decode(tokens)                    # back at the input sample rate and length"
        )


class Generator(ZooModel):
    """A generative model over some tokenizer's codes; `tokenizer` names its paired tokenizer in the registry."""

    tokenizer: str

    def generate(self, cond=None, num_samples: int = 1, **kwargs) -> Tokens:
        raise NotImplementedError
