"""Rabtriever's objective: a JEPA state-prediction loss plus an auxiliary reverse KL on LM logits.

Rabtriever (2026) trains a predictor ``P(h_q, Z_d)`` so that the frozen LM's final norm and head applied to
its output reproduce the generative reranker (the teacher) that read ``[doc; query; prompt]``:

    L = ‖norm(P(h_q, Z_d)) − norm(h_T)‖² + λ · KL(p_S ‖ p_T)

(docs/rabtriever.md). The paper gives no equation numbers; the squared distance is
taken *after* the frozen final norm on both sides [ours] (the pre-norm residual stream is dominated by a
few huge dimensions), averaged over the hidden size so that λ = 1 balances the two terms [ours].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_state_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i ‖a_i − b_i‖² / H``: the JEPA distance between normalised predicted and teacher states.

    Args:
        predicted: ``[B, H]`` ``norm(P(h_q, Z_d))``, the student's state after the frozen final norm.
        target: ``[B, H]`` ``norm(h_T)``, the teacher's answer-position state after the same norm.

    Example: ``predicted = [[1, 0]]``, ``target = [[0, 0]]`` gives ``0.5``.
    """
    if predicted.shape != target.shape:
        raise ValueError(
            f"predicted {tuple(predicted.shape)} and target {tuple(target.shape)} states differ in shape"
        )
    return F.mse_loss(predicted.float(), target.float())


def reverse_kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i KL(p_S,i ‖ p_T,i) = mean_i Σ_v p_S(v) (log p_S(v) − log p_T(v))`` (Rabtriever's auxiliary loss).

    The *reverse* KL (student first) is mode-seeking: the student is penalised for putting mass where the
    teacher has little. Both distributions are softmaxes over the last dimension of the given logits,
    i.e. over the relevance tokens when only their logits are passed, or the whole vocabulary.

    Args:
        student_logits: ``[B, V]`` logits of the student (frozen LM head applied to the predicted state).
        teacher_logits: ``[B, V]`` logits of the teacher at the answer position (no gradient needed).

    Example: ``p_S = (1/2, 1/2)``, ``p_T = (3/4, 1/4)`` gives ``½ log(2/3) + ½ log 2 = ½ log(4/3)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ"
        )
    log_p_student = F.log_softmax(student_logits.float(), dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(dim=-1).mean()


def rabtriever_loss(
    predicted_states: torch.Tensor,
    teacher_states: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kl_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``L = normalized_state_mse + λ · reverse_kl_divergence``; returns ``{"loss", "state_mse", "reverse_kl"}``.

    Args:
        predicted_states / teacher_states: ``[B, H]`` states after the frozen final norm.
        student_logits / teacher_logits: ``[B, V]`` logits over the same tokens (relevance tokens or vocabulary).
        kl_weight: λ (default 1).
    """
    state_mse = normalized_state_mse(predicted_states, teacher_states)
    reverse_kl = reverse_kl_divergence(student_logits, teacher_logits)
    return {"loss": state_mse + kl_weight * reverse_kl, "state_mse": state_mse, "reverse_kl": reverse_kl}


def relevance_log_odds(relevance_logits: torch.Tensor) -> torch.Tensor:
    """Relevance score from ``[..., R]`` relevance-token logits: ``log p(r_0) − log Σ_{j>0} p(r_j)``.

    With two tokens (yes/no, A/B) this is the log-odds of LaHoRe's ``p(A) / (p(A) + p(B))``, a monotone
    function of it, so rankings agree; unlike the probability it does not saturate at 0 or 1.
    """
    if relevance_logits.shape[-1] < 2:
        raise ValueError(
            f"need at least two relevance tokens, got logits of shape {tuple(relevance_logits.shape)}"
        )
    logits = relevance_logits.float()
    return logits[..., 0] - torch.logsumexp(logits[..., 1:], dim=-1)


def relevance_classification_loss(relevance_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning of the teacher reranker: ``BCE(σ(log-odds), y)`` over (query, document) pairs.

    ``log-odds = log p(r_0) − log Σ_{j>0} p(r_j)`` (:func:`relevance_log_odds`), so with two answer tokens
    this is the cross-entropy of the answer token (``r_0`` for relevant pairs, ``r_1`` otherwise).

    Args:
        relevance_logits: ``[B, R]`` the LM's relevance-token logits at the answer position.
        labels: ``[B]`` bool, True for relevant pairs.

    Example: logits ``[[0, 0]]`` with label True give ``log 2``.
    """
    if labels.shape != relevance_logits.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match relevance logits {tuple(relevance_logits.shape)}"
        )
    return F.binary_cross_entropy_with_logits(relevance_log_odds(relevance_logits), labels.float())


def listwise_relevance_loss(relevance_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Listwise fine-tuning of the teacher reranker over each query's candidate group (InfoNCE-style).

    ``L = −(1/B) Σ_b log( Σ_{p∈P_b} e^{s_bp} / Σ_j e^{s_bj} )`` with ``s`` the relevance log-odds
    (:func:`relevance_log_odds`) of the ``G`` documents of query ``b`` and ``P_b`` its relevant ones (one
    positive: the cross-entropy of the positive's softmax share). Groups without a positive are skipped.

    Args:
        relevance_logits: ``[B, G, R]`` relevance-token logits of each (query, document) pair.
        labels: ``[B, G]`` bool, True for relevant pairs.

    Example: two documents whose log-odds are equal (logits ``[[[0, 0], [0, 0]]]``), the first relevant:
    ``L = log 2``.
    """
    if relevance_logits.ndim != 3 or labels.shape != relevance_logits.shape[:2]:
        raise ValueError(
            f"listwise_relevance_loss expects logits [B, G, R] and labels [B, G]; got "
            f"{tuple(relevance_logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.bool()
    has_positive = labels.any(dim=1)
    if not has_positive.any():
        raise ValueError("listwise_relevance_loss: no group has a relevant document")
    scores = relevance_log_odds(relevance_logits)
    positives = torch.logsumexp(scores.masked_fill(~labels, float("-inf")), dim=1)
    return (torch.logsumexp(scores, dim=1) - positives)[has_positive].mean()
