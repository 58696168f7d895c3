"""The audio generation benchmark, in one place: how every audio generator of the zoo is scored on spoken digits.

* The data is `zoo.data.spoken_digits`: the words "zero".."nine" spoken by espeak-ng, every clip exactly 1.0 s at
  24 kHz with the word starting 0.05 s in, split by voice (train 25 voice names, validation 3 and test 4 other
  voices). The judge is `spoken-digit-classifier`, trained on the train voices only; its accuracy on the real test
  clips is the reference.
* Every clip scored, generated or real, is read as the judge reads it (`fit_clips`): mono (channels averaged), at
  the judge's 24 kHz (other rates resampled), cut or zero-padded **at its end** to 1.0 s. Nothing is trimmed or
  re-aligned: a generator has to place the word as the data does (the judge saw shifts of -0.04..+0.12 s in
  training).
* For a class-conditional generator: `per_class` samples of each of the 10 digits (sample k of a digit uses seed
  k), at the generator's chosen settings:
  - **accuracy** = the share the judge assigns to the conditioning digit (compare with its accuracy on real `split`
    clips);
  - **Fréchet distance** = between the judge's penultimate features of the samples and of the real `split` clips
    (320 test / 240 validation), as FID does with Inception features;
  - **memorisation**: for every clip, its nearest-neighbour (Euclidean, judge features) distance to the 2,000 train
    clips. Reported: the median NN distance of the samples beside that of the real `split` clips (a voice never
    trained on: what "new" looks like), and **near-copies** = the share of samples closer to some train clip than
    the 5th percentile of the real `split` clips' NN distances (about 5 % for real held-out clips by construction;
    100 % for train clips themselves, whose distance is 0). Decoded audio carries its codec's artefacts, which put
    it far from every real clip whether or not it copies one; so for clips decoded by a tokenizer the same two
    numbers are also computed against that tokenizer's **reconstructions of the train clips** (what memorised
    tokens decode to), with the threshold from its reconstructions of the real `split` clips (5 % by construction
    for the reconstruction row).
* Reference rows: the real `split` clips; real train clips (every 4th: 500 clips over all train voices) against the
  `split`; the paired tokenizer's reconstructions of the `split` clips (what a generator over its tokens can reach
  at best); and the same generator without CFG.
* Prompted continuation (`continuation_row`): every real `split` clip's first 0.2 s of tokens under the paired
  tokenizer, continued by the generator conditioned on the clip's own digit, scored like samples.
* ``"test"`` is for reporting once; ``"validation"`` for choosing settings (cfg, temperature, ...).
* Speed: clips/s at batch 1 and 64 (generation and decoding; CPU unless the model is elsewhere).

A generator is used through the `zoo.Generator` contract only: ``num_classes`` (must be 10), ``name``,
``paired_model()`` (its ``sample_rate``, and its ``name`` for the reconstruction row) and
``sample(labels, seed=[one seed per item], **settings)``, which returns audio ``(B, T)``, ``(B, C, T)`` or a list of
``(T,)`` / ``(C, T)`` clips at the paired tokenizer's sample rate.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import zoo
from zoo import data
from zoo.metrics import frechet_distance

from . import protocol

CLASSIFIER = "spoken-digit-classifier"
NEAR_COPY_PERCENTILE = 5.0  # of the real split clips' NN distances to train
TRAIN_REFERENCE_STEP = 4    # the real-train reference row: every 4th train clip
COLUMNS = ["rows", "settings", "clips", "accuracy %", "Fréchet distance", "median NN distance to train",
           "near-copies %", "median NN distance to train reconstructions", "near-copies of reconstructions %",
           "clips/s (batch 1 / 64)"]


@functools.lru_cache(maxsize=1)
def classifier():
    return zoo.load(CLASSIFIER)


def fit_clips(clips, sample_rate: int = data.SPEECH_SAMPLE_RATE) -> torch.Tensor:
    """Audio as the judge reads it: ``(B, 24000)`` float, from ``(B, T)``, ``(B, C, T)`` or a list of ``(T,)`` /
    ``(C, T)`` clips at `sample_rate` (channels averaged, resampled, cut or zero-padded at the end)."""
    if isinstance(clips, torch.Tensor):
        clips = clips.detach().cpu()
    else:
        clips = [torch.as_tensor(c).detach().cpu().float() for c in clips]
    return classifier().fit_length(clips, sample_rate).cpu()


@torch.inference_mode()
def features_and_predictions(clips, sample_rate: int = data.SPEECH_SAMPLE_RATE,
                             batch_size: int = 250) -> tuple[np.ndarray, torch.Tensor]:
    """The judge's penultimate features ``(N, D)`` (float64) and digit ids ``(N,)`` of `clips` (see `fit_clips`)."""
    clf = classifier().eval()
    clips = fit_clips(clips, sample_rate)
    feats, preds = [], []
    for i in range(0, len(clips), batch_size):
        f = clf.features(clips[i: i + batch_size])
        feats.append(f.double().cpu())
        preds.append(clf.head(f).argmax(-1).cpu())
    if not feats:
        return np.zeros((0, clf.config.features)), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats).numpy(), torch.cat(preds)


