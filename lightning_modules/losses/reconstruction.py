"""LLM2Vec-Gen's two losses (BehnamGhader et al., 2026): reconstruct the LM's own response from a soft
prompt, and align the pooled special-token embedding with an unsupervised teacher's embedding of it.

``L = w_rec · CE_recon(response | soft prompt) + w_align · MSE(mean_K(alignment), teacher(response))``
(docs/llm2vec_gen.md). Both are pure tensor functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    if logits.ndim != 3 or targets.shape != logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(
            f"reconstruction_loss expects logits [B, T, V], targets [B, T], mask [B, T]; got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    if not mask.any():
        raise ValueError("reconstruction_loss got no response token (the mask is all False)")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    token_nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_nll * mask).sum() / mask.sum()


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
