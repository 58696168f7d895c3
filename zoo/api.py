"""The one contract every family speaks: `Tokens`, `Latents`, `ImageTokenizer` / `AudioTokenizer`, `Generator`.

Inputs at the boundary (each family converts to its own internal range):
* images: float in [0, 1], ``(3, H, W)`` or ``(B, 3, H, W)``, PIL images, paths, or lists of these;
* audio: float in [-1, 1] with an explicit ``sample_rate``: ``(T)`` mono, ``(C, T)`` one clip (channels averaged),
  ``(B, C, T)`` a batch, or a list of ``(T)`` / ``(C, T)`` clips of any lengths. A 2-D array that looks like
  ``(T, C)`` (soundfile's layout) is refused with the fix, never reinterpreted.
Bad input raises `ValueError` naming what was expected, before anything reaches a kernel.

Seeds are per item: wherever a seeded random draw happens (a stochastic decoder, sampling), item ``i`` draws from
its own ``torch.Generator``, so its result does not depend on its batch position or the batch size
(`item_generators`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from . import checkpoints

# ----------------------------------------------------------------------------------------------------------------
# Tokens

# layout -> axis names of `codes`. The "sequence axis" (the one `lengths` counts along and a sequence model reads
# in order) is marked by SEQUENCE_AXIS; the codes of one position (codebooks, RVQ depths, channels) by DEPTH_AXIS.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "audio": ("B", "Q", "T"),              # Q codebooks per audio frame
    "sequence": ("B", "N"),                # 1-D token sequence, e.g. FlexTok (prefix-decodable)
    "grid": ("B", "H", "W"),               # 2-D grid of one code per cell (VQ), read in raster order
    "residual_grid": ("B", "H", "W", "D"),  # D residual (RVQ) codes per cell
    "residual_audio": ("B", "D", "T"),     # D residual codes per audio frame
    "channels": ("B", "N", "C"),           # one code per latent channel, channels may have different vocabularies
}
SEQUENCE_AXIS = {"audio": 2, "sequence": 1, "grid": None, "residual_grid": None, "residual_audio": 2, "channels": 1}
DEPTH_AXIS = {"audio": 1, "sequence": None, "grid": None, "residual_grid": 3, "residual_audio": 1, "channels": 2}
# `meta` keys with one meaning each; the first group holds one entry per item and is sliced with the batch.
PER_ITEM_META = ("num_samples", "labels", "seeds")
META_KEYS = {
    "model": "registry name (or local-dir: / hf-hub: reference) of the tokenizer that made the codes",
    "config_hash": "hash of that tokenizer's config (fields that change what codes mean); decode checks it",
    "sample_rate": "audio: the input's sample rate in Hz (decode returns audio at this rate)",
    "num_samples": "audio: per-item input length in samples at `sample_rate`",
    "image_size": "images: [H, W] of the encoded images (decode returns this size)",
    "labels": "generated: per-item class label",
    "seeds": "generated: per-item seed",
}


@dataclass
class Tokens:
    """Discrete codes, what they are, and what decoding needs.

    Attributes:
        codes: int64, shaped as `layout` says (see `LAYOUTS`): audio ``(B, Q, T)``, sequence ``(B, N)``, grid
            ``(B, H, W)``, residual_grid ``(B, H, W, D)``, residual_audio ``(B, D, T)``, channels ``(B, N, C)``.
        layout: one of `LAYOUTS`.
        vocab_sizes: codes per codebook / residual depth / channel (one entry when all share one vocabulary).
        lengths: ``(B,)`` int64 valid positions per item along the sequence axis (audio frames, sequence
            prefixes), or None when every item uses the full length. Codes past an item's length are padding.
        meta: plain JSON values; each key has one meaning (`META_KEYS`).
    """

    codes: torch.Tensor
    layout: str
    vocab_sizes: tuple[int, ...]
    lengths: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"Tokens: layout must be one of {sorted(LAYOUTS)}, got {self.layout!r}")
        self.vocab_sizes = tuple(int(v) for v in self.vocab_sizes)
        axes = LAYOUTS[self.layout]
        codes = self.codes
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(f"Tokens: codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.ndim != len(axes):
            raise ValueError(f"Tokens: layout {self.layout!r} means codes {axes}, got shape {tuple(codes.shape)}")
        depth = DEPTH_AXIS[self.layout]
        depth_size = 1 if depth is None else codes.shape[depth]
        if len(self.vocab_sizes) not in (1, depth_size) or min(self.vocab_sizes, default=0) < 1:
            raise ValueError(f"Tokens: vocab_sizes must hold 1 or {depth_size} positive sizes, got {self.vocab_sizes}")
        if self.lengths is not None:
            if SEQUENCE_AXIS[self.layout] is None:
                raise ValueError(f"Tokens: layout {self.layout!r} has no sequence axis, so no lengths")
            self.lengths = torch.as_tensor(self.lengths, dtype=torch.long, device=codes.device)
            n = codes.shape[SEQUENCE_AXIS[self.layout]]
            if self.lengths.shape != (codes.shape[0],) or int(self.lengths.min()) < 1 or int(self.lengths.max()) > n:
                raise ValueError(f"Tokens: lengths must be ({codes.shape[0]},) values in 1..{n}, got "
                                 f"{self.lengths.tolist()}")
        self.codes = codes.long()

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def vocab_size_per_depth(self) -> tuple[int, ...]:
        """One vocabulary size per codebook / depth / channel (`vocab_sizes` broadcast)."""
        depth = DEPTH_AXIS[self.layout]
        size = 1 if depth is None else self.codes.shape[depth]
        return self.vocab_sizes * size if len(self.vocab_sizes) == 1 else self.vocab_sizes

    def __getitem__(self, i: int) -> "Tokens":
        """Item `i` alone, trimmed to its valid length."""
        i = range(len(self))[i]  # negative indices; IndexError when out of range
        codes, lengths = self.codes[i: i + 1], None
        if self.lengths is not None:
            n = int(self.lengths[i])
            codes = codes.narrow(SEQUENCE_AXIS[self.layout], 0, n)
            lengths = self.lengths[i: i + 1]
        meta = {k: (v[i: i + 1] if k in PER_ITEM_META and isinstance(v, list) else v) for k, v in self.meta.items()}
        return dataclasses.replace(self, codes=codes, lengths=lengths, meta=meta)

    def to(self, device: torch.device | str) -> "Tokens":
        lengths = None if self.lengths is None else self.lengths.to(device)
        return dataclasses.replace(self, codes=self.codes.to(device), lengths=lengths, meta=dict(self.meta))

    # --- the order a sequence model reads them in ------------------------------------------------------------------
    def to_sequence(self) -> torch.Tensor:
        """Codes as ``(B, L, K)`` in reading order: time for audio, prefix order for sequences, raster (row by row)
        for grids; K = codes per position (codebooks, residual depths, channels; 1 otherwise)."""
        c = self.codes
        if self.layout in ("audio", "residual_audio"):
            return c.transpose(1, 2)                     # (B, T, Q)
        if self.layout == "sequence":
            return c[..., None]                          # (B, N, 1)
        if self.layout == "grid":
            return c.flatten(1)[..., None]               # (B, H*W, 1)
        if self.layout == "residual_grid":
            return c.flatten(1, 2)                       # (B, H*W, D)
        return c                                         # channels: (B, N, C)

    @classmethod
    def from_sequence(cls, seq: torch.Tensor, layout: str, vocab_sizes: Sequence[int],
                      grid_size: tuple[int, int] | None = None, lengths: torch.Tensor | None = None,
                      meta: dict | None = None) -> "Tokens":
        """The inverse of `to_sequence`: ``(B, L, K)`` codes in reading order -> `Tokens` of `layout`
        (grids need their ``(H, W)``)."""
        if seq.ndim != 3:
            raise ValueError(f"from_sequence: expected (B, L, K) codes, got {tuple(seq.shape)}")
        b, n, k = seq.shape
        if layout in ("grid", "residual_grid"):
            if grid_size is None or grid_size[0] * grid_size[1] != n:
                raise ValueError(f"from_sequence: {n} positions do not fill a grid of {grid_size}")
            codes = seq.reshape(b, *grid_size, k)
            codes = codes[..., 0] if layout == "grid" else codes
        elif layout in ("audio", "residual_audio"):
            codes = seq.transpose(1, 2)
        elif layout == "sequence":
            if k != 1:
                raise ValueError(f"from_sequence: a 'sequence' layout has one code per position, got K={k}")
            codes = seq[..., 0]
        elif layout == "channels":
            codes = seq
        else:
            raise ValueError(f"from_sequence: unknown layout {layout!r}")
        return cls(codes.contiguous(), layout, tuple(vocab_sizes), lengths, dict(meta or {}))

    # --- files ---------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write a safetensors file (codes, lengths; layout, vocabulary and `meta` as JSON metadata), atomically."""
        tensors = {"codes": self.codes}
        if self.lengths is not None:
            tensors["lengths"] = self.lengths
        header = {"layout": self.layout, "vocab_sizes": list(self.vocab_sizes), "meta": self.meta}
        checkpoints.save_state_dict(tensors, path, metadata={"tokzoo.tokens": json.dumps(header)})

    @classmethod
    def load(cls, path: str | Path) -> "Tokens":
        from safetensors import safe_open

        path = Path(path)
        tensors = checkpoints.read_state_dict(path)
        with safe_open(str(path), framework="pt") as f:
            header = (f.metadata() or {}).get("tokzoo.tokens")
        if "codes" not in tensors or header is None:
            raise ValueError(f"{path}: not a tokzoo tokens file (no codes / layout); write one with `zoo encode`")
        header = json.loads(header)
        return cls(tensors["codes"], header["layout"], tuple(header["vocab_sizes"]), tensors.get("lengths"),
                   header.get("meta", {}))


