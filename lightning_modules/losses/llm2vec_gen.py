"""LLM2Vec-Gen's two losses (BehnamGhader et al., 2026): reconstruct the LM's own response from a soft
prompt, and align the pooled special-token embedding with an unsupervised teacher's embedding of it.

``L = w_rec · CE_recon(response | soft prompt) + w_align · MSE(mean_K(alignment), teacher(response))``
(docs/llm2vec_gen.md). All are pure tensor functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lightning_modules.losses.token_nll import token_nll


def require_response_tokens(mask: torch.Tensor) -> None:
    """Refuse an all-padding mask (meta tensors, used by ``make plan``, have no values to check)."""
    if mask.device.type != "meta" and not mask.any():
        raise ValueError("reconstruction_loss got no response token (the mask is all False)")


def reconstruction_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level cross-entropy of the response given only the soft prompt (the paper's CE_recon).

    ``L = −(1 / Σ m) Σ_{b,t} m_{b,t} · log softmax(logits_{b,t})[y_{b,t}]``: the mean negative
    log-likelihood over every real response token of the batch (padding masked out).

    Args:
        logits: ``[B, T, V]``; ``logits[b, t]`` is the prediction for response token ``t`` of example ``b``.
        targets: ``[B, T]`` response token ids (any value where ``mask`` is False).
        mask: ``[B, T]`` bool, True on real response tokens.

    Example: one token with ``logits = [0, 0]`` and target 0 gives ``log 2``.
    """
    mask = response_mask(logits, targets, mask, "reconstruction_loss expects logits [B, T, V]")
    return token_nll(logits, targets, mask).sum() / mask.sum()


def response_mask(
    scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, expects: str
) -> torch.Tensor:
    """``mask`` as bool after checking ``scores [B, T, ·]``, ``targets [B, T]``, ``mask [B, T]`` and that
    some response token is there (``expects`` leads the shape error)."""
    if scores.ndim != 3 or targets.shape != scores.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"{expects}, targets [B, T], mask [B, T]; got "
            f"{tuple(scores.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    require_response_tokens(mask)
    return mask


def chunked_reconstruction_loss(
    hidden: torch.Tensor,
    output_layer: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    mask: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """:func:`reconstruction_loss` of ``logits = output_layer(hidden)``, ``chunk_size`` positions at a time.

    Same equation, same value: ``L = −(1 / Σ m) Σ_{b,t} m_{b,t} · log softmax(W h_{b,t})[y_{b,t}]``. Each
    chunk's full-vocabulary logits and log-softmax are recomputed in backward (non-reentrant activation
    checkpointing), so only one chunk of ``[B, chunk, V]`` float32 values is alive at a time instead of
    the whole ``[B, T, V]`` (docs/scale.md, "On a cluster").

    Args:
        hidden: ``[B, T, H]`` final states; ``hidden[b, t]`` predicts response token ``t``.
        output_layer: the LM head ``H → V``.
        targets / mask: ``[B, T]`` as in :func:`reconstruction_loss`.
        chunk_size: positions per chunk (>= 1).

    Example: equals ``reconstruction_loss(output_layer(hidden), targets, mask)`` for any chunk size.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    mask = response_mask(hidden, targets, mask, "chunked_reconstruction_loss expects hidden [B, T, H]")

    def chunk_nll(
        states: torch.Tensor, chunk_targets: torch.Tensor, chunk_mask: torch.Tensor
    ) -> torch.Tensor:
        return token_nll(output_layer(states), chunk_targets, chunk_mask).sum()

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk_size):
        part = slice(start, start + chunk_size)
        total = total + checkpoint(
            chunk_nll, hidden[:, part], targets[:, part], mask[:, part], use_reentrant=False
        )
    return total / mask.sum()


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``MSE(mean_K(alignment outputs), teacher(response))``, averaged over batch and dimensions.

    Args:
        student: ``[B, D]`` the mean over the K special tokens of the alignment head's outputs.
        teacher: ``[B, D]`` the teacher's embedding of each response (no gradient needed).

    Example: ``student = [[1, 0]]``, ``teacher = [[0, 0]]`` gives ``0.5``.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"alignment_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ"
        )
    return F.mse_loss(student.float(), teacher.float().detach())


def llm2vec_gen_loss(
    logits: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    embedding: torch.Tensor,
    teacher_targets: torch.Tensor,
    reconstruction_weight: float = 1.0,
    alignment_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``{"loss": w_rec · CE_recon + w_align · MSE, "reconstruction": CE_recon, "alignment": MSE}``.

    Inputs:

    ==============================  ===================  ================================================
    batch field (``lm_inputs``)     argument             shape
    ==============================  ===================  ================================================
    (the frozen decoder's output)   ``logits``           ``[B, T, V]`` given ``[soft prompt ; response]``
    ``response_ids``                ``response_ids``     ``[B, T]`` the LM's cached response, right-padded
    ``response_mask``               ``response_mask``    ``[B, T]`` bool
    (the alignment head's output)   ``embedding``        ``[B, D]`` ``mean_K(alignment(s_k))``
    ``teacher_targets``             ``teacher_targets``  ``[B, D]`` the teacher's embedding of each response
    ==============================  ===================  ================================================

    Example: one response token with ``logits = [0, 0]``, ``embedding = [[1, 0]]``, ``teacher = [[0, 0]]``
    and unit weights: ``{"loss": log 2 + 0.5, "reconstruction": log 2, "alignment": 0.5}``.
    """
    reconstruction = reconstruction_loss(logits, response_ids, response_mask)
    return weighted_losses(
        reconstruction, embedding, teacher_targets, reconstruction_weight, alignment_weight
    )


def weighted_losses(
    reconstruction: torch.Tensor,
    embedding: torch.Tensor,
    teacher_targets: torch.Tensor,
    reconstruction_weight: float = 1.0,
    alignment_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """:func:`llm2vec_gen_loss` given the reconstruction loss already computed (e.g. by
    :func:`chunked_reconstruction_loss`): ``w_rec · CE_recon + w_align · MSE`` and both parts."""
    alignment = alignment_loss(embedding, teacher_targets.to(embedding.device))
    total = reconstruction_weight * reconstruction + alignment_weight * alignment
    return {"loss": total, "reconstruction": reconstruction, "alignment": alignment}
