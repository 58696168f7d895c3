"""TokenBridge's training recipe is the generators' one (`generators.trainer`: pre-tokenized codes, the official
masked per-channel cross-entropy with label dropout, AdamW, EMA); ``scripts/train_ar.py --name ...`` runs it, and
`model_from_checkpoint` reads its checkpoints for ``zoo eval --checkpoint``."""

from generators.trainer import model_from_checkpoint

__all__ = ["model_from_checkpoint"]
