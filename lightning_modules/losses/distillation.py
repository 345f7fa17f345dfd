"""Distilling LLM rewards into a retriever (LLM-Embedder: Zhang et al., 2023, "Retrieve Anything To Augment
Large Language Models", §3.2; reference code FlagOpen/FlagEmbedding, research/llm_embedder).

Every function here is a pure tensor function. ``student_logits`` are similarities already divided by the
temperature once (``cos / τ``); nothing here divides them again.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

GradedOrder = Literal["teacher", "positive_first"]


def kl_distillation_loss(
    student_logits: torch.Tensor,
    teacher_scores: torch.Tensor,
    teacher_temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_b KL( softmax(r_b / τ_t) ‖ softmax(s_b) )`` over each query's own candidates.

    This is the paper's plain distillation objective (used by the reference for the chat and long-context
    tasks with ``τ_t = 0.1``); ``s = cos / τ`` is the student logit.

    Args:
        student_logits: ``[B, K]`` student logits of each query's K candidates.
        teacher_scores: ``[B, K]`` teacher rewards ``r`` of the same candidates.
        teacher_temperature: ``τ_t``.
        mask: optional ``[B, K]`` bool, False for padding candidates (left out of both softmaxes).

    Example: ``s = [[0, 0]]``, ``r = [[log 3, 0]]``, ``τ_t = 1``: the teacher distribution is ``(3/4, 1/4)``,
    the student's ``(1/2, 1/2)``, so the loss is ``3/4·log(3/2) + 1/4·log(1/2)``.
    """
    _check_same_shape(student_logits, teacher_scores, "student_logits", "teacher_scores")
    if teacher_temperature <= 0:
        raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
    teacher_logits = teacher_scores.float() / teacher_temperature
    student_logits = student_logits.float()
    if mask is not None:
        teacher_logits = teacher_logits.masked_fill(~mask, float("-inf"))
        student_logits = student_logits.masked_fill(~mask, float("-inf"))
    target = F.softmax(teacher_logits, dim=-1)
    log_target = F.log_softmax(teacher_logits, dim=-1)
    log_student = F.log_softmax(student_logits, dim=-1)
    terms = torch.where(target > 0, target * (log_target - log_student), torch.zeros_like(target))
    return terms.sum(dim=-1).mean()


def graded_order(
    teacher_scores: torch.Tensor,
    order: GradedOrder = "teacher",
    positive_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, K]`` permutation of each query's candidates for graded distillation: by descending teacher score
    (``order="teacher"``, the label-free variant: every candidate, the positive included, is sorted), or with
    ``positive_index[b]`` pinned first and the rest by descending teacher score (``"positive_first"``, the
    reference code's order). Ties keep the original candidate order (stable sort)."""
    if order not in ("teacher", "positive_first"):
        raise ValueError(f"order must be 'teacher' or 'positive_first', got '{order}'")
    keys = teacher_scores.float().clone()
    if order == "positive_first":
        if positive_index is None:
            raise ValueError(
                "order='positive_first' needs positive_index ([B] index of each query's positive)"
            )
        keys.scatter_(1, positive_index.view(-1, 1).long(), float("inf"))
    return torch.sort(keys, dim=-1, descending=True, stable=True).indices


def graded_distillation_loss(
    student_logits: torch.Tensor,
    teacher_scores: torch.Tensor,
    candidate_columns: torch.Tensor,
    weight_temperature: float = 1.0,
    order: GradedOrder = "teacher",
    positive_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Graded ("stable") distillation of LLM-Embedder (paper eq. 3; reference ``stable_distill``).

    With each query's candidates sorted into ``k_0, k_1, …`` (see :func:`graded_order`) and weights
    ``w = softmax(r / τ_w)``::

        L = (1/B) Σ_b Σ_i w_{b,i} · −log[ exp(s_{b,k_i}) / Σ_{k ∈ batch \\ {k_0 … k_{i−1}}} exp(s_{b,k}) ]

    The denominator shrinks: candidate ``k_i`` competes with every in-batch key (other queries' keys too)
    except the query's own keys ranked above it. This keeps the absolute reward (through ``w``) and the
    relative order (through the shrinking denominators).

    Args:
        student_logits: ``[B, D]`` logits ``cos / τ`` of each query against every key in the batch.
        teacher_scores: ``[B, K]`` rewards of each query's own K candidates.
        candidate_columns: ``[B, K]`` long, the column of ``student_logits`` holding each own candidate
            (``b·K + j`` for the usual contiguous groups).
        weight_temperature: ``τ_w`` of the weights ``softmax(r / τ_w)`` ([ours]: 1.0 for the NLL reward as in
            the reference code, 0.1 for the flatter rank-aware reward).
        order: ``"teacher"`` (label-free) or ``"positive_first"`` (the reference's order).
        positive_index: ``[B]`` index (within K) of each query's positive; needed for ``positive_first``.

    Example: one query, two own keys and no other keys, ``s = [0, 0]``, ``r = [0, 0]``, ``τ_w = 1``:
    ``w = (1/2, 1/2)``, the first term is ``−log(1/2)``, the second ``−log(1) = 0``: ``L = log(2)/2``.
    """
    _check_same_shape(teacher_scores, candidate_columns, "teacher_scores", "candidate_columns")
    if student_logits.dim() != 2 or student_logits.shape[0] != teacher_scores.shape[0]:
        raise ValueError(
            f"student_logits must be [B, D] with B = {teacher_scores.shape[0]}, got {tuple(student_logits.shape)}"
        )
    if weight_temperature <= 0:
        raise ValueError(f"weight_temperature must be > 0, got {weight_temperature}")
    permutation = graded_order(teacher_scores, order, positive_index)
    sorted_scores = teacher_scores.float().gather(1, permutation)
    sorted_columns = candidate_columns.long().gather(1, permutation)
    weights = F.softmax(sorted_scores / weight_temperature, dim=-1)
    logits = student_logits.float()
    removed = torch.zeros_like(logits, dtype=torch.bool)
    loss = logits.new_zeros(())
    for i in range(sorted_columns.shape[1]):
        target = sorted_columns[:, i]
        step_logits = logits.masked_fill(removed, float("-inf"))
        loss = loss + (weights[:, i] * F.cross_entropy(step_logits, target, reduction="none")).mean()
        removed = removed.scatter(1, target.view(-1, 1), True)
    return loss


def contiguous_candidate_columns(
    num_queries: int, group_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """``[B, K]`` columns ``b·K + j``: query b's candidates sit together in the gathered key list."""
    return torch.arange(num_queries * group_size, device=device).view(num_queries, group_size)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be [B, K]; got {tuple(a.shape)} and {tuple(b.shape)}"
        )
