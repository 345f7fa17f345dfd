"""The three forward passes of the frozen LM that Rabtriever needs, and its frozen output layers.

- teacher pass over ``[doc; query; prompt]``: ``h_T`` (answer-position state before the final norm),
  the teacher's logits there, and the document's last ``K`` states (free: the document comes first);
- document pass over ``[doc]``: ``Z_d`` = its last ``K`` states before the final norm;
- query pass over ``[query; prompt]``: ``h_q`` at the answer position before the final norm.

The pre-norm states are read with a forward pre-hook on the final norm (version-independent: the meaning
of ``hidden_states[-1]`` has changed across transformers releases). Logits are computed only at the
answer position (the head over a 49k vocabulary at every position would cost a third of the pass).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_modules.rabtriever.prompt import PromptTokenizer, RelevancePrompt, pad_right
from retrieval.batching import map_in_length_order

FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f")


@dataclass
class TeacherOutput:
    """The teacher's view of ``B`` (query, document) pairs."""

    answer_states: torch.Tensor  # [B, H] h_T before the final norm
    relevance_logits: torch.Tensor  # [B, R] logits of the relevance tokens at the answer position
    document_states: torch.Tensor  # [B, K, H] the document's last K states (= Z_d)
    vocabulary_logits: torch.Tensor | None = None  # [B, V] when requested


def final_norm_of(model: PreTrainedModel) -> nn.Module:
    """The final normalisation layer of a causal LM's decoder (``model.norm`` for Llama/Qwen2/Mistral)."""
    base = model.base_model
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(
        f"cannot find the final norm of {type(model).__name__} (looked for {', '.join(FINAL_NORM_NAMES)})"
    )


def autocast_for(precision: str, device: torch.device) -> torch.autocast | nullcontext:
    if precision in ("bf16", "bfloat16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision in ("fp32", "float32"):
        return nullcontext()
    raise ValueError(f"precision must be 'fp32' or 'bf16', got '{precision}'")


class RelevanceLM(nn.Module):
    """A frozen causal LM read through a :class:`RelevancePrompt` (no parameters of its own).

    Args:
        model / tokenizer: the frozen LM (the base module's ``frozen_lm.model`` / ``.tokenizer``).
        prompt: the relevance prompt.
        num_document_states: ``K``, how many final document states form ``Z_d`` (default 8).
        name: for error messages.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt: RelevancePrompt,
        num_document_states: int = 8,
        name: str = "the LM",
    ):
        super().__init__()
        if num_document_states < 1:
            raise ValueError(f"num_document_states must be >= 1, got {num_document_states}")
        self._model = [model]  # a plain list: the LM belongs to the caller (never registered twice)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.num_document_states = num_document_states
        self.ids = PromptTokenizer(prompt, tokenizer, name)
        self.register_buffer("relevance_ids", self.ids.relevance_ids, persistent=False)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @property
    def model(self) -> PreTrainedModel:
        return self._model[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    # ---- the frozen output layers ----------------------------------------------------------------------
    # These run outside autocast: bf16 logits near 30 have a resolution of 0.125, which would tie scores.
    def final_norm(self, states: torch.Tensor) -> torch.Tensor:
        """The LM's frozen final norm (gradients flow through it to the states, never into its weight)."""
        with torch.autocast(device_type=states.device.type, enabled=False):
            return final_norm_of(self.model)(states.float())

    def relevance_logits(self, normed_states: torch.Tensor) -> torch.Tensor:
        """``[..., R]`` logits of the relevance tokens: the matching rows of the frozen LM head."""
        head = self.model.get_output_embeddings()
        with torch.autocast(device_type=normed_states.device.type, enabled=False):
            logits = normed_states.float() @ head.weight[self.relevance_ids].T.float()
            bias = getattr(head, "bias", None)
            return logits + bias[self.relevance_ids].float() if bias is not None else logits

    def vocabulary_logits(self, normed_states: torch.Tensor) -> torch.Tensor:
        """``[..., V]`` float32 logits over the whole vocabulary (the frozen LM head, in its own dtype)."""
        head = self.model.get_output_embeddings()
        with torch.autocast(device_type=normed_states.device.type, enabled=False):
            return head(normed_states.to(head.weight.dtype)).float()

    # ---- passes -------------------------------------------------------------------------------------------
    def _prenorm_states(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask, lengths = pad_right(rows, self.pad_id)
        with capture_final_norm_input(self.model) as captured:
            self.model.base_model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            )
        return captured[0], lengths.to(self.device)

    def _last_states(self, states: torch.Tensor, lengths: torch.Tensor, count: int) -> torch.Tensor:
        """``[B, count, H]``: the states of positions ``len−count … len−1`` of each row (repeating the first
        real token when a row is shorter than ``count``)."""
        offsets = torch.arange(-count, 0, device=states.device)
        positions = (lengths[:, None] + offsets).clamp(min=0)
        return states.gather(1, positions[..., None].expand(-1, -1, states.shape[-1]))

    def teacher(
        self, queries: Sequence[str], documents: Sequence[str], full_vocabulary: bool = False
    ) -> TeacherOutput:
        """The teacher pass over ``[doc; query; prompt]`` for aligned query/document lists."""
        pair_rows = self.ids.pair_ids(queries, documents)
        doc_lengths = torch.tensor([len(r) for r in self.ids.document_ids(documents)], device=self.device)
        states, lengths = self._prenorm_states(pair_rows)
        answer = self._last_states(states, lengths, 1)[:, 0]
        normed = self.final_norm(answer)
        return TeacherOutput(
            answer_states=answer,
            relevance_logits=self.relevance_logits(normed),
            document_states=self._last_states(states, doc_lengths, self.num_document_states),
            vocabulary_logits=self.vocabulary_logits(normed) if full_vocabulary else None,
        )

    def document_states(self, documents: Sequence[str]) -> torch.Tensor:
        """``Z_d``: ``[B, K, H]`` the last K pre-norm states of ``prefix + document part``."""
        states, lengths = self._prenorm_states(self.ids.document_ids(documents))
        return self._last_states(states, lengths, self.num_document_states)

    def query_states(self, queries: Sequence[str]) -> torch.Tensor:
        """``h_q``: ``[B, H]`` the pre-norm state at the answer position of ``prefix + query part + suffix``."""
        states, lengths = self._prenorm_states(self.ids.query_ids(queries))
        return self._last_states(states, lengths, 1)[:, 0]

    @torch.no_grad()
    def teacher_scores(
        self, queries: Sequence[str], documents: Sequence[str], batch_size: int = 16, precision: str = "fp32"
    ) -> torch.Tensor:
        """``[B]`` relevance log-odds of aligned pairs, batched by length (no gradient)."""
        from lightning_modules.losses.rabtriever import relevance_log_odds

        if not queries:
            return torch.empty(0)

        def score(index: list[int]) -> torch.Tensor:
            out = self.teacher([queries[i] for i in index], [documents[i] for i in index])
            return relevance_log_odds(out.relevance_logits).float().cpu()

        with autocast_for(precision, self.device):
            return map_in_length_order([len(d) for d in documents], batch_size, score)


@contextmanager
def capture_final_norm_input(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Within the block, the input of the model's final norm (the last layer's pre-norm states) is appended
    to the yielded list on every forward."""
    captured: list[torch.Tensor] = []
    handle = final_norm_of(model).register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()