@dataclass
class Latents:
    """A continuous generator's output (xAR: VAE latents), decoded by its paired autoencoder.

    Attributes:
        latents: ``(B, C, h, w)`` float, in the autoencoder's scaled latent space.
        meta: as `Tokens.meta` (``model`` = the paired autoencoder, ``labels``, ``seeds``).
    """

    latents: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.latents.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# validation


def check_finite(x: torch.Tensor, what: str) -> None:
    if x.numel() == 0:
        raise ValueError(f"{what}: got an empty tensor of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: contains NaN or infinite values")


MAX_AUDIO_CHANNELS = 8


def _audio_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a waveform tensor or array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected a float waveform in [-1, 1], got dtype {x.dtype}")
    return x


def _check_clip(clip: torch.Tensor, what: str) -> torch.Tensor:
    """One clip ``(C, T)``: a plausible channel count, samples, finite values in [-1, 1]."""
    c, t = clip.shape
    if t == 0:
        raise ValueError(f"{what}: empty input (zero samples)")
    if c > MAX_AUDIO_CHANNELS or c > t:
        raise ValueError(
            f"{what}: a 2-D waveform is one clip (C, T) with at most {MAX_AUDIO_CHANNELS} channels, got shape "
            f"{tuple(clip.shape)}. If it is (T, C) (soundfile's layout) pass x.T; for a batch of mono clips pass "
            f"(B, 1, T) or a list of (T) clips."
        )
    check_finite(clip, what)
    peak = float(clip.abs().max())
    if peak > 1 + 1e-3:
        raise ValueError(f"{what}: expected samples in [-1, 1], got a peak of {peak:.3g} (normalise the waveform)")
    return clip


