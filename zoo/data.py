"""Small real datasets with three fixed, documented, disjoint splits each (`SPLITS`):

* ``train``: what models are trained on;
* ``validation``: for choosing steps, guidance, thresholds (never trained on);
* ``test``: reported once, never tuned on.

* `speech`: English sentences spoken by espeak-ng (Debian package ``espeak-ng``) in several voices, resampled to
  24 kHz. Split by voice *and* sentence: each split has its own voices and its own sentences.
  Generated once and cached under ``$TOKZOO_CACHE`` (default ``~/.cache/tokzoo``).
* `photos`: the photographs shipped with scikit-image and the two with scikit-learn (``china``, ``flower``);
  split by picture: validation is scikit-image's stereo motorcycle (left view), test its astronaut, coffee and
  chelsea.
* `spoken_digits`: the words "zero".."nine" spoken by espeak-ng in 31 voices (accent + variant), every clip exactly
  1.0 s at 24 kHz with the word starting 0.05 s in. Split by voice: 24 train, 3 validation, 4 test voices (the
  speech set's voices keep their splits). Cached like `speech`.
* `digits`: scikit-learn's 8x8 handwritten digits (1,797 images, no two identical): 0-1,299 train, 1,300-1,499
  validation, 1,500-1,796 test.
* `samples`: a few test inputs committed with the package (``zoo/samples/``), for `zoo demo` on a machine without
  espeak-ng, scikit-image or Fashion-MNIST: four test speech clips, the three test photos (128 px), and one
  Fashion-MNIST test image of each class.
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
HELD_OUT_VOICES = ("en-gb-x-gbclan+f1", "en-us+m7")  # the test voices
VALIDATION_VOICES = ("en-gb-x-gbcwmd+m3",)
SPLITS = ("train", "validation", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

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


def split_texts(split: str) -> list[str]:
    """The sentences of a speech split (train: 24; validation and test: 12 each, never in another split)."""
    _check_split(split)
    train = sentences(24, seed=0)
    if split == "train":
        return train
    test = [s for s in sentences(60, seed=7) if s not in set(train)][:12]
    if split == "test":
        return test
    return [s for s in sentences(80, seed=11) if s not in set(train) | set(test)][:12]


def speech_items(split: str) -> list[tuple[str, str, int, int]]:
    """``(voice, sentence, speed, pitch)`` of every clip of a speech split, in order (`speech` speaks these)."""
    texts = split_texts(split)  # checks the split name
    voices, seed = {"train": (TRAIN_VOICES, 1), "validation": (VALIDATION_VOICES, 3), "test": (HELD_OUT_VOICES, 2)}[split]
    rng = random.Random(seed)
    items = []
    for voice in voices:
        for text in texts:
            speed, pitch = rng.randint(140, 190), rng.randint(30, 70)
            items.append((voice, text, speed, pitch))
    return items


def speech(split: str, n: int | None = None) -> list[torch.Tensor]:
    """Mono 24 kHz speech clips ``(T,)`` of a split (`SPLITS`), the first `n` of `speech_items`.

    train: 10 voices x 24 sentences (240 clips, about 12 minutes); validation: 1 other voice x 12 other sentences;
    test: 2 other voices x 12 other sentences (24 clips). Speaking rate and pitch vary per clip (seeded).
    """
    folder = cache_dir() / "speech" / split
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for voice, text, speed, pitch in speech_items(split)[:n]:
        key = hashlib.sha1(f"{voice}|{speed}|{pitch}|{text}".encode()).hexdigest()[:16]
        path = folder / f"{key}.wav"
        if not path.exists():
            _speak(text, voice, speed, pitch, path)
        wav, sr = zio.load_audio(path)
        clip = zio.resample(wav.mean(0), sr, SPEECH_SAMPLE_RATE)
        peak = float(clip.abs().max())
        clips.append(clip / peak if peak > 1 else clip)  # resampling can overshoot a full-scale clip slightly
    return clips


SPOKEN_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPOKEN_DIGIT_SECONDS = 1.0     # every clip: exactly this long (24,000 samples; 75 WavTokenizer frames at 75 tokens/s)
SPOKEN_DIGIT_LEAD = 0.05       # the word starts this far in (1,200 samples)
SPOKEN_DIGIT_SILENCE = 0.01    # trimming threshold: |sample| below this share of the clip's peak is silence
# Voices are espeak-ng "accent+variant" names. Each one was checked to give its own audio (espeak-ng falls back
# silently to the plain accent for an unknown or miscased variant, and ignores variants on "en-gb"): "en-gb+m5", kept
# from the speech set's TRAIN_VOICES, sounds exactly as "en-gb", so train has 24 distinct voices under 25 names.
# No variant of a held-out voice is used in train, and the held-out accents gbclan and gbcwmd are absent from train.
SPOKEN_DIGIT_VOICES = {
    "train": TRAIN_VOICES + ("en-us+m1", "en-gb-scotland+m6", "en-us+Alex", "en-gb-x-rp+belinda", "en-us-nyc+caleb",
                             "en-029+steph", "en-gb-scotland+david", "en+ed", "en-us+Gene", "en+max", "en-gb-x-rp+paul",
                             "en-us-nyc+rob", "en+Andrea", "en-029+benjamin", "en-us-nyc"),
    "validation": VALIDATION_VOICES + ("en-us-nyc+Annie", "en-gb-x-rp+zac"),
    "test": HELD_OUT_VOICES + ("en-029+Mike", "en-gb-scotland+quincy"),
}
SPOKEN_DIGIT_DRAWS = {"train": 8, "validation": 8, "test": 8}  # (speed, pitch) draws per voice and digit
_SPOKEN_DIGIT_SEEDS = {"train": 21, "validation": 23, "test": 22}


def spoken_digit_items(split: str) -> list[tuple[str, int, int, int]]:
    """``(voice, digit, speed, pitch)`` of every clip of a spoken-digit split, in order: voice-major, then digit, then
    draw. Speed (words per minute) is uniform in 140..220 (slower words outlast the clip: "nine" at 124 wpm
    lasts 0.97 s in en-us-nyc+f4) and pitch in 20..80, seeded per split."""
    _check_split(split)
    rng = random.Random(_SPOKEN_DIGIT_SEEDS[split])
    return [(voice, digit, rng.randint(140, 220), rng.randint(20, 80))
            for voice in SPOKEN_DIGIT_VOICES[split] for digit in range(len(SPOKEN_DIGITS))
            for _ in range(SPOKEN_DIGIT_DRAWS[split])]


def fit_spoken_digit(wav: torch.Tensor, sample_rate: int = SPEECH_SAMPLE_RATE, what: str = "clip") -> torch.Tensor:
    """One spoken word ``(T,)`` -> ``(SPOKEN_DIGIT_SECONDS * sample_rate,)``: leading and trailing silence trimmed
    (`SPOKEN_DIGIT_SILENCE` of the peak), the word placed `SPOKEN_DIGIT_LEAD` s in, zeros after it. A word longer
    than the clip's remaining ``1.0 - 0.05`` s is refused (`ValueError` naming `what`): never cut."""
    length, lead = round(SPOKEN_DIGIT_SECONDS * sample_rate), round(SPOKEN_DIGIT_LEAD * sample_rate)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak == 0.0:
        raise ValueError(f"{what}: silent")
    loud = (wav.abs() >= SPOKEN_DIGIT_SILENCE * peak).nonzero().squeeze(1)
    word = wav[int(loud[0]): int(loud[-1]) + 1]
    if lead + len(word) > length:
        raise ValueError(f"{what}: the word lasts {len(word) / sample_rate:.3f} s, more than the "
                         f"{SPOKEN_DIGIT_SECONDS - SPOKEN_DIGIT_LEAD:.2f} s a {SPOKEN_DIGIT_SECONDS} s clip leaves")
    out = torch.zeros(length, dtype=torch.float32)
    out[lead: lead + len(word)] = word
    return out


