"""Images and audio in and out: Pillow for images, soundfile for audio, torchaudio for resampling.

All writers are atomic (temporary file, then rename), so an interrupted run never leaves half a file behind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image

from .checkpoints import atomic_path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --- audio -------------------------------------------------------------------------------------------------------


def load_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 ``(C, T)`` in [-1, 1] and its sample rate."""
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read audio ({err})") from err
    if data.shape[0] == 0:
        raise ValueError(f"{path}: the file holds no samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def save_audio(path: str | Path, wav: torch.Tensor, sample_rate: int) -> None:
    """Write ``(T)`` or ``(C, T)`` float audio as 16-bit PCM (clipped to [-1, 1])."""
    path = Path(path)
    wav = wav.detach().float().cpu()
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(f"save_audio: expected (T) or (C, T), got {tuple(wav.shape)}")
    data = wav.clamp(-1, 1).T.numpy()
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sample_rate, subtype="PCM_16", format=path.suffix[1:].upper() or "WAV")


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc)."""
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav
    return AF.resample(wav, orig_sr, new_sr)


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Average the channel axis: ``(B, C, T) -> (B, T)``."""
    return wav.mean(dim=1)


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    return math.ceil(num_samples * new_sr / orig_sr)


def list_files(inputs: Sequence[str | Path], suffixes: Iterable[str]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of files with the given suffixes."""
    suffixes = tuple(suffixes)
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in suffixes)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


# --- images ------------------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image as float32 ``(3, H, W)`` in [0, 1] (RGB)."""
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img)
    except OSError as err:
        raise ValueError(f"{path}: cannot read image ({err})") from err


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` float in [0, 1] -> RGB PIL image."""
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected (3, H, W) or (1, H, W), got {tuple(img.shape)}")
    array = (img.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def save_image(path: str | Path, img: torch.Tensor) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        tensor_to_pil(img).save(tmp, format=(path.suffix[1:] or "png").upper().replace("JPG", "JPEG"))


RESIZE_MODES = ("center_crop", "none")


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, size, size)``: the shorter side is resized to `size` (bicubic, antialiased,
    clamped to [0, 1]), then the centre square is cut out. Square inputs of the right size pass unchanged."""
    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    new_h, new_w = h, w
    if min(h, w) != size:
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        img = torch.nn.functional.interpolate(img, size=(new_h, new_w), mode="bicubic", antialias=True).clamp(0, 1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[..., top: top + size, left: left + size]


def image_batch(images, size: int | None = None, resize: str = "center_crop") -> torch.Tensor:
    """Images in any common form -> float ``(B, 3, H, W)`` in [0, 1].

    Args:
        images: a tensor ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1], a PIL image, a path, or a list of these
            (a list is resized item by item, so its images may differ in size).
        size: the model's input size. With ``resize="center_crop"`` every image is brought to ``size x size`` by
            `resize_center_crop`; with ``"none"`` images are passed at their own size (the model checks it).
    """
    from .api import as_image_batch

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images: got an empty list")
    batches = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            item = load_image(item)
        elif isinstance(item, Image.Image):
            item = pil_to_tensor(item)
        what = "images" if len(items) == 1 else f"images[{i}]"
        batch = as_image_batch(item, what)
        if size is not None and resize == "center_crop":
            batch = resize_center_crop(batch, size)
        batches.append(batch)
    shapes = {tuple(b.shape[-2:]) for b in batches}
    if len(shapes) > 1:
        raise ValueError(f"images: list items have different sizes {sorted(shapes)}; use resize='center_crop'")
    return torch.cat(batches)


def image_grid(images: torch.Tensor | Sequence[torch.Tensor], ncols: int, pad: int = 2,
               labels: Sequence[str] | None = None) -> torch.Tensor:
    """Tile ``(N, 3, H, W)`` images into one ``(3, H', W')`` grid with white padding; `labels` (one per image)
    are written in black under the tiles."""
    images = torch.stack(list(images)) if not isinstance(images, torch.Tensor) else images
    n, c, h, w = images.shape
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels: expected {n}, got {len(labels)}")
    caption = 12 if labels is not None else 0
    nrows = math.ceil(n / ncols)
    cell_h = h + caption + pad
    grid = torch.ones(c, nrows * cell_h + pad, ncols * (w + pad) + pad)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[:, pad + r * cell_h: pad + r * cell_h + h, pad + col * (w + pad): pad + col * (w + pad) + w] = img
    if labels is None:
        return grid
    from PIL import ImageDraw

    canvas = tensor_to_pil(grid)
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(labels):
        r, col = divmod(i, ncols)
        draw.text((pad + col * (w + pad) + 1, pad + r * cell_h + h), str(label), fill=(0, 0, 0))
    return pil_to_tensor(canvas)


# --- generated samples ---------------------------------------------------------------------------------------------


def spectrogram_image(wav: torch.Tensor, sample_rate: int, height: int = 80) -> torch.Tensor:
    """``(T)`` audio -> ``(3, height, frames)`` log-mel picture in [0, 1] (low frequencies at the bottom)."""
    from .metrics import log_mel

    mel = log_mel(wav[None].float().cpu(), sample_rate, n_mels=height)[0]          # (height, frames)
    mel = (mel - mel.max() + 8).clamp_min(0) / 8                                   # an 8-nat (~35 dB) range
    return mel.flip(0)[None].expand(3, -1, -1)


def save_generated(out: str | Path, samples, modality: str, labels: Sequence[str] | None = None, *,
                   sample_rate: int | None = None) -> list[Path]:
    """Write generated samples; returns the files written.

    Images ``(B, 3, H, W)``: `out` ending in an image suffix gets one grid with `labels` under the tiles; a folder
    gets ``sample_<i>.png`` files and ``grid.png``. Audio ``(B, T)`` (or a list of ``(T)``) at `sample_rate`: a
    folder gets ``sample_<i>.wav`` files and ``spectrograms.png`` (their log-mel pictures side by side); `out`
    ending in ``.wav`` takes a single sample.
    """
    out = Path(out)
    n = len(samples)
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    if modality == "image":
        grid = image_grid(samples, ncols=min(n, 8), labels=labels)
        if out.suffix.lower() in IMAGE_SUFFIXES:
            save_image(out, grid)
            return [out]
        files = [out / f"sample_{i:03d}.png" for i in range(n)]
        for path, img in zip(files, samples):
            save_image(path, img)
        save_image(out / "grid.png", grid)
        return files + [out / "grid.png"]
    if modality == "audio":
        if sample_rate is None:
            raise ValueError("save_generated: audio needs its sample_rate")
        if out.suffix.lower() in AUDIO_SUFFIXES:
            if n != 1:
                raise ValueError(f"-o {out} names one file but there are {n} samples: give a folder")
            save_audio(out, samples[0], sample_rate)
            return [out]
        files = [out / f"sample_{i:03d}.wav" for i in range(n)]
        for path, wav in zip(files, samples):
            save_audio(path, wav, sample_rate)
        pictures = [spectrogram_image(wav, sample_rate) for wav in samples]
        width = max(p.shape[-1] for p in pictures)
        pictures = torch.stack([torch.nn.functional.pad(p, (0, width - p.shape[-1]), value=1.0) for p in pictures])
        save_image(out / "spectrograms.png", image_grid(pictures, ncols=min(n, 4), labels=labels))
        return files + [out / "spectrograms.png"]
    raise ValueError(f"save_generated: modality must be 'image' or 'audio', got {modality!r}")
