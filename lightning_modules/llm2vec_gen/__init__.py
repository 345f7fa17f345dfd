"""LLM2Vec-Gen: special tokens that embed the frozen LM's own response, and decode back to text
(docs/llm2vec_gen.md). The LightningModule is :class:`~lightning_modules.llm2vec_gen.module.LLM2VecGenModule`."""
