"""The JEPA predictor ``P(h_q, Z_d)``: the only trainable part of Rabtriever.

It maps the query's answer-position state ``h_q`` ``[..., H]`` and the document's last states ``Z_d``
``[..., K, H]`` to a predicted answer-position state ``[..., H]`` in the LM's pre-norm space, which the
frozen final norm and LM head turn into relevance logits. Leading dimensions broadcast, so one query can
be scored against ``N`` stored documents as ``P(h_q[None], Z[N])``.

Both variants are residual around ``h_q`` with a zero-initialised output layer [ours]: before training
the prediction is ``h_q`` itself (the LM answering without having read the document), and the predictor
learns only the document's correction. Inputs pass through LayerNorms first because the pre-norm residual
stream carries a few dimensions hundreds of times larger than the rest.
"""

from __future__ import annotations

import torch
from torch import nn

PREDICTORS = ("mlp", "cross_attention")


class MLPPredictor(nn.Module):
    """``h_q + W_2 GELU(W_1 [LN(h_q); LN(mean_K Z_d)])``: a small MLP over the pooled document states."""

    def __init__(self, hidden_size: int, inner_size: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.query_norm = nn.LayerNorm(hidden_size)
        self.document_norm = nn.LayerNorm(hidden_size)
        self.up = nn.Linear(2 * hidden_size, inner_size)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(inner_size, hidden_size)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, query_state: torch.Tensor, document_states: torch.Tensor) -> torch.Tensor:
        query_state, document_states = _broadcast(query_state, document_states)
        pooled = self.document_norm(document_states.mean(dim=-2))
        features = torch.cat([self.query_norm(query_state), pooled], dim=-1)
        return query_state + self.down(self.dropout(self.act(self.up(features))))


class CrossAttentionPredictor(nn.Module):
    """One pre-norm transformer block whose single query token (``h_q``) attends over ``Z_d``.

    ``x = h_q + Attn(LN(h_q), LN(Z_d))``, then ``x + MLP(LN(x))``; both output projections start at zero.
    """

    def __init__(self, hidden_size: int, inner_size: int = 1024, num_heads: int = 8, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"predictor.num_heads={num_heads} must divide the LM hidden size {hidden_size}")
        self.query_norm = nn.LayerNorm(hidden_size)
        self.document_norm = nn.LayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, hidden_size)
        )
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, query_state: torch.Tensor, document_states: torch.Tensor) -> torch.Tensor:
        query_state, document_states = _broadcast(query_state, document_states)
        lead = query_state.shape[:-1]
        q = query_state.reshape(-1, 1, query_state.shape[-1])
        z = document_states.reshape(-1, *document_states.shape[-2:])
        keys = self.document_norm(z)
        attended, _ = self.attention(self.query_norm(q), keys, keys, need_weights=False)
        x = q + attended
        x = x + self.mlp(self.mlp_norm(x))
        return x.reshape(*lead, x.shape[-1])


def _broadcast(query_state: torch.Tensor, document_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if query_state.shape[-1] != document_states.shape[-1] or document_states.ndim < 2:
        raise ValueError(
            f"predictor inputs: h_q [..., H] and Z_d [..., K, H] expected, got {tuple(query_state.shape)} "
            f"and {tuple(document_states.shape)}"
        )
    lead = torch.broadcast_shapes(query_state.shape[:-1], document_states.shape[:-2])
    query_state = query_state.expand(*lead, query_state.shape[-1])
    document_states = document_states.expand(*lead, *document_states.shape[-2:])
    return query_state, document_states


def build_predictor(
    kind: str, hidden_size: int, inner_size: int = 1024, num_heads: int = 8, dropout: float = 0.0
) -> nn.Module:
    """``mlp`` (default) or ``cross_attention``."""
    if kind == "mlp":
        return MLPPredictor(hidden_size, inner_size, dropout)
    if kind == "cross_attention":
        return CrossAttentionPredictor(hidden_size, inner_size, num_heads, dropout)
    raise ValueError(f"predictor.kind must be one of {', '.join(PREDICTORS)}; got '{kind}'")