def audio_clips(audio, what: str = "audio") -> list[torch.Tensor]:
    """Any accepted audio input -> a list of validated float clips ``(C, T)`` (see the module docstring)."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError(f"{what}: got an empty list of clips")
        clips = []
        for i, item in enumerate(audio):
            item = _audio_tensor(item, f"{what}[{i}]")
            if item.ndim not in (1, 2):
                raise ValueError(f"{what}[{i}]: each list item is one clip, (T) or (C, T); got {tuple(item.shape)}")
            clips.append(_check_clip(item if item.ndim == 2 else item[None], f"{what}[{i}]"))
        return clips
    audio = _audio_tensor(audio, what)
    if audio.ndim == 1:
        return [_check_clip(audio[None], what)]
    if audio.ndim == 2:
        return [_check_clip(audio, what)]
    if audio.ndim == 3:
        return [_check_clip(clip, f"{what}[{i}]") for i, clip in enumerate(audio)]
    raise ValueError(f"{what}: expected (T), (C, T), (B, C, T) or a list of clips, got shape {tuple(audio.shape)}")


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
# per-item seeds


def item_generators(batch_size: int, *, seed: int | Sequence[int] | None = None,
                    generator: torch.Generator | Sequence[torch.Generator] | None = None,
                    device: torch.device | str = "cpu") -> list[torch.Generator | None]:
    """One random source per item, so that an item's draws do not depend on its batch position or the batch size.

    Args:
        seed: an int (every item draws from a generator seeded with it: the same input and seed give the same
            result wherever the item sits), or one int per item.
        generator: one ``torch.Generator`` per item; a single generator is shared by all items in batch order
            (what the official pipelines do: reproducible for the whole batch only).
        Neither: torch's global RNG, in batch order.
    """
    if seed is not None and generator is not None:
        raise ValueError("give either seed or generator, not both")
    if seed is not None:
        seeds = [seed] * batch_size if isinstance(seed, (int, np.integer)) else list(seed)
        if len(seeds) != batch_size or not all(isinstance(s, (int, np.integer)) for s in seeds):
            raise ValueError(f"seed: expected an int or {batch_size} ints (one per item), got {seed!r}")
        return [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * batch_size
    generators = list(generator)
    if len(generators) != batch_size:
        raise ValueError(f"generator: expected one per item ({batch_size}), got {len(generators)}")
    return generators


def randn_per_item(shape: Sequence[int], generators: Sequence[torch.Generator | None], *,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, *shape)`` standard normal noise, item ``i`` drawn from ``generators[i]`` (see `item_generators`)."""
    return torch.stack([torch.randn(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators])


def rand_per_item(shape: Sequence[int], generators: Sequence[torch.Generator | None], *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, *shape)`` uniform [0, 1) noise, item ``i`` drawn from ``generators[i]``."""
    return torch.stack([torch.rand(tuple(shape), generator=g, device=device, dtype=dtype) for g in generators])


# ----------------------------------------------------------------------------------------------------------------
# base classes


class ZooModel(nn.Module, PyTorchModelHubMixin, library_name="tokzoo", tags=["tokzoo"]):
    """Common base: a config dataclass, Hub-layout save/load, the model card, and what the model can do.

    Subclasses set `config_class` (a dataclass whose field ``architecture`` names the registered architecture),
    `kind` and `modality`, and take ``config`` as their only constructor argument.
    """

    config_class: ClassVar[type]
    kind: ClassVar[str]  # "tokenizer" | "generator" | "autoencoder" | "accelerator" | "classifier" (registry.KINDS)
    modality: ClassVar[str]  # "image" | "audio"
    card_info: dict[str, Any]

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.name: str | None = None  # set by zoo.load: the registry name, or the local-dir: / hf-hub: reference
        self.card_info = {}  # filled by the loader: spec facts, measured quality (shown in the model card)

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters())).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def cast(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "ZooModel":
        """Move to `device` / `dtype`; families override this to keep precision-critical parts in float32."""
        return self.to(device=device, dtype=dtype)

    def zoo_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def config_hash(self) -> str:
        """16 hex digits over the config fields that change what the model computes (the config class may list
        inference-only settings in ``RUNTIME_FIELDS``: chunk sizes, default sampling steps)."""
        runtime = getattr(self.config_class, "RUNTIME_FIELDS", ())
        config = {k: v for k, v in self.zoo_config().items() if k not in runtime}
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def capabilities(self) -> dict[str, Any]:
        """What callers (the CLI, the demo, the registry-wide tests) may ask instead of branching on a family."""
        return {"kind": self.kind, "modality": self.modality}

    def example_input(self, batch_size: int = 1, seed: int = 0) -> tuple[Any, dict[str, Any]]:
        """A small valid input (random content) as ``(x, kwargs)``: what `encode` (tokenizers, autoencoders) or
        `forward` (accelerators) accepts as ``f(x, **kwargs)``."""
        raise NotImplementedError

    def card_facts(self) -> dict[str, Any]:
        """Rows of the model card's facts table."""
        return {"architecture": self.architecture, "parameters": f"{self.num_parameters() / 1e6:.2f} M"}

    def card_usage(self) -> str:
        return "out = model(...)"

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        """Measure this model on its family's data of `split` (``"test"``: reported once, what `zoo eval NAME`
        prints and ``--export`` puts in the model card; ``"validation"``: for choosing steps and settings): a table
        ``{"description": str, "columns": [...], "rows": [[...], ...]}`` (families may add more keys). Families
        override it, usually by delegating to their ``evaluate.py``."""
        raise NotImplementedError(
            f"{type(self).__name__} ({self.architecture}) has no held-out evaluation: its family adds one by "
            "overriding ZooModel.evaluate() (see zoo.evaluation)")

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
        path = Path(save_directory) / "model.safetensors"
        state = self.state_dict()
        if checkpoints.holds_state_dict(path, state):
            return  # the same weights are there already: keep the file (and its recorded sha256) as it is
        checkpoints.save_state_dict(state, path, metadata={"format": "pt", "architecture": self.architecture})

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
    """A discrete tokenizer: ``encode(x) -> Tokens`` and ``decode(tokens) -> x``.

    Subclasses set `token_layout`, implement `vocab_sizes`, `encode`, `decode`, `codes_to_embeddings` and
    `example_input`, and say what they can do: `prefix_decodable` (any prefix of the token sequence decodes, coarse
    to fine) and `stochastic_decode` (decoding draws noise: `decode` takes ``seed=`` / ``generator=``, per item).
    """

    kind = "tokenizer"
    token_layout: ClassVar[str]
    prefix_decodable: ClassVar[bool] = False
    stochastic_decode: ClassVar[bool] = False
    input_suffixes: ClassVar[tuple[str, ...]]   # files `encode_file` reads
    output_suffixes: ClassVar[tuple[str, ...]]  # files `decode_to_file` writes (the first is the default)

    # --- what a generator needs --------------------------------------------------------------------------------
    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        """Codes per codebook / residual depth / channel (one entry when all share one vocabulary)."""
        raise NotImplementedError

    @property
    def codebook_size(self) -> int:
        """The largest vocabulary (the only one for single-codebook tokenizers)."""
        return max(self.vocab_sizes)

    @property
    def num_codebooks(self) -> int:
        return len(self.vocab_sizes)

    def make_tokens(self, codes: torch.Tensor, lengths: torch.Tensor | None = None, **meta) -> Tokens:
        """`Tokens` of this tokenizer: its layout and vocabulary, and ``meta["model"]`` / ``["config_hash"]``."""
        return Tokens(codes, self.token_layout, self.vocab_sizes, lengths,
                      {"model": self.name, "config_hash": self.config_hash, **meta})

    def to_sequence(self, tokens: Tokens) -> torch.Tensor:
        """``(B, L, K)`` codes in the order a sequence model reads them (see `Tokens.to_sequence`)."""
        return self.check_tokens(tokens).to_sequence()

    def from_sequence(self, seq: torch.Tensor, *, lengths: torch.Tensor | None = None,
                      grid_size: tuple[int, int] | None = None, **meta) -> Tokens:
        """``(B, L, K)`` codes in reading order (e.g. generated) -> `Tokens` this tokenizer decodes; grid layouts
        take `grid_size` ``(H, W)`` (default: the grid of the default input size)."""
        grid = (grid_size or self.grid_size()) if self.token_layout in ("grid", "residual_grid") else None
        tokens = Tokens.from_sequence(seq, self.token_layout, self.vocab_sizes, grid, lengths)
        return self.make_tokens(tokens.codes, tokens.lengths, **meta)

    def grid_size(self) -> tuple[int, int]:
        """Grid tokenizers: ``(H, W)`` of the token grid at the default input size."""
        raise NotImplementedError(f"{type(self).__name__} has no token grid")

    def codes_to_embeddings(self, tokens: Tokens | torch.Tensor) -> torch.Tensor:
        """The quantizer's vectors for the codes, in reading order: ``(B, L, D)`` float (residual depths summed)."""
        raise NotImplementedError

    def check_tokens(self, tokens: Tokens) -> Tokens:
        """Refuse tokens made by another model (a different config, or another registered name)."""
        if not isinstance(tokens, Tokens):
            return tokens
        if tokens.layout != self.token_layout:
            raise ValueError(f"tokens have layout {tokens.layout!r}; {self.name or self.architecture} decodes "
                             f"{self.token_layout!r}")
        made_by, digest = tokens.meta.get("model"), tokens.meta.get("config_hash")
        me = self.name or self.architecture
        if digest is not None and digest != self.config_hash:
            raise ValueError(f"these tokens were made by {made_by or 'another model'} (config {digest}); "
                             f"{me} has config {self.config_hash}: decode them with the model that made them")
        registered = lambda n: isinstance(n, str) and ":" not in n  # noqa: E731  (not local-dir: / hf-hub:)
        if registered(made_by) and registered(self.name) and made_by != self.name:
            raise ValueError(f"these tokens were made by {made_by}; decode them with it, not with {self.name}")
        return tokens

    # --- encode / decode -------------------------------------------------------------------------------------
    def encode(self, x, **kwargs) -> Tokens:
        raise NotImplementedError

    def decode(self, tokens: Tokens | torch.Tensor, *, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | Sequence[torch.Generator] | None = None, **kwargs) -> torch.Tensor:
        """Tokens -> images / audio. Deterministic decoders accept and ignore `seed` / `generator`."""
        raise NotImplementedError

    @torch.inference_mode()
    def reconstruct(self, x, *, seed: int | Sequence[int] | None = None, **kwargs) -> torch.Tensor:
        return self.decode(self.encode(x, **kwargs), seed=seed)

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the codes (without batch) for an input of `input_shape` (without batch)."""
        raise NotImplementedError

    def default_decode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments `decode` uses when none are given (sampling steps, guidance, ...)."""
        return {}

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "token_layout": self.token_layout, "vocab_sizes": self.vocab_sizes,
                "prefix_decodable": self.prefix_decodable, "stochastic_decode": self.stochastic_decode,
                "default_decode_kwargs": self.default_decode_kwargs()}

    # --- files -------------------------------------------------------------------------------------------------
    def encode_file(self, path: str | Path) -> Tokens:
        raise NotImplementedError

    def decode_to_file(self, tokens: Tokens, path: str | Path, **decode_kwargs) -> None:
        """Decode one item (``len(tokens) == 1``) and write it to `path`."""
        raise NotImplementedError

    def card_facts(self) -> dict[str, Any]:
        return {**super().card_facts(), "token layout": self.token_layout,
                "vocabulary": " x ".join(str(v) for v in self.vocab_sizes)}


