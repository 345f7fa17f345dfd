"""InfoNCE over in-batch and hard negatives (van den Oord et al., 2018; Karpukhin et al., 2020, eq. 2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def similarity_logits(
    query_embeddings: torch.Tensor, document_embeddings: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``s_ij = q_i · d_j / τ`` ``[Q, D]`` in float32 (float64 inputs stay float64), autocast off.

    Under ``bf16-mixed`` autocast a plain ``q @ d.T`` is computed in bf16: cosines are rounded to 2⁻⁸
    (8 mantissa bits), which at τ = 0.01 is a ±0.2 error on every logit. The inputs are upcast and the
    matmul runs in fp32 whatever the surrounding autocast says; gradients flow as usual.

    Example: ``q = [[1, 0]]``, ``d = [[0.6, 0.8]]``, τ = 0.5 gives ``[[1.2]]``.
    """
    dtype = torch.promote_types(
        torch.promote_types(query_embeddings.dtype, document_embeddings.dtype), torch.float32
    )
    with torch.autocast(device_type=query_embeddings.device.type, enabled=False):
        return query_embeddings.to(dtype) @ document_embeddings.to(dtype).T / temperature


def info_nce_loss(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """``L = −mean_i log( exp(s(q_i, d_{t_i})) / Σ_{j ∉ X_i} exp(s(q_i, d_j)) )`` with ``s = q·d / τ``
    (fp32 logits: :func:`similarity_logits`).

    Args:
        query_embeddings: ``[Q, H]`` (L2-normalised for cosine similarity).
        document_embeddings: ``[D, H]``: every in-batch document (positives and hard negatives).
        targets: ``[Q]`` index of each query's positive in ``document_embeddings``.
        exclude: optional ``[Q, D]`` bool, True where a document must leave query i's denominator
            (its *other* positives: HotpotQA has two gold paragraphs). The target itself is never excluded.
        temperature: τ, applied once.

    Example: with ``q = [[1, 0]]``, ``d = [[1, 0], [0, 1]]``, τ = 1, the loss is ``log(1 + e^{-1})``.
    """
    logits = similarity_logits(query_embeddings, document_embeddings, temperature)
    if exclude is not None:
        keep_target = F.one_hot(targets, logits.shape[1]).bool()
        logits = logits.masked_fill(exclude & ~keep_target, float("-inf"))
    return F.cross_entropy(logits, targets)


def other_positive_mask(positive_ids: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """``[Q, D]`` bool: True where document j is one of query i's positives.

    Args:
        positive_ids: ``[Q, P]`` integer ids of each query's positives, padded with -1.
        document_ids: ``[D]`` integer ids of the batch's documents.
    """
    valid = positive_ids >= 0
    return ((positive_ids.unsqueeze(-1) == document_ids.view(1, 1, -1)) & valid.unsqueeze(-1)).any(dim=1)


def multi_positive_info_nce_loss(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    positive_mask: torch.Tensor,
    temperature: float = 0.05,
) -> torch.Tensor:
    """MIL-NCE (Miech et al., 2020, eq. 1): ``L = −mean_i log( Σ_{p∈P_i} e^{s_ip} / Σ_j e^{s_ij} )``.

    Every in-batch positive of query i counts in the numerator, so the query only has to score *some*
    gold document high — the right objective for multi-hop data, where one gold paragraph (the bridge)
    is often not retrievable from the question alone. Queries without a positive in the batch are skipped.

    Args:
        query_embeddings: ``[Q, H]``; document_embeddings: ``[D, H]``.
        positive_mask: ``[Q, D]`` bool, True where document j is a positive of query i.
        temperature: τ, applied once.

    Example: ``q = [[1, 0]]``, ``d = [[1, 0], [0, 1], [-1, 0]]``, both first documents positive, τ = 1:
    ``L = −log((e + 1) / (e + 1 + e^{-1}))``.
    """
    logits = similarity_logits(query_embeddings, document_embeddings, temperature)
    has_positive = positive_mask.any(dim=1)
    if not has_positive.any():
        raise ValueError("multi_positive_info_nce_loss: no query has a positive document in the batch")
    numerator = torch.logsumexp(logits.masked_fill(~positive_mask, float("-inf")), dim=1)
    denominator = torch.logsumexp(logits, dim=1)
    return (denominator - numerator)[has_positive].mean()


def contrastive_loss(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    document_codes: torch.Tensor,
    positive_codes: torch.Tensor,
    group_size: int,
    objective: Literal["info_nce", "mil_nce"] = "info_nce",
    mask_other_positives: bool = True,
    temperature: float = 0.05,
) -> torch.Tensor:
    """The contrastive baseline's loss on one (gathered) batch: InfoNCE against each query's first group
    member, or MIL-NCE over all its positives (Karpukhin et al., 2020; Miech et al., 2020).

    ``objective="info_nce"``: :func:`info_nce_loss` with target ``b·G`` (the first document of query b's
    group) and, with ``mask_other_positives``, the query's other judged positives left out of its
    denominator. ``objective="mil_nce"``: :func:`multi_positive_info_nce_loss` with every in-batch positive.

    Inputs:

    =====================  ==========================  ==========================================
    batch field            argument                    shape
    =====================  ==========================  ==========================================
    embedded ``queries``   ``query_embeddings``        ``[B, H]`` (gathered across ranks)
    embedded documents     ``document_embeddings``     ``[B·G, H]``, each query's group together
    ``document_codes``     ``document_codes``          ``[B·G]`` int64 (flattened)
    ``positive_codes``     ``positive_codes``          ``[B, P]`` int64, −1 padded
    ``group_size``         ``group_size``              ``G``
    =====================  ==========================  ==========================================

    Example: one query ``[1, 0]`` whose group is ``[[1, 0], [0, 1]]`` (codes 7, 8; positives ``[[7]]``),
    τ = 1: the loss is ``log(1 + e^{-1})``.
    """
    positives = other_positive_mask(positive_codes, document_codes)
    if objective == "mil_nce":
        return multi_positive_info_nce_loss(query_embeddings, document_embeddings, positives, temperature)
    targets = torch.arange(query_embeddings.shape[0], device=query_embeddings.device) * group_size
    exclude = positives if mask_other_positives else None
    return info_nce_loss(query_embeddings, document_embeddings, targets, exclude, temperature)
