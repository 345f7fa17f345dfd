"""DREAM: a retriever trained through selected attention heads of a frozen causal LM."""

from lightning_modules.dream.attention import DREAM_FLASH, DREAM_SDPA, DreamBias, register_dream_attention
from lightning_modules.dream.bias import document_bias, key_position_bias
from lightning_modules.dream.heads import middle_third_heads, rank_heads_by_intervention, top_heads
from lightning_modules.dream.inputs import DreamInputs, build_dream_inputs
from lightning_modules.dream.lm_loss import dream_lm_loss
from lightning_modules.dream.module import DreamRetriever

__all__ = [
    "DREAM_FLASH",
    "DREAM_SDPA",
    "DreamBias",
    "DreamInputs",
    "DreamRetriever",
    "build_dream_inputs",
    "document_bias",
    "dream_lm_loss",
    "key_position_bias",
    "middle_third_heads",
    "rank_heads_by_intervention",
    "register_dream_attention",
    "top_heads",
]
