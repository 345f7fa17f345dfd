"""LLM-Embedder's settings (``model.*`` and ``model.teacher.*`` of ``experiments/model/llm_embedder.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lightning_modules.llm_embedder.templates import TaskSettings, task_settings
from lightning_modules.settings import Settings, SettingsError

DEFAULT_WEIGHT_TEMPERATURE = {"nll": 1.0, "rank_aware": 0.1}


@dataclass(frozen=True)
class TeacherSettings(Settings):
    """How the frozen LM scores (key, query, answer) triples (:class:`~.teacher.TeacherScorer`).

    Attributes:
        reward: ``rank_aware`` (the paper's reward, default; its formula is [ours], see :mod:`.rewards`) or
            ``nll`` (the reference code).
        num_samples / max_new_tokens / sample_temperature: the rank-aware reward's N samples.
        tie_break: order equal ranks by the desired output's likelihood (rank-aware only).
        key_max_tokens / output_max_tokens: truncation of the key and of the desired output, in tokens.
        batch_size: sequences per LM forward for the likelihoods.
        chunk_size: items per cache chunk (what an interrupted run can lose at most).
        seed: base seed of the samples (each item derives its own).
        generation_threads: torch threads while sampling (None: unchanged). Sampling runs many tiny ops;
            on a busy CPU one thread is far faster than several (measured here: 9 s vs 180 s for one item
            of N=4 × 16 tokens with SmolLM2 at load 16 on 2 cores).
        cache_dir: the cache root (default ``<cache_root>/teacher_scores``).
        show_progress: a progress bar while scoring.
    """

    config_key: ClassVar[str] = "model.teacher"
    reward: Literal["nll", "rank_aware"] = "rank_aware"
    num_samples: int = 4
    max_new_tokens: int = 16
    sample_temperature: float = 1.0
    tie_break: bool = True
    seed: int = 0
    generation_threads: int | None = 1
    key_max_tokens: int = 128
    output_max_tokens: int = 32
    batch_size: int = 8
    chunk_size: int = 64
    cache_dir: str | None = None
    show_progress: bool = True

    def check(self) -> None:
        if self.reward == "rank_aware" and self.num_samples < 1:
            raise SettingsError(
                f"model.teacher.num_samples must be >= 1 for the rank_aware reward, got {self.num_samples}"
            )


@dataclass(frozen=True)
class LLMEmbedderSettings(Settings):
    """How LLM-Embedder trains (docs/llm_embedder.md).

    Attributes:
        temperature: τ of the student logits ``cos / τ`` (reference 0.01), applied once.
        teacher: :class:`TeacherSettings`.
        tasks: per-task overrides of :data:`templates.DEFAULT_TASKS` (instructions, template, distillation
            kind, loss weights, teacher temperature).
        weight_temperature: τ_w of the graded weights ``softmax(r / τ_w)``; None takes 1.0 for the nll
            reward and 0.1 for rank_aware ([ours]).
        graded_order: ``positive_first`` (default: the labelled positive pinned first, the paper's hard labels
            and the reference's order; without labels the teacher's favourite) or ``teacher`` (label-free).
        eval_task: whose instructions evaluation uses (``qa`` for the HotpotQA lab).
        prescore: score every training candidate at the start of fit (cached; resumable).
    """

    temperature: float = 0.01
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    tasks: dict[str, dict[str, Any]] | None = None
    weight_temperature: float | None = None
    graded_order: Literal["teacher", "positive_first"] = "positive_first"
    eval_task: str = "qa"
    prescore: bool = True

    def check(self) -> None:
        if self.temperature <= 0:
            raise SettingsError(f"model.temperature must be > 0, got {self.temperature}")
        tasks = self.task_settings()
        if self.eval_task not in tasks:
            raise SettingsError(
                f"model.eval_task '{self.eval_task}' is not a task (tasks: {', '.join(tasks)})"
            )

    def task_settings(self) -> dict[str, TaskSettings]:
        """The default per-task settings with ``tasks`` applied."""
        return task_settings(self.tasks)

    @property
    def graded_weight_temperature(self) -> float:
        return self.weight_temperature or DEFAULT_WEIGHT_TEMPERATURE.get(self.teacher.reward, 1.0)
