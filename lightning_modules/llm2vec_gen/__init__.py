"""LLM2Vec-Gen: special tokens that embed the frozen LM's own response, and decode back to text."""

from lightning_modules.llm2vec_gen.generation import GenerationSettings, Response, generate_responses
from lightning_modules.llm2vec_gen.module import LLM2VecGen

__all__ = ["GenerationSettings", "LLM2VecGen", "Response", "generate_responses"]
