"""DREAM's settings (``model.*`` of ``experiments/model/dream.yaml``), checked when the module is built.

Every [ours] choice of docs/dream.md is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lightning_modules.settings import Settings, SettingsError


@dataclass(frozen=True)
class HeadSettings(Settings):
    """Which heads carry the bias (``model.heads``).

    Attributes:
        selection: ``middle_third`` (default, no labels) | ``explicit`` (``layers``) | ``intervention``
            (ranks heads on ≤ 32 training questions with gold labels: label use).
        layers: ``{layer: [heads]}`` for ``explicit``.
        top_n: ``intervention`` keeps the N heads with the largest effect.
        calibration_questions / calibration_batch_size / calibration_layers: the intervention ranking's
            questions (≤ 32), batch size and layers (None: all).
    """

    config_key: ClassVar[str] = "model.heads"
    selection: Literal["middle_third", "explicit", "intervention"] = "middle_third"
    layers: dict[Any, Any] | None = None
    top_n: int = 16
    calibration_questions: int = 32
    calibration_batch_size: int = 8
    calibration_layers: list[int] | None = None

    def check(self) -> None:
        if not 1 <= int(self.calibration_questions) <= 32:
            raise SettingsError(
                "model.heads.calibration_questions must be between 1 and 32 (docs/dream.md: ≤ 32 questions)"
            )
        if self.selection == "explicit" and not self.layers:
            raise SettingsError("model.heads.selection=explicit needs model.heads.layers: {layer: [heads]}")


@dataclass(frozen=True)
class DreamSettings(Settings):
    """How DREAM trains (docs/dream.md).

    Attributes:
        tau_attn: temperature of the bias softmax (applied once, to the raw cosines). [ours] default 0.1.
        heads: :class:`HeadSettings`.
        candidates: ``dataset`` (each query's batch group: HotpotQA's own paragraphs, gold included),
            ``in_batch`` (every document of the batch is a candidate of every query), or ``mined`` (top
            ``mined_k`` of the corpus, label-free, ``mine_with`` the current embedder [re-mined every
            ``mine_every_n_steps``] or ``bm25`` [once]).
        target: ``answer`` (the frozen LM predicts the answer after ``answer_prompt``), ``query`` (it
            predicts the query after ``query_prompt``: query likelihood), ``auto`` (answer when the data has one).
        target_prefix / document_separator: text before the target / after each document.
        max_document_tokens / max_target_tokens / append_eos_to_target: truncation of the LM's input.
        reuse_document_cache: run the document prefix once without gradient and reuse its keys/values.
        document_attention: ``causal`` or ``block_diagonal`` (each document attends only to itself).
        attention_backend: ``sdpa`` or ``flash`` (flash-attn on a GPU).
        shuffle_candidates: shuffle each ``dataset`` group (deterministic per query and epoch), so the gold
            paragraph is not always first.
        shuffle_mined: shuffle each query's ``mined`` candidates (deterministic per query and step) instead
            of keeping the miner's rank order, which puts the top-1 document in the first slot, where the
            LM's attention sink sits (/work/lab/analysis: rank order gains from that slot, not from the bias).
        prepend_bos: start the LM input with the tokenizer's BOS token (when it has one), so the attention
            sink is not the first document's first token.
        log_unbiased_nll: also log the target NLL with no bias (``train/nll_gain`` = unbiased − biased).
        encode_chunk_size: embed the candidates (and queries) this many texts at a time with gradients,
            each chunk recomputed in backward (``lightning_modules/models/chunked.py``): the same losses at
            one chunk's activation memory. 0: one forward over all of them.
    """

    tau_attn: float = 0.1
    heads: HeadSettings = field(default_factory=HeadSettings)
    candidates: Literal["dataset", "in_batch", "mined"] = "dataset"
    mined_k: int = 5
    mine_every_n_steps: int = 50
    mine_with: Literal["embedder", "bm25"] = "embedder"
    target: Literal["answer", "query", "auto"] = "auto"
    answer_prompt: str = "Question: {query}\nAnswer:"
    query_prompt: str = "A question that these passages answer:"
    target_prefix: str = " "
    document_separator: str = "\n\n"
    document_attention: Literal["causal", "block_diagonal"] = "causal"
    max_document_tokens: int = 64
    max_target_tokens: int = 32
    append_eos_to_target: bool = False
    reuse_document_cache: bool = True
    attention_backend: Literal["sdpa", "flash"] = "sdpa"
    shuffle_candidates: bool = True
    shuffle_mined: bool = True
    prepend_bos: bool = True
    log_unbiased_nll: bool = False
    encode_chunk_size: int = 0

    def check(self) -> None:
        if self.encode_chunk_size < 0:
            raise SettingsError(f"model.encode_chunk_size must be >= 0, got {self.encode_chunk_size}")
        if "{query}" not in self.answer_prompt:
            raise SettingsError(f"model.answer_prompt must contain '{{query}}'; got {self.answer_prompt!r}")
        if "{query}" in self.query_prompt:
            raise SettingsError(
                "model.query_prompt must not contain '{query}': the query is the target it predicts"
            )
        if self.document_attention == "block_diagonal" and self.attention_backend == "flash":
            raise SettingsError(
                "model.document_attention=block_diagonal needs a 4D mask: use model.attention_backend=sdpa"
            )

    @property
    def block_diagonal(self) -> bool:
        return self.document_attention == "block_diagonal"

    def prompt_and_target(self, query: str, answers: tuple[str, ...] | list[str]) -> tuple[str, str]:
        """The frozen LM's prompt after the documents and the target it must predict, for one query."""
        use_answer = self.target == "answer" or (self.target == "auto" and answers)
        if use_answer:
            if not answers or not answers[0].strip():
                raise ValueError(
                    f"model.target=answer but the query {query!r} has no answer (use target=auto or query)"
                )
            return self.answer_prompt.format(query=query), self.target_prefix + answers[0]
        return self.query_prompt, self.target_prefix + query
