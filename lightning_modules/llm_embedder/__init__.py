"""LLM-Embedder: teacher rewards from a frozen LM, graded/KL distillation, multi-task instructions."""

from lightning_modules.llm_embedder.module import LLMEmbedder
from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer

__all__ = ["LLMEmbedder", "ScoringItem", "TeacherScorer"]
