"""LLM-Embedder (Zhang et al., 2023; code FlagOpen/FlagEmbedding, research/llm_embedder) as a LightningModule:
the embedder learns the frozen LM's preferences (graded or KL distillation of teacher rewards) with
per-task instructions, per-task loss weights and single-task (homogeneous) batches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from datamodules.batch import RetrievalBatch
from datamodules.protocols import TaskExamples
from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import (
    call_through_strategy,
    gather_no_grad,
    gather_with_grad,
    rank,
    world_size,
)
from lightning_modules.llm_embedder.settings import LLMEmbedderSettings
from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer
from lightning_modules.llm_embedder.templates import TaskSettings, settings_as_dict
from lightning_modules.losses.llm_embedder import llm_embedder_loss
from lightning_modules.models.tokenization import EmbedderBatchPreparer
from lightning_modules.settings import settings_arguments
from retrieval.cache import write_json_atomically


class LLMEmbedderModule(settings_arguments(LLMEmbedderSettings), RetrieverModule):
    """Trains the embedder on teacher rewards from the frozen LM.

    Args:
        **kwargs: the :class:`LLMEmbedderSettings` fields (``temperature``, ``teacher``, ``tasks``, ...) and
            the :class:`RetrieverModule` arguments (``embedder``, ``frozen_lm``, ``optimizer``, ...).

    Each batch holds one task; its loss is :func:`lightning_modules.losses.llm_embedder.llm_embedder_loss`
    (distillation and/or InfoNCE with the task's weights). The teacher scores are looked up at step time:
    they are precomputed on disk at fit start, but a miss must run the frozen LM, which lives with the
    module (not in the DataLoader workers).
    """

    def __init__(self, **kwargs: Any):
        settings, base = LLMEmbedderSettings.take(kwargs, RetrieverModule.__init__)
        super().__init__(**base)
        self.save_hyperparameters()
        self.settings: LLMEmbedderSettings = settings
        self.task_settings: dict[str, TaskSettings] = settings.task_settings()
        self.teacher = TeacherScorer(self.frozen_lm, settings.teacher) if self.frozen_lm is not None else None
        self.scoring_report: dict[str, Any] = {}

    @property
    def reward(self) -> str:
        return self.settings.teacher.reward

    # ---- instructions ---------------------------------------------------------------------------------------
    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        prefix = self.task(self.settings.eval_task).query_instruction
        return super().encode_queries([prefix + t for t in texts], show_progress=show_progress)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        prefix = self.task(self.settings.eval_task).key_instruction
        return super().encode_documents([prefix + t for t in texts], show_progress=show_progress)

    def export_prompts(self) -> dict[str, str]:
        """Every task's instructions as sentence-transformers prompts (``<task>_query`` / ``<task>_key``), and
        ``query`` / ``document`` = the evaluation task's: a user's encode matches training (the reference's
        export carries none; its README asks users to prepend them)."""
        prompts = {}
        for name, settings in self.task_settings.items():
            prompts[f"{name}_query"] = settings.query_instruction
            prompts[f"{name}_key"] = settings.key_instruction
        evaluation = self.task(self.settings.eval_task)
        return {**prompts, "query": evaluation.query_instruction, "document": evaluation.key_instruction}

    def untrained_score_key(self) -> dict[str, Any] | None:
        key = super().untrained_score_key()
        if key is not None:
            settings = self.task(self.settings.eval_task)
            key["task_instructions"] = {"query": settings.query_instruction, "key": settings.key_instruction}
        return key

    def batch_preparer(self) -> EmbedderBatchPreparer:
        """The embedder's tokenisation with each task's query and key instructions."""
        instructions = {
            name: (s.query_instruction, s.key_instruction) for name, s in self.task_settings.items()
        }
        return EmbedderBatchPreparer(self.embedder.text_tokenizer, instructions)

    # ---- teacher scores -------------------------------------------------------------------------------------
    def require_teacher(self, task: str) -> TeacherScorer:
        if self.teacher is None:
            raise ValueError(f"task '{task}' distils teacher scores but model.frozen_lm is null")
        return self.teacher

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if self.settings.prescore and isinstance(datamodule, TaskExamples) and datamodule.examples:
            # under FSDP inside the wrapped forward, where the sharded LM is usable
            call_through_strategy(self.trainer, self, "prescore_training_candidates", datamodule.examples)

    def prescore_training_candidates(self, examples: dict[str, list[Any]]) -> None:
        """Teacher scores of every training candidate (cached; the ranks share the work); writes
        ``teacher_scoring.json``."""
        rank, world = self.trainer.global_rank, self.trainer.world_size
        report: dict[str, Any] = {"reward": self.reward}
        for name, items in examples.items():
            task = items[0].task  # the task family (e.g. data set "nq" is a "qa" task)
            settings = self.task(task)
            if not settings.uses_teacher:
                continue
            teacher = self.require_teacher(task)
            scoring = [ScoringItem(c, e.query, e.answer) for e in items for c in e.candidates]
            start = time.perf_counter()
            _, part = teacher.score(settings.template, scoring, rank, world)
            report[name] = {
                "task": task,
                "items": part.items,
                "cached_before": part.cached,
                "scored_here": part.scored,
                "seconds": round(time.perf_counter() - start, 2),
                "cache_dir": str(teacher.cache(settings.template).directory),
            }
        self.scoring_report = report
        if self.trainer.is_global_zero:
            write_json_atomically(Path(self.trainer.default_root_dir) / "teacher_scoring.json", report)

    def task(self, task: str) -> TaskSettings:
        if task not in self.task_settings:
            raise ValueError(f"batch of unknown task '{task}' (configured: {', '.join(self.task_settings)})")
        return self.task_settings[task]

    def teacher_scores(self, batch: RetrievalBatch, settings: TaskSettings) -> torch.Tensor | None:
        """``[B, G]`` rewards of the batch's (key, query, answer) triples (from the cache; a miss is scored)."""
        if not settings.uses_teacher:
            return None
        answers = batch.first_answers
        items = [
            ScoringItem(key, query, answer)
            for query, group, answer in zip(batch.queries, batch.documents, answers)
            for key in group
        ]
        scores = self.require_teacher(batch.task).lookup(settings.template, items, rank(), world_size())
        return scores.view(len(batch), batch.group_size).to(self.device)

    # ---- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: RetrievalBatch, batch_idx: int) -> torch.Tensor | None:
        batch = self.prepared(batch)
        settings = self.task(batch.task)
        inputs = batch.embedder_inputs
        queries = gather_with_grad(self.embedder.embed_tokens(inputs.queries))
        keys = gather_with_grad(self.embedder.embed_tokens(inputs.documents))
        labels = gather_no_grad(batch.gold) if batch.gold is not None else None
        scores = self.teacher_scores(batch, settings)
        losses = llm_embedder_loss(
            queries,
            keys,
            gather_no_grad(batch.document_codes.flatten()),
            batch.group_size,
            settings,
            self.settings.temperature,
            self.settings.graded_weight_temperature,
            self.settings.graded_order,
            gather_no_grad(scores) if scores is not None else None,
            labels,
            batch.task,
        )
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=len(batch))
        self.log(f"train/loss_{batch.task}", losses["loss"], batch_size=len(batch))
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=len(batch))
        return self.checked_loss(losses["loss"] * world_size(), batch_idx)

    def settings_dict(self) -> dict[str, dict[str, Any]]:
        return settings_as_dict(self.task_settings)
