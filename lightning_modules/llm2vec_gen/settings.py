"""LLM2Vec-Gen's settings (``model.*`` of ``experiments/model/llm2vec_gen.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from lightning_modules.llm2vec_gen.generation import DEFAULT_QUERY_INSTRUCTION, GenerationSettings
from lightning_modules.settings import Settings, SettingsError, unknown_key_message

DEFAULT_DOCUMENT_INSTRUCTION = "Summarize the following passage: "
OWN_GENERATION_KEYS = ("instruction", "max_query_tokens", "use_chat_template")  # set by the module's fields


@dataclass(frozen=True)
class LLM2VecGenSettings(Settings):
    """How LLM2Vec-Gen trains (docs/llm2vec_gen.md).

    Attributes:
        num_special_tokens: K, the special tokens appended after the prompt.
        num_pooled_tokens: how many of them (the last ones) represent the text: soft prompt and embedding.
            None: all K. The reference's current code (V2) uses 10/10; its first version (V1, the seed
            paper) 20 appended and the last 10 pooled ("thought" then "compression" tokens).
        query_instruction / document_instruction: prefixes inside the user turn (the query one is also the
            generation prompt, so the special tokens sit exactly where the response would start).
        use_chat_template: wrap prompts in the LM's chat template when it has one.
        student_prompt: what the special tokens follow when a text is embedded (training and evaluation):
            ``chat`` (the chat template with the instruction, as the responses were generated) or ``raw``
            (the text alone after BOS: no template, no instruction; the reference's training input). The
            responses are generated with ``use_chat_template`` and the query instruction either way.
        max_query_tokens / max_document_tokens: truncation of ``instruction + text``.
        max_response_tokens: response tokens reconstructed (the EOS token is appended when the LM stopped).
        reconstruction_weight / alignment_weight: loss weights (reference: 1.0 / 1.0).
        reconstruction_init: ``identity`` [ours: the soft prompt starts as the special-token states] or
            ``random`` (PyTorch's Linear default). The alignment head is always PyTorch's default.
        special_token_init_std: [ours] the K embeddings start at the mean input embedding plus Gaussian
            noise of this many per-dimension standard deviations of the embedding matrix.
        loss_chunk_size: compute the full-vocabulary reconstruction loss this many response positions at
            a time, each chunk's logits recomputed in backward (same value; one chunk's logits in memory).
            0: all positions at once.
        frozen_lm_checkpointing: recompute the frozen LM's layers in backward in the two passes gradients
            flow through (same gradients; activation memory of one layer instead of all of them).
        generation: :class:`GenerationSettings` fields except ``instruction`` / ``max_query_tokens`` /
            ``use_chat_template``, which come from the fields above.
    """

    num_special_tokens: int = 10
    num_pooled_tokens: int | None = None
    query_instruction: str = DEFAULT_QUERY_INSTRUCTION
    document_instruction: str = DEFAULT_DOCUMENT_INSTRUCTION
    use_chat_template: bool = True
    student_prompt: Literal["chat", "raw"] = "chat"
    max_query_tokens: int = 64
    reconstruction_init: Literal["identity", "random"] = "identity"
    max_document_tokens: int = 128
    max_response_tokens: int = 128
    reconstruction_weight: float = 1.0
    alignment_weight: float = 1.0
    special_token_init_std: float = 1.0
    loss_chunk_size: int = 0
    frozen_lm_checkpointing: bool = False
    generation: dict[str, Any] | None = None

    def check(self) -> None:
        if self.loss_chunk_size < 0:
            raise SettingsError(f"model.loss_chunk_size must be >= 0, got {self.loss_chunk_size}")
        if self.num_special_tokens < 1:
            raise SettingsError(f"model.num_special_tokens must be >= 1, got {self.num_special_tokens}")
        if self.num_pooled_tokens is not None and not 1 <= self.num_pooled_tokens <= self.num_special_tokens:
            raise SettingsError(
                f"model.num_pooled_tokens must be between 1 and model.num_special_tokens "
                f"({self.num_special_tokens}), got {self.num_pooled_tokens}"
            )
        extra = dict(self.generation or {})
        for key in OWN_GENERATION_KEYS:
            if key in extra:
                raise SettingsError(f"model.generation.{key} is set by the module's own argument; remove it")
        valid = [f.name for f in fields(GenerationSettings) if f.name not in OWN_GENERATION_KEYS]
        unknown = sorted(set(extra) - set(valid))
        if unknown:
            raise SettingsError(unknown_key_message("model.generation", unknown[0], valid))

    @property
    def pooled_tokens(self) -> int:
        return self.num_pooled_tokens or self.num_special_tokens

    @property
    def student_chat_template(self) -> bool:
        """Whether an embedded text is wrapped in the chat template (``student_prompt: chat``)."""
        return self.use_chat_template and self.student_prompt == "chat"

    def instruction(self, kind: str) -> str:
        """The instruction before an embedded text (none for ``student_prompt: raw``)."""
        if self.student_prompt == "raw":
            return ""
        return self.query_instruction if kind == "query" else self.document_instruction

    def max_text_tokens(self, kind: str) -> int:
        return self.max_query_tokens if kind == "query" else self.max_document_tokens

    def generation_settings(self, max_new_tokens_cap: int | None = None) -> GenerationSettings:
        """How responses are generated; ``max_new_tokens_cap`` bounds the budget (``debug=tiny``)."""
        extra = dict(self.generation or {})
        if max_new_tokens_cap is not None:
            extra["max_new_tokens"] = min(
                extra.get("max_new_tokens", GenerationSettings.max_new_tokens), max_new_tokens_cap
            )
        return GenerationSettings(
            instruction=self.query_instruction,
            max_query_tokens=self.max_query_tokens,
            use_chat_template=self.use_chat_template,
            **extra,
        )
