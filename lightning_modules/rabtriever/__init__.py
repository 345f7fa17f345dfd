"""Rabtriever (issue 6): a generative reranker teacher distilled into a frozen-LM student with a JEPA predictor."""

from lightning_modules.rabtriever.module import Rabtriever
from lightning_modules.rabtriever.passes import RelevanceLM
from lightning_modules.rabtriever.predictor import CrossAttentionPredictor, MLPPredictor, build_predictor
from lightning_modules.rabtriever.prompt import RelevancePrompt
from lightning_modules.rabtriever.reranker import rerank, rerank_top_k

__all__ = [
    "CrossAttentionPredictor",
    "MLPPredictor",
    "Rabtriever",
    "RelevanceLM",
    "RelevancePrompt",
    "build_predictor",
    "rerank",
    "rerank_top_k",
]