class ImageTokenizer(Tokenizer):
    """Images ``(B, 3, H, W)`` in [0, 1] (or PIL / paths / lists) -> `Tokens`; `decode` returns ``(B, 3, H, W)``."""

    modality = "image"
    input_size: int  # default square input size in pixels
    input_suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    output_suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, 3, self.input_size, self.input_size, generator=g), {}

    def encode_file(self, path: str | Path) -> Tokens:
        from . import io as zio

        return self.encode(zio.load_image(path))

    def decode_to_file(self, tokens: Tokens, path: str | Path, **decode_kwargs) -> None:
        from . import io as zio

        zio.save_image(path, self.decode(tokens, **decode_kwargs)[0])


class AudioTokenizer(Tokenizer):
    """Audio (see the module docstring) with an explicit ``sample_rate`` -> `Tokens` ``(B, Q, T)``; `decode`
    returns mono ``(B, T)`` at the input's rate and length."""

    modality = "audio"
    token_layout = "audio"
    sample_rate: int
    hop_length: int
    input_suffixes = (".wav", ".flac", ".ogg")
    output_suffixes = (".wav", ".flac", ".ogg")

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second of audio: frames/s x the bits of one frame's codes."""
        return self.frame_rate * sum(math.log2(v) for v in self.vocab_sizes)

    def token_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(Q, T)`` codes for an input of ``(..., num_samples)`` at the model's sample rate."""
        return (self.num_codebooks, math.ceil(input_shape[-1] / self.hop_length))

    def example_input(self, batch_size: int = 1, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch_size, 1, self.sample_rate // 2, generator=g) - 0.5) * 0.5, \
            {"sample_rate": self.sample_rate}

    def encode_file(self, path: str | Path) -> Tokens:
        from . import io as zio

        wav, sr = zio.load_audio(path)
        return self.encode(wav, sample_rate=sr)

    def decode_to_file(self, tokens: Tokens, path: str | Path, **decode_kwargs) -> None:
        from . import io as zio

        audio = self.decode(tokens, **decode_kwargs)
        zio.save_audio(path, audio[0], int(tokens.meta.get("sample_rate") or self.sample_rate))

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
            "wav, sr = zoo.io.load_audio(\"speech.wav\")     # (C, T): one clip, channels averaged\n"
            "tokens = tok.encode(wav, sample_rate=sr)      # tokens.codes: (B, Q, T) int64\n"
            "audio = tok.decode(tokens)                    # (B, T) at the input's sample rate and length"
        )


