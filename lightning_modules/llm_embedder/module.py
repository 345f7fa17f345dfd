"""LLM-Embedder (Zhang et al., 2023; code FlagOpen/FlagEmbedding, research/llm_embedder) as a LightningModule:
the embedder learns the frozen LM's preferences (graded or KL distillation of teacher rewards) with
per-task instructions, per-task loss weights and single-task (homogeneous) batches."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from lightning_modules.base import RetrieverModule
from lightning_modules.distributed import gather_no_grad, gather_with_grad, world_size
from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer
from lightning_modules.llm_embedder.templates import TaskSettings, settings_as_dict, task_settings
from lightning_modules.losses.contrastive import info_nce_loss
from lightning_modules.losses.distillation import (
    contiguous_candidate_columns,
    graded_distillation_loss,
    kl_distillation_loss,
)
from retrieval.cache import write_json_atomically

DEFAULT_WEIGHT_TEMPERATURE = {"nll": 1.0, "rank_aware": 0.1}


def _id_codes(ids: list[str], device: torch.device) -> torch.Tensor:
    """Strings → int64 codes equal across ranks (for masking the same key shared by several queries)."""
    return torch.tensor(
        [int(hashlib.sha1(i.encode()).hexdigest()[:15], 16) for i in ids], dtype=torch.long, device=device
    )


class LLMEmbedderModule(RetrieverModule):
    """Trains the embedder on teacher rewards from the frozen LM.

    Args:
        temperature: τ of the student logits ``cos / τ`` (reference 0.01), applied once.
        teacher: :class:`TeacherScorer` options (``reward``, ``num_samples``, ``max_new_tokens``,
            ``key_max_tokens``, ``batch_size``, ...). ``reward`` is ``nll`` or ``rank_aware``.
        tasks: per-task overrides of :data:`templates.DEFAULT_TASKS` (instructions, template, distillation
            kind, loss weights, teacher temperature).
        weight_temperature: τ_w of the graded weights ``softmax(r / τ_w)``; ``None`` takes 1.0 for the nll
            reward and 0.1 for rank_aware ([ours]).
        graded_order: ``teacher`` (label-free: all candidates sorted by reward) or ``positive_first``.
        eval_task: whose instructions evaluation uses (``qa`` for the HotpotQA lab).
        prescore: score every training candidate at the start of fit (cached; resumable).

    Loss per batch (all of one task): ``distill_weight · L_distill + contrastive_weight · L_InfoNCE`` when both
    weights are positive, else the one active loss unweighted (as the reference code does). The contrastive
    positive is the labelled one when the data carries labels, else the teacher's favourite.
    """

    def __init__(
        self,
        temperature: float = 0.01,
        teacher: dict[str, Any] | None = None,
        tasks: dict[str, dict[str, Any]] | None = None,
        weight_temperature: float | None = None,
        graded_order: str = "teacher",
        eval_task: str = "qa",
        prescore: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if graded_order not in ("teacher", "positive_first"):
            raise ValueError(f"graded_order must be 'teacher' or 'positive_first', got '{graded_order}'")
        self.temperature = temperature
        self.settings: dict[str, TaskSettings] = task_settings(tasks)
        if eval_task not in self.settings:
            raise ValueError(f"eval_task '{eval_task}' is not a task (tasks: {', '.join(self.settings)})")
        self.eval_task = eval_task
        teacher = dict(teacher or {})
        self.reward = teacher.get("reward", "nll")
        self.teacher = TeacherScorer(self.frozen_lm, **teacher) if self.frozen_lm is not None else None
        self.weight_temperature = weight_temperature or DEFAULT_WEIGHT_TEMPERATURE.get(self.reward, 1.0)
        self.graded_order = graded_order
        self.prescore = prescore
        self.scoring_report: dict[str, Any] = {}

    # ---- instructions ---------------------------------------------------------------------------------------
    def encode_queries(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        prefix = self.settings[self.eval_task].query_instruction
        return super().encode_queries([prefix + t for t in texts], show_progress=show_progress)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> torch.Tensor:
        prefix = self.settings[self.eval_task].key_instruction
        return super().encode_documents([prefix + t for t in texts], show_progress=show_progress)

    def untrained_score_key(self) -> dict[str, Any] | None:
        key = super().untrained_score_key()
        if key is not None:
            settings = self.settings[self.eval_task]
            key["task_instructions"] = {"query": settings.query_instruction, "key": settings.key_instruction}
        return key

    # ---- teacher scores -------------------------------------------------------------------------------------
    def require_teacher(self, task: str) -> TeacherScorer:
        if self.teacher is None:
            raise ValueError(f"task '{task}' distils teacher scores but model.frozen_lm is null")
        return self.teacher

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        examples = getattr(datamodule, "examples", None)
        if not self.prescore or not examples:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        report: dict[str, Any] = {"reward": self.reward}
        for name, items in examples.items():
            task = items[0].task  # the task family (e.g. data set "nq" is a "qa" task)
            settings = self._settings(task)
            if not settings.uses_teacher:
                continue
            teacher = self.require_teacher(task)
            scoring = [ScoringItem(c, e.query, e.answer) for e in items for c in e.candidates]
            start = time.perf_counter()
            _, part = teacher.score(settings.template, scoring, rank, world)
            self.trainer.strategy.barrier("llm_embedder_teacher_scores")
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

    def _settings(self, task: str) -> TaskSettings:
        if task not in self.settings:
            raise ValueError(f"batch of unknown task '{task}' (configured: {', '.join(self.settings)})")
        return self.settings[task]

    # ---- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        task = batch["task"]
        settings = self._settings(task)
        num_queries = len(batch["queries"])
        group = len(batch["keys"]) // num_queries
        queries = gather_with_grad(
            self.embedder.embed([settings.query_instruction + q for q in batch["queries"]], "query")
        )
        keys = gather_with_grad(
            self.embedder.embed([settings.key_instruction + k for k in batch["keys"]], "document")
        )
        device = queries.device
        logits = queries @ keys.T / self.temperature
        columns = contiguous_candidate_columns(queries.shape[0], group, device)
        labels = gather_no_grad(batch["labels"].to(device)) if batch.get("labels") is not None else None

        teacher_scores = None
        if settings.uses_teacher:
            items = [
                ScoringItem(batch["keys"][b * group + j], batch["queries"][b], batch["answers"][b])
                for b in range(num_queries)
                for j in range(group)
            ]
            local = self.require_teacher(task).lookup(settings.template, items).view(num_queries, group)
            teacher_scores = gather_no_grad(local.to(device))
        positive_index = self._positive_index(labels, teacher_scores, task)

        losses: dict[str, torch.Tensor] = {}
        if teacher_scores is not None:
            if settings.distillation == "graded":
                losses["distill"] = graded_distillation_loss(
                    logits,
                    teacher_scores,
                    columns,
                    self.weight_temperature,
                    self.graded_order,
                    positive_index,
                )
            else:
                losses["distill"] = kl_distillation_loss(
                    logits.gather(1, columns), teacher_scores, settings.teacher_temperature
                )
        if settings.contrastive_weight > 0:
            targets = columns.gather(1, positive_index.view(-1, 1)).squeeze(1)
            exclude = self._same_or_positive_keys(batch, labels, targets, device)
            losses["contrastive"] = info_nce_loss(queries, keys, targets, exclude, self.temperature)
        if len(losses) == 2:
            loss = (
                settings.distill_weight * losses["distill"]
                + settings.contrastive_weight * losses["contrastive"]
            )
        else:
            loss = next(iter(losses.values()))
        size = num_queries
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log(f"train/loss_{task}", loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return self.checked_loss(loss * world_size(), batch_idx)

    @staticmethod
    def _positive_index(
        labels: torch.Tensor | None, teacher_scores: torch.Tensor | None, task: str
    ) -> torch.Tensor | None:
        """Each query's positive within its group: the first labelled one, else the teacher's favourite."""
        if labels is not None:
            return labels.float().argmax(dim=1)
        if teacher_scores is not None:
            return teacher_scores.argmax(dim=1)
        raise ValueError(
            f"task '{task}' trains contrastively but its data has no labels and no teacher scores"
        )

    @staticmethod
    def _same_or_positive_keys(
        batch: dict[str, Any], labels: torch.Tensor | None, targets: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """``[Q, D]``: keys equal to the query's target key (a tool shared by queries) or labelled positive."""
        codes = gather_no_grad(_id_codes(batch["key_ids"], device))
        exclude = codes.view(1, -1) == codes[targets].view(-1, 1)
        if labels is not None:
            group = labels.shape[1]
            own = torch.zeros_like(exclude)
            rows = torch.arange(labels.shape[0], device=device)
            own[rows.repeat_interleave(group), torch.arange(labels.numel(), device=device)] = labels.flatten()
            exclude = exclude | own
        return exclude

    def settings_dict(self) -> dict[str, dict[str, Any]]:
        return settings_as_dict(self.settings)
