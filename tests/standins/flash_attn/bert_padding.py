"""``flash_attn.bert_padding`` of the stand-in: flash-attn 2.7's ``unpad_input`` / ``pad_input`` in plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """``[B, S, ...]`` and a ``[B, S]`` mask (1 = token) → the tokens packed ``[T, ...]``, their flat indices,
    ``cu_seqlens`` ``[B + 1]`` (int32), the longest length, and the used lengths ``[B]``."""
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    lengths = all_masks.sum(dim=-1, dtype=torch.int32)
    used = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    packed = hidden_states.reshape(-1, *hidden_states.shape[2:])[indices]
    return packed, indices, cu_seqlens, int(lengths.max().item()), used


def pad_input(hidden_states, indices, batch, seqlen):
    """The inverse of :func:`unpad_input`: ``[T, ...]`` back to ``[batch, seqlen, ...]`` with zeros."""
    output = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    output = output.index_copy(0, indices, hidden_states)
    return output.view(batch, seqlen, *hidden_states.shape[1:])
