"""LLM-Embedder's loss on one single-task batch (Zhang et al., 2023, "Retrieve Anything To Augment Large
Language Models", §3.2-3.3; reference code FlagOpen/FlagEmbedding, research/llm_embedder):

    L = w_distill · L_distill + w_contrastive · L_InfoNCE      (both weights > 0)
    L = the one active term, unweighted                       (otherwise, as the reference code does)

with student logits ``s = cos(q, k) / τ`` over every key of the (gathered) batch. ``L_distill`` is the graded
(:func:`~.distillation.graded_distillation_loss`) or KL (:func:`~.distillation.kl_distillation_loss`)
distillation of the teacher's rewards, per the task's settings; ``L_InfoNCE`` (:func:`~.contrastive.info_nce_loss`)
takes the labelled positive, else the teacher's favourite, and leaves out of each query's denominator
the keys equal to its positive (a tool shared by queries) and its other labelled positives.
"""

from __future__ import annotations

import torch

from lightning_modules.llm_embedder.templates import TaskSettings
from lightning_modules.losses.contrastive import info_nce_loss, similarity_logits
from lightning_modules.losses.distillation import (
    GradedOrder,
    contiguous_candidate_columns,
    graded_distillation_loss,
    kl_distillation_loss,
)


def positive_index(
    labels: torch.Tensor | None, teacher_scores: torch.Tensor | None, task: str
) -> torch.Tensor:
    """``[B]`` each query's positive within its group: the first labelled one, else the teacher's favourite."""
    if labels is not None:
        return labels.float().argmax(dim=1)
    if teacher_scores is not None:
        return teacher_scores.argmax(dim=1)
    raise ValueError(f"task '{task}' trains contrastively but its data has no labels and no teacher scores")


def same_or_positive_keys(
    key_codes: torch.Tensor, labels: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """``[B, B·G]`` bool: keys whose code equals the query's target key's (the same key shared by several
    queries) or that are labelled positives of the query.

    Example: codes ``[a, b, a, c]``, targets ``[0, 2]``, no labels: both rows are ``[T, F, T, F]``.
    """
    exclude = key_codes.view(1, -1) == key_codes[targets].view(-1, 1)
    if labels is not None:
        group = labels.shape[1]
        own = torch.zeros_like(exclude)
        rows = torch.arange(labels.shape[0], device=labels.device)
        own[rows.repeat_interleave(group), torch.arange(labels.numel(), device=labels.device)] = (
            labels.flatten()
        )
        exclude = exclude | own
    return exclude


def llm_embedder_loss(
    query_embeddings: torch.Tensor,
    key_embeddings: torch.Tensor,
    key_codes: torch.Tensor,
    group_size: int,
    settings: TaskSettings,
    temperature: float,
    weight_temperature: float = 1.0,
    graded_order: GradedOrder = "teacher",
    teacher_scores: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    task: str = "",
) -> dict[str, torch.Tensor]:
    """``{"loss", "distill"?, "contrastive"?}`` of one single-task batch (module docstring).

    Inputs:

    ======================  ====================  =======================================================
    batch field             argument              shape
    ======================  ====================  =======================================================
    embedded ``queries``    ``query_embeddings``  ``[B, H]`` (gathered across ranks)
    embedded documents      ``key_embeddings``    ``[B·G, H]``, each query's group together
    ``document_codes``      ``key_codes``         ``[B·G]`` int64 (flattened)
    ``group_size``          ``group_size``        ``G``
    (teacher lookup)        ``teacher_scores``    ``[B, G]`` rewards, or None for a task without teacher
    ``gold``                ``labels``            ``[B, G]`` bool, or None for label-free data
    ``task``                ``settings``          the task's :class:`TaskSettings` (weights, distillation)
    ======================  ====================  =======================================================

    Example: one query, two keys, cosines ``[1, 0]``, τ = 1, a contrastive-only task whose label marks
    the first key: ``{"loss": log(1 + e^{-1}), "contrastive": log(1 + e^{-1})}``.
    """
    logits = similarity_logits(query_embeddings, key_embeddings, temperature)  # fp32 under bf16 autocast
    columns = contiguous_candidate_columns(query_embeddings.shape[0], group_size, query_embeddings.device)
    positive = positive_index(labels, teacher_scores, task)
    losses: dict[str, torch.Tensor] = {}
    if teacher_scores is not None:
        if settings.distillation == "graded":
            losses["distill"] = graded_distillation_loss(
                logits, teacher_scores, columns, weight_temperature, graded_order, positive
            )
        else:
            losses["distill"] = kl_distillation_loss(
                logits.gather(1, columns), teacher_scores, settings.teacher_temperature
            )
    if settings.contrastive_weight > 0:
        targets = columns.gather(1, positive.view(-1, 1)).squeeze(1)
        exclude = same_or_positive_keys(key_codes, labels, targets)
        losses["contrastive"] = info_nce_loss(query_embeddings, key_embeddings, targets, exclude, temperature)
    if len(losses) == 2:
        total = (
            settings.distill_weight * losses["distill"] + settings.contrastive_weight * losses["contrastive"]
        )
    else:
        total = next(iter(losses.values()))
    return {"loss": total, **losses}
