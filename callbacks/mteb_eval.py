"""MTEB evaluation at validation time: ``mteb.evaluate`` on a configured task list, logged per task.

Logs ``mteb/<task>/<metric>`` (e.g. ``mteb/hotpotqa-dev/ndcg_at_10``) and ``mteb/mean`` (the mean of the
tasks' main scores), usable as the ``ModelCheckpoint`` monitor, and writes ``<run>/mteb/step_<N>.json``.

Distributed (DDP/FSDP): every rank runs the same ``mteb.evaluate``; inside it each ``encode`` call is
split into equal shards across ranks and all-gathered (``callbacks.retrieval_eval.encode_sharded``, which
also routes FSDP calls through the wrapped ``forward``), so every rank runs the same forward passes and
holds the same embeddings; rank 0's scores are then broadcast, so every rank logs identical values (a
checkpoint monitor must agree across ranks). mteb's result cache is never used (``cache=None``): a model
under training changes every step.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from datamodules.protocols import CorpusSource
from retrieval.cache import write_json_atomically

DEFAULT_METRICS = ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10")
DATAMODULE_SPEC = "datamodule"


def summarize(model_result: Any, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """``{task: {"main_score": x, metric: y, ...}}`` from an mteb ``ModelResult``.

    Each value is the mean over the task's evaluated splits and subsets (one each for a BEIR task).
    A task that failed inside mteb raises, naming the task and mteb's message.
    """
    if getattr(model_result, "exceptions", None):
        failed = "; ".join(f"{e.task_name}: {e.exception}" for e in model_result.exceptions)
        raise RuntimeError(f"mteb evaluation failed: {failed}")
    summary: dict[str, dict[str, float]] = {}
    for task_result in model_result.task_results:
        rows = [scores for split_scores in task_result.scores.values() for scores in split_scores]
        if not rows:
            raise RuntimeError(f"mteb returned no scores for task {task_result.task_name}")
        entry = {"main_score": float(np.mean([row["main_score"] for row in rows]))}
        for metric in metrics:
            values = [row[metric] for row in rows if isinstance(row.get(metric), int | float)]
            if len(values) == len(rows):
                entry[metric] = float(np.mean(values))
        summary[task_result.task_name] = entry
    return summary


def mean_main_score(summary: dict[str, dict[str, float]]) -> float:
    return float(np.mean([entry["main_score"] for entry in summary.values()]))


def run_mteb(
    encoder: Any, tasks: Sequence[Any], metrics: Sequence[str] = DEFAULT_METRICS, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """Run ``mteb.evaluate`` without its result cache or CO2 tracker and summarise the scores."""
    import mteb

    result = mteb.evaluate(
        encoder,
        list(tasks),
        cache=None,
        co2_tracker=False,
        show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
    )
    return summarize(result, metrics)


TINY_TASK = "tiny_hotpotqa@dev"  # what hub tasks become under debug=tiny (offline, seconds)


def tiny_task_specs(specs: Sequence[str]) -> list[str]:
    """``specs`` with every hub task (a name, a benchmark, a named set) replaced by the in-repo fixture."""
    from datamodules.mteb_tasks import parse_local_spec

    kept = [s for s in specs if s == DATAMODULE_SPEC or parse_local_spec(s) is not None]
    return kept + ([TINY_TASK] if len(kept) < len(specs) and TINY_TASK not in kept else [])


class MTEBCallback(L.Callback):
    """Evaluate the module with mteb at every validation, and on ``final_tasks`` once when fit ends.

    Args:
        tasks: task specs (see :mod:`datamodules.mteb_tasks`): local BEIR folders/aliases ``path[@split]``,
            mteb task or benchmark names, or ``datamodule`` (the trainer datamodule's own folder and eval
            split, i.e. the same data as ``RetrievalEvaluation``; under ``debug=tiny`` the fixture).
        metrics: mteb score names to log per task, besides the main score.
        title_separator: document text = ``title + separator + text`` (``" "``: mteb's convention;
            ``": "``: the same texts as ``RetrievalEvaluation``).
        max_queries: evaluate only the first N judged queries of local tasks.
        name: model name in mteb results (default: the experiment name from the run directory).
        prefix: log key prefix.
        final_tasks: task specs evaluated once at the end of fit (e.g. the full ``beir`` set while
            ``tasks`` is ``nanobeir``); written to ``<run>/mteb/final.json``. Their names are checked at
            setup, their data loaded only at the end.
        tiny: ``debug=tiny``: hub tasks become the in-repo fixture (:data:`TINY_TASK`).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        metrics: Sequence[str] = DEFAULT_METRICS,
        title_separator: str = " ",
        max_queries: int | None = None,
        name: str | None = None,
        prefix: str = "mteb",
        final_tasks: Sequence[str] = (),
        tiny: bool = False,
    ):
        if not tasks:
            raise ValueError(
                "MTEBCallback needs at least one task (a BEIR folder, 'datamodule', or an mteb task name)"
            )
        self.task_specs = tiny_task_specs(tasks) if tiny else list(tasks)
        self.final_specs = tiny_task_specs(final_tasks) if tiny and final_tasks else list(final_tasks)
        self.final_tasks: list[Any] | None = None
        self.metrics = tuple(metrics)
        self.title_separator = title_separator
        self.max_queries = max_queries
        self.name = name
        self.prefix = prefix
        self.tasks: list[Any] | None = None
        self.history: list[dict[str, Any]] = []

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    # ---- tasks ----------------------------------------------------------------------------------------
    def resolve(self, trainer: L.Trainer) -> list[Any]:
        """Build (once) and load the task objects; ``datamodule`` becomes the datamodule's eval data."""
        from datamodules.mteb_tasks import LocalBEIRRetrieval, preload, resolve_tasks

        if self.tasks is None:
            tasks: list[Any] = []
            for spec in self.task_specs:
                if spec == DATAMODULE_SPEC:
                    tasks.append(self.datamodule_task(trainer, LocalBEIRRetrieval))
                else:
                    tasks.extend(resolve_tasks([spec], max_queries=self.max_queries))
            names = [t.metadata.name for t in tasks]
            if len(set(names)) != len(names):
                raise ValueError(f"MTEBCallback tasks must have distinct names, got {names}")
            preload(tasks)
            self.tasks = tasks
        return self.tasks

    def datamodule_task(self, trainer: L.Trainer, task_class: type) -> Any:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, CorpusSource) or datamodule.hub_name:
            raise ValueError(
                "the 'datamodule' MTEB task needs a RetrievalDataModule reading a local folder (data.path)"
            )
        from datamodules.paths import ALIASES, resolve_data_path

        folder = resolve_data_path(datamodule.path)
        name = f"{datamodule.path if datamodule.path in ALIASES else folder.name}-{datamodule.eval_split}"
        max_queries = datamodule.max_eval_queries or self.max_queries
        return task_class(folder, split=datamodule.eval_split, name=name, max_queries=max_queries)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve and load the tasks before training, so a bad spec or an offline hub task fails at once;
        the final tasks are resolved (names checked) but loaded only when fit ends."""
        from datamodules.mteb_tasks import resolve_tasks

        self.resolve(trainer)
        if self.final_specs and self.final_tasks is None:
            self.final_tasks = resolve_tasks(self.final_specs, max_queries=self.max_queries)

    # ---- evaluation -----------------------------------------------------------------------------------
    def model_name(self, trainer: L.Trainer) -> str:
        if self.name:
            return self.name
        parts = Path(trainer.default_root_dir).resolve().parts
        return parts[-3] if len(parts) >= 3 else parts[-1]

    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, tasks: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        """Scores of every task (default: ``tasks``); the module encodes with its own settings
        (``eval_batch_size``, ``eval_precision``)."""
        from callbacks.retrieval_eval import encode_sharded
        from lightning_modules.mteb_encoder import MTEBEncoder

        encoder = MTEBEncoder(
            pl_module,
            name=self.model_name(trainer),
            revision=f"step-{trainer.global_step}",
            title_separator=self.title_separator,
            encode_fn=lambda method, texts: encode_sharded(trainer, pl_module, method, texts),
        )
        start = time.perf_counter()
        scores = run_mteb(encoder, self.resolve(trainer) if tasks is None else tasks, self.metrics)
        return {
            "tasks": scores,
            "mean": mean_main_score(scores),
            "seconds": round(time.perf_counter() - start, 2),
            "title_separator": self.title_separator,
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record = self.evaluate(trainer, pl_module)  # on every rank: the encoders' collectives need them all
        if trainer.world_size > 1:
            record = trainer.strategy.broadcast(record, src=0)
        record = {**record, "step": trainer.global_step}
        self.history.append(record)
        for task, entry in record["tasks"].items():
            for metric, value in entry.items():
                pl_module.log(f"{self.prefix}/{task}/{metric}", value, sync_dist=False, rank_zero_only=False)
        pl_module.log(f"{self.prefix}/mean", record["mean"], sync_dist=False, rank_zero_only=False)
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "mteb" / f"step_{record['step']:06d}.json"
            write_json_atomically(out, record)
            summary = ", ".join(
                f"{task} {entry['main_score']:.4f}" for task, entry in record["tasks"].items()
            )
            rank_zero_info(
                f"[mteb step {record['step']}] {summary}; mean {record['mean']:.4f} ({record['seconds']:.0f} s)"
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final task set, once, on the trained module (every rank encodes; rank 0 writes)."""
        if not self.final_specs or trainer.global_step == 0:
            return
        from datamodules.mteb_tasks import preload

        tasks = self.final_tasks or []
        preload(tasks)
        record = {**self.evaluate(trainer, pl_module, tasks), "step": trainer.global_step, "final": True}
        self.history.append(record)
        if trainer.is_global_zero:
            write_json_atomically(Path(trainer.default_root_dir) / "mteb" / "final.json", record)
            rank_zero_info(
                f"[mteb final, step {record['step']}] mean {record['mean']:.4f} ({record['seconds']:.0f} s)"
            )


def format_table(summary: dict[str, dict[str, float]], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """A markdown table: one row per task, the main score then each metric."""
    columns = ["main_score", *[m for m in metrics if any(m in entry for entry in summary.values())]]
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for task, entry in summary.items():
        lines.append(
            f"| {task} | " + " | ".join(f"{entry[c]:.4f}" if c in entry else "–" for c in columns) + " |"
        )
    return "\n".join(lines) + "\n"
