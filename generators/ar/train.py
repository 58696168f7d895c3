"""The GPT's training recipe: `generators.trainer` (shared by every generator) with the GPT's check of the codes
(`check_fits` = `ARGenerator.check_training_codes`). ``scripts/train_ar.py`` is the command line."""

from __future__ import annotations

from generators.trainer import (DATASETS, EMA, GeneratorTrainConfig, GeneratorTrained, Pretokenized, cache_path,
                                encode_items, export, fashion_mnist_images, model_from_checkpoint, param_groups,
                                pretokenize, read_cache_meta, spoken_digit_clips, train)

from .model import ARGenerator

ARTrainConfig = GeneratorTrainConfig
ARTrained = GeneratorTrained
check_fits = ARGenerator.check_training_codes

__all__ = ["ARTrainConfig", "ARTrained", "DATASETS", "EMA", "Pretokenized", "cache_path", "check_fits",
           "encode_items", "export", "fashion_mnist_images", "model_from_checkpoint", "param_groups", "pretokenize",
           "read_cache_meta", "spoken_digit_clips", "train"]