# ----------------------------------------------------------------------------------------------------------------
# generators


def check_choice(name: str, value, choices: Sequence) -> None:
    """`ValueError` unless `value` is one of `choices` (an option such as ``cfg_schedule``)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_count(name: str, value) -> None:
    """`ValueError` unless `value` is an int >= 1 (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_sampling_args(*, num_samples: int = 1, temperature: float | None = None, top_k: int | None = None,
                        top_p: float | None = None, cfg_scale: float | None = None, steps: int | None = None) -> None:
    """`ValueError` for sampling arguments outside their domain."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if cfg_scale is not None and not (math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
    if steps is not None:
        check_count("steps", steps)


class Generator(ZooModel):
    """A generative model over a tokenizer's codes (or an autoencoder's latents).

    Its config names the paired model in ``config.tokenizer`` (a registry name, copied from the `ModelSpec`'s
    ``tokenizer`` field); `sample` decodes through it, loaded once with `zoo.load`. Subclasses implement
    `generate` and set `num_classes` for class-conditional models.

    Seeds: ``seed=s`` (an int) gives sample ``k`` of every label the seed ``s + k`` (so the first sample of class 3
    with seed 0 is the same image whatever else is in the batch); a list gives one seed per output item.
    """

    kind = "generator"
    num_classes: int | None = None  # class-conditional models: labels are 0..num_classes-1
    label_names: tuple[str, ...] | None = None  # optional: a name per class

    def __init__(self, config):
        super().__init__(config)
        # a plain reference, not a registered submodule: the tokenizer's weights are not part of this model's
        # state_dict, save_pretrained, cast or parameter count
        object.__setattr__(self, "_paired", None)

    @property
    def tokenizer_name(self) -> str:
        name = getattr(self.config, "tokenizer", None)
        if not name:
            raise ValueError(f"{self.name or self.architecture}: its config names no paired tokenizer")
        return name

    def check_pairing(self, model: ZooModel) -> None:
        """Raise `ValueError` if `model` cannot be this generator's paired model (families check vocabularies)."""

    def pair(self, model: ZooModel) -> "Generator":
        """Decode through this tokenizer / autoencoder instance (one built in memory, e.g. at a tiny size) instead of
        loading ``config.tokenizer`` by name."""
        self.check_pairing(model)
        object.__setattr__(self, "_paired", model)
        return self

    def paired_model(self) -> ZooModel:
        """The paired tokenizer / autoencoder: the one given to `pair`, else ``zoo.load(config.tokenizer)`` on first
        use, on this model's device."""
        if self._paired is None:
            from .hub import load

            self.pair(load(self.tokenizer_name, device=self.device))
        return self._paired

    def item_labels_and_seeds(self, labels, num_samples: int, seed) -> tuple[torch.Tensor | None, list | None]:
        """Validate labels and seeds and expand them to one per output item (label-major: every sample of the first
        label, then the next). Returns ``(labels (B,) or None, seeds or None)``."""
        check_sampling_args(num_samples=num_samples)
        if labels is None:
            items = None
            if self.num_classes is not None:
                raise ValueError(f"{self.name or self.architecture} is class-conditional: give labels in "
                                 f"0..{self.num_classes - 1}")
            count = num_samples
        else:
            items = torch.as_tensor(labels).reshape(-1)
            if items.is_floating_point() or items.numel() == 0:
                raise ValueError(f"labels: expected integer class ids, got {labels!r}")
            if self.num_classes is None:
                raise ValueError(f"{self.name or self.architecture} is not class-conditional: labels are not taken")
            lo, hi = int(items.min()), int(items.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"labels: class ids must be in 0..{self.num_classes - 1}, got range [{lo}, {hi}]")
            items = items.long().repeat_interleave(num_samples)
            count = len(items)
        if seed is None:
            seeds = None
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + k for k in range(num_samples)] * (count // num_samples)
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != count:
                raise ValueError(f"seed: expected an int or {count} ints (one per output item), got {len(seeds)}")
        return items, seeds

    def generate(self, labels=None, *, prompt: Tokens | None = None, num_samples: int = 1,
                 cfg_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, steps: int | None = None, seed: int | Sequence[int] | None = None,
                 progress: bool = False) -> Tokens | Latents:
        """Sample codes (`Tokens` of the paired tokenizer) or latents (`Latents`, continuous generators).

        Args:
            labels: class ids (class-conditional models); each gives `num_samples` items.
            prompt: tokens to continue (prefix prompting), one item per output item.
            cfg_scale, temperature, top_k, top_p, steps: sampling settings (None = the model's defaults).
            seed: see the class docstring; None = torch's global RNG.
        """
        raise NotImplementedError

    @torch.inference_mode()
    def sample(self, labels=None, *, decode_kwargs: dict | None = None, **generate_kwargs) -> torch.Tensor:
        """`generate`, then decode through the paired model: images ``(B, 3, H, W)`` or audio ``(B, T)``."""
        out = self.generate(labels, **generate_kwargs)
        paired = self.paired_model()
        if isinstance(out, Latents):
            return paired.decode(out.latents, **(decode_kwargs or {}))
        return paired.decode(out, seed=out.meta.get("seeds"), **(decode_kwargs or {}))

    def card_facts(self) -> dict[str, Any]:
        facts = {**super().card_facts(), "paired tokenizer": getattr(self.config, "tokenizer", None) or "-"}
        if self.num_classes is not None:
            facts["classes"] = self.num_classes
        return facts