@functools.lru_cache(maxsize=2)
def real(split: str = "test") -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A split's clips ``(N, 24000)``, labels ``(N,)`` and judge features ``(N, D)``."""
    clips, labels = data.spoken_digits(split)
    return clips, labels, features_and_predictions(clips)[0]


def nn_distances(feats: np.ndarray) -> np.ndarray:
    """Euclidean distance ``(N,)`` of every feature row to its nearest train clip (judge features)."""
    train = real("train")[2]
    if len(feats) == 0:
        return np.zeros(0)
    a, b = torch.from_numpy(feats), torch.from_numpy(train)
    return torch.cat([torch.cdist(a[i: i + 1000], b).min(1).values for i in range(0, len(a), 1000)]).numpy()


@functools.lru_cache(maxsize=2)
def near_copy_threshold(split: str = "test") -> tuple[float, float]:
    """``(threshold, median)`` of the real `split` clips' NN distances to train: their `NEAR_COPY_PERCENTILE`-th
    percentile (closer than this = a near-copy) and their median."""
    d = nn_distances(real(split)[2])
    return float(np.percentile(d, NEAR_COPY_PERCENTILE)), float(np.median(d))


def reconstruct(tokenizer, clips: torch.Tensor, batch_size: int = 40) -> torch.Tensor:
    """The audio tokenizer's round trip (encode, decode) of clips ``(N, 24000)`` at 24 kHz, in batches."""
    return torch.cat([tokenizer.reconstruct(clips[i: i + batch_size, None].to(tokenizer.device),
                                            sample_rate=data.SPEECH_SAMPLE_RATE).cpu()
                      for i in range(0, len(clips), batch_size)])


@functools.lru_cache(maxsize=4)
def reconstructed_features(tokenizer, split: str) -> np.ndarray:
    """Judge features ``(N, D)`` of the tokenizer's reconstructions of the real `split` clips (cached per
    tokenizer object)."""
    return features_and_predictions(reconstruct(tokenizer, real(split)[0]))[0]


def codec_nn_distances(feats: np.ndarray, tokenizer) -> np.ndarray:
    """Distance ``(N,)`` of every feature row to its nearest reconstruction of a train clip by `tokenizer`."""
    if len(feats) == 0:
        return np.zeros(0)
    a, b = torch.from_numpy(feats), torch.from_numpy(reconstructed_features(tokenizer, "train"))
    return torch.cat([torch.cdist(a[i: i + 1000], b).min(1).values for i in range(0, len(a), 1000)]).numpy()


@functools.lru_cache(maxsize=4)
def codec_near_copy_threshold(tokenizer, split: str = "test") -> float:
    """The `NEAR_COPY_PERCENTILE`-th percentile of the NN distances of the tokenizer's reconstructions of the real
    `split` clips to its reconstructions of the train clips: decoded audio nearer than this to a reconstructed train
    clip is a near-copy of it (memorised tokens decode to what the tokenizer makes of a train clip)."""
    d = codec_nn_distances(reconstructed_features(tokenizer, split), tokenizer)
    return float(np.percentile(d, NEAR_COPY_PERCENTILE))


