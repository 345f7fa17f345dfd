"""The masked token negative log-likelihood every language-model loss here is built from.

``nll_{b,t} = −log softmax(logits_{b,t})[y_{b,t}]`` where the mask is True, 0 elsewhere, computed in
float32 whatever the logits' dtype. DREAM's target NLL, LLM2Vec-Gen's reconstruction loss and
LLM-Embedder's teacher likelihood all call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token NLL ``[...]`` of ``targets`` under ``logits [..., V]``, 0 where ``mask`` is False.

    Inputs:

    ===========  ===========  ===============================================================
    argument     shape        meaning
    ===========  ===========  ===============================================================
    ``logits``   ``[..., V]`` the prediction for each target position
    ``targets``  ``[...]``    token ids (any value, e.g. −100, where ``mask`` is False)
    ``mask``     ``[...]``    bool, True on the positions that count (None: all of them)
    ===========  ===========  ===============================================================

    Example: ``logits = [[0, 0]]``, ``targets = [0]`` gives ``[log 2]``.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll if mask is None else nll * mask
