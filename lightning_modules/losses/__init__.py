"""Losses as pure tensor functions, one module per method or loss family, each unit-tested against
hand-computed values:

- :mod:`.token_nll`: the masked token NLL every language-model loss is built from;
- :mod:`.contrastive`: InfoNCE and MIL-NCE (the contrastive baseline; LLM-Embedder's contrastive part);
- :mod:`.dream`: DREAM's attention bias and target NLL;
- :mod:`.distillation` and :mod:`.llm_embedder`: LLM-Embedder's graded / KL distillation and its per-task mix;
- :mod:`.llm2vec_gen`: LLM2Vec-Gen's reconstruction and alignment; :mod:`.llm2vec`: the MNTP and SimCSE
  stages of its unsupervised LLM2Vec teacher;
- :mod:`.rabtriever`: Rabtriever's state MSE and reverse KL, and the reranker's relevance losses.
"""

from lightning_modules.losses.contrastive import (
    contrastive_loss,
    info_nce_loss,
    multi_positive_info_nce_loss,
    other_positive_mask,
)
from lightning_modules.losses.distillation import graded_distillation_loss, kl_distillation_loss
from lightning_modules.losses.dream import (
    candidate_cosines,
    document_bias,
    dream_lm_loss,
    key_position_bias,
    mean_target_nll,
)
from lightning_modules.losses.llm2vec import masked_next_token_loss, simcse_loss
from lightning_modules.losses.llm2vec_gen import (
    alignment_loss,
    chunked_reconstruction_loss,
    llm2vec_gen_loss,
    reconstruction_loss,
)
from lightning_modules.losses.llm_embedder import llm_embedder_loss
from lightning_modules.losses.rabtriever import (
    listwise_relevance_loss,
    rabtriever_loss,
    relevance_classification_loss,
    reverse_kl_divergence,
)
from lightning_modules.losses.token_nll import token_nll

__all__ = [
    "alignment_loss",
    "candidate_cosines",
    "contrastive_loss",
    "document_bias",
    "dream_lm_loss",
    "graded_distillation_loss",
    "info_nce_loss",
    "key_position_bias",
    "kl_distillation_loss",
    "listwise_relevance_loss",
    "llm2vec_gen_loss",
    "chunked_reconstruction_loss",
    "llm_embedder_loss",
    "masked_next_token_loss",
    "mean_target_nll",
    "multi_positive_info_nce_loss",
    "other_positive_mask",
    "rabtriever_loss",
    "reconstruction_loss",
    "relevance_classification_loss",
    "reverse_kl_divergence",
    "simcse_loss",
    "token_nll",
]