def score(clips, labels, split: str = "test", sample_rate: int = data.SPEECH_SAMPLE_RATE,
          tokenizer=None) -> dict[str, float]:
    """Score clips (see `fit_clips`) conditioned on (or labelled with) `labels` ``(N,)``: accuracy (%) of the
    judge against `labels`, Fréchet distance to the real `split`, the clips' median NN distance to the train clips
    (``nn_median``; the real `split` clips' own: ``real_nn_median``) and the share (%) of near-copies. With the
    `tokenizer` the clips were decoded by: the same against its reconstructions of the train clips
    (``codec_nn_median``, ``codec_near_copies``), which memorised tokens would reproduce."""
    feats, preds = features_and_predictions(clips, sample_rate)
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    if len(labels) != len(preds) or len(preds) < 2:
        raise ValueError(f"score: {len(preds)} clips for {len(labels)} labels (need the same number, at least 2)")
    d = nn_distances(feats)
    threshold, real_median = near_copy_threshold(split)
    out = {"accuracy": round(100 * (preds == labels).float().mean().item(), 2),
           "frechet": round(max(0.0, frechet_distance(feats, real(split)[2])), 3), "clips": len(preds),
           "nn_median": round(float(np.median(d)), 4), "real_nn_median": round(real_median, 4),
           "near_copies": round(100 * float((d < threshold).mean()), 2)}
    if tokenizer is not None:
        codec = codec_nn_distances(feats, tokenizer)
        out["codec_nn_median"] = round(float(np.median(codec)), 4)
        threshold = codec_near_copy_threshold(tokenizer, split)
        out["codec_near_copies"] = round(100 * float((codec < threshold).mean()), 2)
    return out


def _row(name: str, settings: str, s: dict, speed: str = "-") -> list:
    return [name, settings, s["clips"], s["accuracy"], s["frechet"], s["nn_median"], s["near_copies"],
            s.get("codec_nn_median", "-"), s.get("codec_near_copies", "-"), speed]


def reconstruction_row(tokenizer, split: str = "test") -> list:
    """The audio tokenizer's reconstructions (encode, decode) of the real `split` clips, scored."""
    clips, labels, _ = real(split)
    return _row(f"{tokenizer.name} reconstructions of the {split} clips", "-",
                score(reconstruct(tokenizer, clips), labels, split, tokenizer=tokenizer))


def reference_rows(split: str = "test") -> list[list]:
    """The real `split` clips themselves, and real train clips (every `TRAIN_REFERENCE_STEP`-th), scored against
    the real `split`."""
    clips, labels, _ = real(split)
    train, train_labels, _ = real("train")
    step = TRAIN_REFERENCE_STEP
    return [_row(f"real {split} clips", "-", score(clips, labels, split)),
            _row(f"real train clips (every {step}th: {len(train[::step])})", "-",
                 score(train[::step], train_labels[::step], split))]


def _check_generator(gen) -> None:
    if getattr(gen, "num_classes", None) != len(data.SPOKEN_DIGITS):
        raise ValueError(f"{gen.name}: the spoken-digit protocol needs a generator conditioned on "
                         f"{len(data.SPOKEN_DIGITS)} classes ({', '.join(data.SPOKEN_DIGITS)}), it has "
                         f"num_classes={getattr(gen, 'num_classes', None)}")


def sample_rate_of(gen) -> int:
    """The rate of the generator's audio: its paired tokenizer's."""
    return int(getattr(gen.paired_model(), "sample_rate", None) or data.SPEECH_SAMPLE_RATE)


