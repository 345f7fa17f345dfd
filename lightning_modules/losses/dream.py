"""DREAM's loss (Tang & Yang, 2026, as read in docs/dream.md): the frozen LM's target NLL under an attention
bias built from the retriever's scores.

For a query ``q`` with candidates ``d_1 … d_k`` and raw cosines ``c_j = cos(E(q), E(d_j))``, every selected
head adds ``b_j = log(k · softmax_j(c_j / τ_attn))`` to the attention logits from the positions after the
documents to document ``j``'s key positions ([ours]: equal scores give ``b = 0``, the stock model), and

    L = −(1 / |Y|) Σ_{t ∈ Y} log p_LM(y_t | d_1 … d_k, prompt(q), y_<t ; b)

over every target token of the batch. Only the embedder ``E`` trains, through ``b``. The bias and the
NLL are pure tensor functions; :func:`dream_lm_loss` is the thin part that runs the frozen LM.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from lightning_modules.dream.inputs import IGNORE_INDEX, DreamInputs
from lightning_modules.dream.lm_passes import copy_cache, encode_documents_prefix, suffix_logits
from lightning_modules.losses.token_nll import token_nll

HeadMap = dict[int, tuple[int, ...]]


def candidate_cosines(
    query_embeddings: torch.Tensor, document_embeddings: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """Raw cosines ``c [B, k]`` between each query and its candidates.

    Inputs: ``query_embeddings [B, H]`` (the embedded ``embedder_inputs.queries``), ``document_embeddings
    [N, H]`` (the embedded ``embedder_inputs.documents``, each distinct text once) and ``candidates [B, k]``
    (``embedder_inputs.candidates``: the row of each query's candidates).

    Example: ``q = [[1, 0]]``, ``d = [[1, 0], [0, 1]]``, ``candidates = [[1, 0]]`` gives ``[[0, 1]]``.
    """
    return F.cosine_similarity(query_embeddings[:, None, :], document_embeddings[candidates], dim=-1)


def document_bias(cosines: torch.Tensor, tau_attn: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``b_j = log(k · softmax_j(c_j / τ_attn))`` per query (docs/dream.md, the bias equation).

    Args:
        cosines: ``[B, k]`` raw cosine similarities (no temperature applied yet).
        tau_attn: the attention temperature ``τ_attn`` (> 0).
        valid: optional ``[B, k]`` bool; invalid candidates (padding) get bias 0 and are left out of the
            softmax, and ``k`` counts the valid candidates of each row.

    Returns:
        ``[B, k]`` biases; a row of equal cosines gives zeros. Differentiable in ``cosines``.

    Example:
        >>> document_bias(torch.tensor([[0.5, 0.5]]), 0.1)
        tensor([[0., 0.]])
    """
    if cosines.ndim != 2:
        raise ValueError(f"cosines must be [B, k], got shape {tuple(cosines.shape)}")
    if tau_attn <= 0:
        raise ValueError(f"tau_attn must be > 0, got {tau_attn}")
    logits = cosines / tau_attn
    if valid is None:
        return torch.log_softmax(logits, dim=-1) + math.log(cosines.shape[-1])
    valid = valid.to(torch.bool)
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(cosines.dtype)
    log_probs = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=-1)
    return torch.where(valid, log_probs + count.log(), torch.zeros_like(log_probs))


def key_position_bias(bias: torch.Tensor, document_index: torch.Tensor) -> torch.Tensor:
    """Spread per-document biases over key positions.

    Args:
        bias: ``[B, k]`` per-document bias (from :func:`document_bias`).
        document_index: ``[B, T]`` long, the candidate index ``j`` of each position's document, or ``-1``
            for positions outside every document (padding, prompt, target).

    Returns:
        ``[B, T]``: ``bias[b, j]`` on document ``j``'s key block, exactly 0 elsewhere.
    """
    if bias.shape[0] != document_index.shape[0]:
        raise ValueError(
            f"batch sizes differ: bias {tuple(bias.shape)} vs document_index {tuple(document_index.shape)}"
        )
    inside = document_index >= 0
    gathered = torch.gather(bias, 1, document_index.clamp(min=0))
    return torch.where(inside, gathered, torch.zeros_like(gathered))


def target_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token NLL ``[B, S]`` of ``labels`` under ``logits [B, S, V]`` (0 where ``labels == -100``)."""
    return token_nll(logits, labels, labels != IGNORE_INDEX)


def mean_target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all target tokens of the batch (the DREAM loss: target tokens only)."""
    count = (labels != IGNORE_INDEX).sum()
    if count == 0:
        raise ValueError("the batch has no target token to score")
    return target_token_nll(logits, labels).sum() / count


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean target NLL of each row ``[B]``."""
    count = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return target_token_nll(logits, labels).sum(dim=1) / count


class DreamLMLoss(NamedTuple):
    """:func:`dream_lm_loss`'s result: the loss, and the no-gradient NLL without bias when asked for."""

    loss: torch.Tensor
    unbiased_nll: torch.Tensor | None = None


def dream_lm_loss(
    model: PreTrainedModel,
    inputs: DreamInputs,
    key_bias: torch.Tensor,
    heads: HeadMap,
    reuse_document_cache: bool = True,
    block_diagonal: bool = False,
    with_unbiased_nll: bool = False,
) -> DreamLMLoss:
    """The DREAM loss ``L`` (module docstring): the frozen LM's mean target NLL under ``key_bias``;
    differentiable in ``key_bias``.

    Inputs:

    ====================  =====================  ===================================================
    batch field           argument               shape
    ====================  =====================  ===================================================
    ``lm_inputs``         ``inputs``             :class:`DreamInputs` ``[B, P + S]``, labels ``[B, S]``
    (from the cosines)    ``key_bias``           ``[B, P]``: :func:`key_position_bias` of the bias
    ====================  =====================  ===================================================

    ``heads`` maps layers to the biased heads; ``reuse_document_cache`` runs the document prefix once
    without gradient (exact: the bias never touches the prefix's queries); ``with_unbiased_nll`` also
    returns the same NLL with no bias (the stock LM, no gradient), sharing the prefix pass.

    Example: with ``key_bias = 0`` the loss is the stock LM's target NLL (``loss == unbiased_nll``); a
    bias towards the document holding the answer lowers it when the selected heads read that document.
    """
    cache = encode_documents_prefix(model, inputs, block_diagonal) if reuse_document_cache else None
    unbiased = None
    if with_unbiased_nll:
        with torch.no_grad():
            unbiased_cache = copy_cache(cache) if cache is not None else None
            zero = torch.zeros_like(key_bias)
            logits = suffix_logits(model, inputs, zero, heads, unbiased_cache, block_diagonal)
            unbiased = mean_target_nll(logits, inputs.labels)
    logits = suffix_logits(model, inputs, key_bias, heads, cache, block_diagonal)
    return DreamLMLoss(mean_target_nll(logits, inputs.labels), unbiased)
