"""Rabtriever: a generative reranker teacher distilled into a frozen-LM student with a JEPA predictor
(docs/rabtriever.md). The LightningModule is :class:`~lightning_modules.rabtriever.module.RabtrieverModule`."""
