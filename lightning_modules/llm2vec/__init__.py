"""The LLM2Vec recipe (BehnamGhader et al., 2024) that builds LLM2Vec-Gen's unsupervised teacher from the
backbone itself: bidirectional attention, MNTP, unsupervised SimCSE; or a released teacher's adapters
merged into its base (docs/llm2vec_gen.md, "The unsupervised teacher")."""
