"""Small real datasets with fixed, documented train / held-out splits.

* `speech`: English sentences spoken by espeak-ng (Debian package ``espeak-ng``) in several voices, resampled to
  24 kHz. Split by voice *and* sentence: held-out clips use voices and sentences never seen in training.
  Generated once and cached under ``$TOKZOO_CACHE`` (default ``~/.cache/tokzoo``).
* `photos`: the photographs shipped with scikit-image and the two with scikit-learn (``china``, ``flower``);
  held out by name (`HELD_OUT_PHOTOS`, scikit-image's astronaut, coffee and chelsea).
* `digits`: scikit-learn's 8x8 handwritten digits (1,797 images); the last 297 are held out.
* `samples`: a few held-out inputs committed with the package (``zoo/samples/``), for `zoo demo` on a machine
  without espeak-ng or scikit-image: four held-out speech clips and the three held-out photos (128 px).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import torch

from . import io as zio

SPEECH_SAMPLE_RATE = 24000
TRAIN_VOICES = ("en-us", "en-gb", "en-us+f2", "en-gb-scotland", "en-029+m4", "en-us-nyc+f4", "en-gb-x-rp+m2",
                "en+f3", "en-gb+m5", "en-us+f5")
HELD_OUT_VOICES = ("en-gb-x-gbclan+f1", "en-us+m7")

_SUBJECTS = ("the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the little dog",
             "a tired driver", "the farmer", "her mother", "the pilot", "a quiet student", "the baker")
_VERBS = ("carried", "painted", "found", "watched", "opened", "repaired", "followed", "borrowed", "cleaned",
          "dropped", "wanted", "described")
_OBJECTS = ("a heavy box", "the green door", "seven yellow apples", "an empty bottle", "the broken clock",
            "a silver coin", "the wooden chair", "twelve small stones", "the red bicycle", "a paper map",
            "the kitchen window", "three blue pencils")
_PLACES = ("near the river", "after dinner", "in the morning", "before the storm", "at the station",
           "under the bridge", "on a cold day", "behind the house", "during the game", "by the lake")


def sentences(n: int, seed: int) -> list[str]:
    """`n` distinct grammatical sentences from a small fixed grammar (deterministic in `seed`)."""
    rng = random.Random(seed)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_PLACES)}."
        if s not in seen:
            seen.add(s)
            out.append(s[0].upper() + s[1:])
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("TOKZOO_CACHE", Path.home() / ".cache" / "tokzoo"))


def _speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng); it speaks the dataset")
    with zio.atomic_path(path) as tmp:  # unique temporary name: concurrent processes cannot collide
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(tmp), text],
                       check=True, capture_output=True)


def speech(split: str, n: int | None = None) -> list[torch.Tensor]:
    """Mono 24 kHz speech clips ``(T,)`` for ``split`` in {"train", "heldout"}.

    train: 10 voices x 24 sentences (240 clips, about 12 minutes); heldout: 2 other voices x 12 other sentences
    (24 clips). Speaking rate and pitch vary per clip (seeded).
    """
    if split == "train":
        voices, texts, seed = TRAIN_VOICES, sentences(24, seed=0), 1
    elif split == "heldout":
        train_texts = set(sentences(24, seed=0))
        texts = [s for s in sentences(60, seed=7) if s not in train_texts][:12]
        voices, seed = HELD_OUT_VOICES, 2
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(seed)
    folder = cache_dir() / "speech" / split
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    items = [(v, t) for v in voices for t in texts]
    for voice, text in items[:n]:
        speed, pitch = rng.randint(140, 190), rng.randint(30, 70)
        key = hashlib.sha1(f"{voice}|{speed}|{pitch}|{text}".encode()).hexdigest()[:16]
        path = folder / f"{key}.wav"
        if not path.exists():
            _speak(text, voice, speed, pitch, path)
        wav, sr = zio.load_audio(path)
        clips.append(zio.resample(wav.mean(0), sr, SPEECH_SAMPLE_RATE))
    return clips


HELD_OUT_PHOTOS = ("astronaut", "coffee", "chelsea")
# Every photograph scikit-image ships without a download ("cat" is left out: it is the same picture as "chelsea").
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")
SKLEARN_PHOTOS = ("china", "flower")  # sklearn.datasets.load_sample_images: two colour photographs


def photos(split: str) -> dict[str, torch.Tensor]:
    """Photographs as float ``(3, H, W)`` in [0, 1]; grey images are repeated to 3 channels."""
    import numpy as np
    from skimage import data as skdata

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    names = HELD_OUT_PHOTOS if split == "heldout" else tuple(p for p in PHOTOS if p not in HELD_OUT_PHOTOS)
    names += () if split == "heldout" else SKLEARN_PHOTOS
    out = {}
    for name in names:
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_image

            array = np.asarray(load_sample_image(f"{name}.jpg"))
        else:
            array = np.asarray(getattr(skdata, name)())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        array = array[..., :3]
        scale = 255.0 if array.dtype == np.uint8 else (65535.0 if array.dtype == np.uint16 else 1.0)
        out[name] = torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).clamp(0, 1).contiguous()
    return out


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits: images ``(N, 1, 8, 8)`` in [0, 1] and labels ``(N,)``; the last 297 are held out."""
    from sklearn.datasets import load_digits

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(d.target)
    cut = 1500
    return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])


SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def samples(modality: str) -> dict[str, tuple]:
    """The bundled demo inputs of a modality, by file stem: ``{"speech_0": (wav (C, T), sample_rate), ...}`` for
    ``"audio"``, ``{"astronaut": (image (3, H, W),), ...}`` for ``"image"``."""
    suffix = {"audio": ".wav", "image": ".png"}.get(modality)
    if suffix is None:
        raise ValueError(f"modality must be 'audio' or 'image', got {modality!r}")
    files = sorted(SAMPLES_DIR.glob(f"*{suffix}"))
    if modality == "audio":
        return {f.stem: zio.load_audio(f) for f in files}
    return {f.stem: (zio.load_image(f),) for f in files}