def sample_all(gen, per_class: int, batch_size: int = 100, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` samples of every digit (sample k of a digit uses seed k), in batches: clips ``(N, 24000)`` as the
    judge reads them (`fit_clips`) and their conditioning labels ``(N,)``."""
    _check_generator(gen)
    rate = sample_rate_of(gen)
    return protocol.sample_per_class(gen, per_class, batch_size, lambda clips: fit_clips(clips, rate), **settings)


def generator_rows(gen, per_class: int = 100, settings: dict | None = None, speed: bool = True,
                   split: str = "test", without_cfg: bool = True) -> list[list]:
    """The generator's rows: samples at `settings` (its defaults when None), and (`without_cfg`) the same with
    ``cfg_scale=1.0``."""
    tok = gen.paired_model()
    return protocol.rows_of_generator(
        gen, sample=sample_all, score=lambda clips, labels: score(clips, labels, split, tokenizer=tok), row=_row,
        per_class=per_class, settings=settings, speed=speed, without_cfg=without_cfg)


PROMPT_SECONDS = 0.2  # prompted continuation: the first 0.2 s of a real clip's tokens


def continuation_row(gen, split: str = "test", prompt_seconds: float = PROMPT_SECONDS, settings: dict | None = None,
                     batch_size: int = 100) -> list:
    """Prompted continuation: every real `split` clip is encoded by the paired tokenizer, its first `prompt_seconds`
    of tokens (reading order) start a sample conditioned on its own digit (seed = its index), and the result is
    scored like any sample (the share the judge assigns to that digit, etc.)."""
    _check_generator(gen)
    tok = gen.paired_model()
    clips, labels, _ = real(split)
    rate = sample_rate_of(gen)
    out = []
    for i in range(0, len(clips), batch_size):
        batch = clips[i: i + batch_size, None].to(tok.device)
        seq = tok.to_sequence(tok.encode(batch, sample_rate=data.SPEECH_SAMPLE_RATE))       # (B, L, codebooks)
        count = max(1, round(prompt_seconds / data.SPOKEN_DIGIT_SECONDS * seq.shape[1]))
        prompt = seq[:, :count, 0] if seq.shape[-1] == 1 else seq[:, :count]
        seeds = list(range(i, i + len(batch)))
        out.append(fit_clips(gen.sample(labels[i: i + batch_size], prompt=prompt, seed=seeds, **(settings or {})),
                             rate))
    shown = protocol.settings_text(settings or {})
    return _row(f"{gen.name}, continuing the first {prompt_seconds:g} s ({count} tokens) of each {split} clip",
                shown, score(torch.cat(out), labels, split, tokenizer=tok))


def generation_table(generators: list, per_class: int = 100, settings: dict[str, dict] | None = None,
                     split: str = "test", speed: bool = True) -> dict:
    """The one audio table: reference rows, the paired tokenizers' reconstructions, then every generator; Fréchet
    and NN statistics against the real `split` (``"test"`` for reporting, ``"validation"`` for choosing settings)."""
    rows = reference_rows(split) + [reconstruction_row(tok, split) for tok in protocol.paired_models(generators)]
    for gen in generators:
        rows += generator_rows(gen, per_class, (settings or {}).get(gen.name), speed=speed, split=split)
        rows.append(continuation_row(gen, split, settings=(settings or {}).get(gen.name)))
    threshold, real_median = near_copy_threshold(split)
    description = (
        f"Spoken digits (zoo.data.spoken_digits, espeak-ng; 1.0 s clips at 24 kHz), scored by {CLASSIFIER} "
        f"(trained on the train voices): accuracy = share of clips the classifier assigns to their (conditioning) "
        f"digit; Fréchet distance between its penultimate features of the clips and of the {len(real(split)[0])} real "
        f"{split} clips; median NN distance = median over clips of the Euclidean feature distance to the nearest of "
        f"the {len(real('train')[0])} train clips (real {split} clips: {real_median:.4f}); near-copies = share of "
        f"clips nearer a train clip than {threshold:.4f}, the {NEAR_COPY_PERCENTILE:g}th percentile of the real "
        f"{split} clips' NN distances. Generators: {per_class} samples per digit, sample k of a digit with seed k. "
        f"The last two statistics again against the paired tokenizer's reconstructions of the train clips (what "
        f"memorised tokens decode to; threshold: the 5th percentile for its reconstructions of the {split} clips). "
        f"clips/s: CPU, batch 1 / 64 (generation and decoding). Continuation: each real {split} clip's first "
        f"{PROMPT_SECONDS:g} s of tokens continued under its own digit."
    )
    return {"description": description, "columns": COLUMNS, "rows": rows}
