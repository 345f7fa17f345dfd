"""The two training objectives of the LLM2Vec recipe (BehnamGhader et al., 2024) that turn a causal LM
into the unsupervised embedding teacher of LLM2Vec-Gen (docs/llm2vec_gen.md, "The unsupervised teacher").

- MNTP (masked next-token prediction), with bidirectional attention: a masked token ``x_i`` is predicted
  from the output at position ``i − 1`` (the LM head's usual shift), never from its own position.
- Unsupervised SimCSE (Gao et al., 2021, eq. 1 with dropout as the augmentation): two passes of the same
  sentence are positives, the batch's other sentences negatives.

Pure tensor functions; the position selection is separate so a module can apply the LM head only where a
token is predicted (a full ``[B, T, V]`` logit tensor does not fit for 150k-token vocabularies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.losses.token_nll import token_nll

IGNORE_INDEX = -100


def mntp_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, columns, targets)``: for every masked token ``(b, i)`` with ``i ≥ 1``, the position
    ``(b, i − 1)`` whose output predicts it and the original token ``x_{b,i}``.

    Args:
        labels: ``[B, T]`` the original token id at masked positions, ``-100`` elsewhere (the layout of
            ``transformers.DataCollatorForLanguageModeling``). A masked first token has no predecessor
            and is left out, as in the reference's shifted causal-LM loss.

    Example: ``labels = [[-100, 7, -100, 9]]`` gives rows ``[0, 0]``, columns ``[0, 2]``, targets ``[7, 9]``.
    """
    if labels.ndim != 2:
        raise ValueError(f"mntp_positions expects labels [B, T], got shape {tuple(labels.shape)}")
    rows, columns = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows, columns, labels[rows, columns + 1]


def masked_next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MNTP: ``L = −(1/|M|) Σ_{(b,i)∈M} log softmax(z_{b,i−1})[x_{b,i}]`` over the masked tokens ``M``.

    Args:
        logits: ``[M, V]`` LM-head outputs at the predicting positions (:func:`mntp_positions`).
        targets: ``[M]`` the masked tokens' original ids.

    Example: one masked token, ``logits = [[0, 0]]``, target 0: ``L = log 2``.
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"masked_next_token_loss expects logits [M, V] and targets [M]; got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if targets.numel() == 0:
        raise ValueError("masked_next_token_loss got no masked token (raise the masking probability)")
    return token_nll(logits, targets).mean()


def simcse_loss(first: torch.Tensor, second: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Unsupervised SimCSE: ``L = −(1/B) Σ_i log( e^{cos(u_i, v_i)/τ} / Σ_j e^{cos(u_i, v_j)/τ} )``.

    ``u_i`` and ``v_i`` embed the same sentence through two dropout masks; the other sentences' second
    views are the negatives. τ = 0.05 is LLM2Vec's ``loss_scale`` 20 (cosine × 20, cross-entropy over the
    in-batch candidates, one direction, as its ``HardNegativeNLLLoss``).

    Args:
        first / second: ``[B, H]`` the two views' pooled embeddings (not normalised: cosine is taken here).
        temperature: τ.

    Example: ``u = [[1, 0], [0, 1]]``, ``v = u``, τ = 1: ``L = log(1 + e^{-1})``.
    """
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(
            f"simcse_loss expects two [B, H] views of equal shape; got {tuple(first.shape)}, {tuple(second.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"simcse_loss temperature must be > 0, got {temperature}")
    similarities = F.normalize(first.float(), dim=-1) @ F.normalize(second.float(), dim=-1).T
    targets = torch.arange(first.shape[0], device=first.device)
    return F.cross_entropy(similarities / temperature, targets)
