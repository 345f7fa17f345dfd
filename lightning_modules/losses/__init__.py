"""Losses as pure tensor functions: embeddings/scores in, scalar out. Unit-tested against hand-computed values."""

from lightning_modules.losses.contrastive import info_nce_loss, other_positive_mask

__all__ = ["info_nce_loss", "other_positive_mask"]
