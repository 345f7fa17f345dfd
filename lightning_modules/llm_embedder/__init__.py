"""LLM-Embedder: an embedder distilled from a frozen LM's rewards, per task (docs/llm_embedder.md). The
LightningModule is :class:`~lightning_modules.llm_embedder.module.LLMEmbedderModule`."""
