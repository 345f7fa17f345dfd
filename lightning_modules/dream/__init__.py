"""DREAM: a retriever trained through selected attention heads of a frozen causal LM (docs/dream.md).

``module.py`` holds the LightningModule (:class:`~lightning_modules.dream.module.DreamModule`); the loss is
in :mod:`lightning_modules.losses.dream`.
"""