def _spoken_digit_clip(item: tuple[str, int, int, int], folder: Path) -> torch.Tensor:
    voice, digit, speed, pitch = item
    word = SPOKEN_DIGITS[digit]
    path = folder / f"{hashlib.sha1(f'{voice}|{speed}|{pitch}|{word}'.encode()).hexdigest()[:16]}.wav"
    if not path.exists():
        _speak(word, voice, speed, pitch, path)
    wav, sr = zio.load_audio(path)
    clip = zio.resample(wav.mean(0), sr, SPEECH_SAMPLE_RATE)
    peak = float(clip.abs().max())
    clip = clip / peak if peak > 1 else clip  # as `speech`: only resampling's overshoot is scaled back
    return fit_spoken_digit(clip, SPEECH_SAMPLE_RATE, what=f"{word!r} by {voice} at {speed} wpm, pitch {pitch}")


def spoken_digits(split: str, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The spoken digits of a split (`SPLITS`): clips ``(N, 24000)`` float32 at 24 kHz (exactly
    `SPOKEN_DIGIT_SECONDS`, the word starting `SPOKEN_DIGIT_LEAD` s in, zeros after it) and labels ``(N,)`` int64
    (indices into `SPOKEN_DIGITS`), in the order of `spoken_digit_items`.

    train: 25 voice names (24 distinct voices) x 10 digits x 8 (speed, pitch) draws = 2,000 clips; validation:
    3 other voices (240 clips); test: 4 other voices (320 clips). espeak-ng speaks each word once (its WAVs are cached
    under ``cache_dir() / "spoken_digits"``, `workers` processes at a time, default the CPU count); the finished
    split is cached as one safetensors file keyed by its items and the fitting constants.
    """
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file, save_file

    items = spoken_digit_items(split)
    root = cache_dir() / "spoken_digits"
    recipe = f"{items}|{SPEECH_SAMPLE_RATE}|{SPOKEN_DIGIT_SECONDS}|{SPOKEN_DIGIT_LEAD}|{SPOKEN_DIGIT_SILENCE}"
    cached = root / f"{split}-{hashlib.sha1(recipe.encode()).hexdigest()[:16]}.safetensors"
    if cached.exists():
        tensors = load_file(str(cached))
        return tensors["clips"], tensors["labels"]
    folder = root / "wav"
    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        clips = [_spoken_digit_clip(item, folder) for item in items]
    else:  # threads suffice: espeak-ng runs in its own processes, torchaudio's resampling releases the GIL
        with ThreadPoolExecutor(workers) as pool:
            clips = list(pool.map(lambda item: _spoken_digit_clip(item, folder), items))
    clips = torch.stack(clips)
    labels = torch.tensor([digit for _, digit, _, _ in items], dtype=torch.int64)
    with zio.atomic_path(cached) as tmp:
        save_file({"clips": clips.contiguous(), "labels": labels}, str(tmp))
    return clips, labels


HELD_OUT_PHOTOS = ("astronaut", "coffee", "chelsea")  # the test photos
VALIDATION_PHOTOS = ("motorcycle",)  # scikit-image's stereo_motorcycle, left view
# Every photograph scikit-image ships without a download ("cat" is left out: it is the same picture as "chelsea").
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text")
SKLEARN_PHOTOS = ("china", "flower")  # sklearn.datasets.load_sample_images: two colour photographs


def photo_names(split: str) -> tuple[str, ...]:
    _check_split(split)
    if split == "test":
        return HELD_OUT_PHOTOS
    if split == "validation":
        return VALIDATION_PHOTOS
    return tuple(p for p in PHOTOS if p not in HELD_OUT_PHOTOS) + SKLEARN_PHOTOS


def photos(split: str) -> dict[str, torch.Tensor]:
    """Photographs of a split (`SPLITS`) as float ``(3, H, W)`` in [0, 1]; grey images are repeated to 3
    channels."""
    import numpy as np
    from skimage import data as skdata

    out = {}
    for name in photo_names(split):
        if name in SKLEARN_PHOTOS:
            from sklearn.datasets import load_sample_image

            array = np.asarray(load_sample_image(f"{name}.jpg"))
        elif name == "motorcycle":
            array = np.asarray(skdata.stereo_motorcycle()[0])
        else:
            array = np.asarray(getattr(skdata, name)())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        array = array[..., :3]
        scale = 255.0 if array.dtype == np.uint8 else (65535.0 if array.dtype == np.uint16 else 1.0)
        out[name] = torch.from_numpy(array.astype(np.float32) / scale).permute(2, 0, 1).clamp(0, 1).contiguous()
    return out


DIGIT_SPLITS = {"train": slice(0, 1300), "validation": slice(1300, 1500), "test": slice(1500, None)}


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits of a split (`DIGIT_SPLITS`): images ``(N, 1, 8, 8)`` in [0, 1] and labels ``(N,)``."""
    from sklearn.datasets import load_digits

    _check_split(split)
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(d.target)
    part = DIGIT_SPLITS[split]
    return images[part], labels[part]


SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


SAMPLE_SETS = ("fashion-mnist",)  # dataset-specific sample folders under zoo/samples/


def samples(modality: str, dataset: str | None = None) -> dict[str, tuple]:
    """The bundled demo inputs of a modality, by file stem: ``{"speech_0": (wav (C, T), sample_rate), ...}`` for
    ``"audio"``, ``{"astronaut": (image (3, H, W),), ...}`` for ``"image"``. `dataset` (one of `SAMPLE_SETS`):
    test images of that dataset instead (``"fashion-mnist"``: one of each class, 32 x 32 as the tokenizers see
    them)."""
    suffix = {"audio": ".wav", "image": ".png"}.get(modality)
    if suffix is None:
        raise ValueError(f"modality must be 'audio' or 'image', got {modality!r}")
    if dataset is not None and dataset not in SAMPLE_SETS:
        raise ValueError(f"dataset must be one of {SAMPLE_SETS} or None, got {dataset!r}")
    files = sorted((SAMPLES_DIR / dataset if dataset else SAMPLES_DIR).glob(f"*{suffix}"))
    if modality == "audio":
        return {f.stem: zio.load_audio(f) for f in files}
    return {f.stem: (zio.load_image(f),) for f in files}


FASHION_MNIST_DIR = Path(os.environ.get("TOKZOO_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_VALIDATION = 5000  # the last images of the official train file


def _read_idx(path: Path):
    """An IDX file (optionally gzipped) as a numpy array: magic (0, 0, dtype code, ndim), big-endian dims, data."""
    import gzip

    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for dimensions {dims} (truncated?)")
    return data.reshape(dims)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``: the official IDX files under `FASHION_MNIST_DIR`) as images
    ``(N, 1, 28, 28)`` float in [0, 1] and labels ``(N,)`` int64 (`FASHION_MNIST_CLASSES`).

    Splits: train = the official train file but its last 5,000 images (55,000), validation = those 5,000, test = the
    official test file (10,000)."""
    _check_split(split)
    stem = "t10k" if split == "test" else "train"
    paths = [FASHION_MNIST_DIR / f"{stem}-{kind}-idx{n}-ubyte.gz" for kind, n in (("images", 3), ("labels", 1))]
    paths = [p if p.exists() else p.with_suffix("") for p in paths]  # gzipped or not
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found ({', '.join(missing)}): install Debian's "
                                f"dataset-fashion-mnist, or point TOKZOO_FASHION_MNIST at the official IDX files")
    images = torch.from_numpy(_read_idx(paths[0]).copy()).float().div_(255)[:, None]
    labels = torch.from_numpy(_read_idx(paths[1]).astype("int64"))
    if split != "test":
        cut = len(images) - FASHION_MNIST_VALIDATION
        part = slice(0, cut) if split == "train" else slice(cut, None)
        images, labels = images[part], labels[part]
    return images, labels


def fashion_mnist_rgb32(images: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST ``(N, 1, 28, 28)`` -> the zoo's image form for its tokenizers: ``(N, 3, 32, 32)`` in [0, 1], the
    28 x 28 picture centred on a black 2-pixel border, grey repeated to RGB (`fashion_mnist_gray28` inverts it)."""
    return torch.nn.functional.pad(images, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def fashion_mnist_gray28(images: torch.Tensor) -> torch.Tensor:
    """Any generated ``(N, 3, H, W)`` in [0, 1] -> ``(N, 1, 28, 28)`` as the Fashion-MNIST classifier reads it:
    channels averaged, brought to 32 x 32 if needed (box average when larger, bilinear when smaller), the centre
    28 x 28 kept."""
    gray = images.float().mean(1, keepdim=True)
    if gray.shape[-2:] != (32, 32):
        mode = "area" if min(gray.shape[-2:]) >= 32 else "bilinear"
        gray = torch.nn.functional.interpolate(gray, size=(32, 32), mode=mode).clamp(0, 1)
    return gray[..., 2:30, 2:30]
