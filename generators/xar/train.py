"""xAR's training recipe is the generators' one (`generators.trainer`: the train split encoded once by the paired
autoencoder into continuous latents, the official noisy-context flow-matching loss with label dropout, AdamW, EMA);
``scripts/train_ar.py --name xar-tiny-fashion`` runs it, and `model_from_checkpoint` reads its checkpoints for
``zoo eval --checkpoint``."""

from generators.trainer import model_from_checkpoint

__all__ = ["model_from_checkpoint"]
