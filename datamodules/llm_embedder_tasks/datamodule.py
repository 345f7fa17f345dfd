"""The multi-task DataModule of LLM-Embedder: several task families, homogeneous batches, one eval set.

Each task is configured by a dict (see :mod:`datamodules.llm_embedder_tasks.readers`); batches are
:class:`~datamodules.batch.RetrievalBatch` es of one task, each query with ``group_size`` candidate documents
and ``gold`` a ``[B, G]`` bool tensor, or ``None`` when the task is label-free. Retrieval evaluation (``callbacks.RetrievalEvaluation``) runs on a
BEIR folder given by ``eval`` (default: the vendored HotpotQA dev split).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.batch import Collator, RetrievalBatch, module_preparer, padded_codes
from datamodules.beir import load_beir_folder
from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.readers import load_task_examples
from datamodules.llm_embedder_tasks.sampler import BatchKey, HomogeneousTaskBatchSampler
from datamodules.llm_embedder_tasks.task_example import TaskExample
from datamodules.paths import resolve_data_path
from datamodules.records import RetrievalCorpus


class TaskGroupDataset(Dataset):
    """Item ``(task, i, epoch)``: example i of the task and the candidates of its group.

    With labels, the group is one sampled positive then ``G − 1`` sampled negatives (the reference's
    ``select_positive="random"``); without, ``G`` candidates sampled in their original order. Sampling
    is seeded by (seed, epoch, task, i), so a resumed run sees the same groups.
    """

    def __init__(self, examples: dict[str, list[TaskExample]], group_sizes: dict[str, int], seed: int):
        self.examples, self.group_sizes, self.seed = examples, group_sizes, seed
        for task, items in examples.items():
            size = group_sizes[task]
            short = [e.query_id for e in items if len(e.candidates) < size]
            if short:
                raise DataFormatError(
                    task,
                    f"{len(short)} example(s) have fewer than group_size={size} candidates "
                    f"(first: '{short[0]}'); lower data.tasks.{task}.group_size",
                )
            unlabeled = [e.query_id for e in items if e.labels is not None and not any(e.labels)]
            if unlabeled:
                raise DataFormatError(task, f"example '{unlabeled[0]}' has labels but no positive candidate")

    def __getitem__(self, key: BatchKey) -> dict[str, Any]:
        task, index, epoch = key
        example = self.examples[task][index]
        size = self.group_sizes[task]
        rng = random.Random(f"{self.seed}-{epoch}-{task}-{index}")
        if example.labels is None:
            group = sorted(rng.sample(range(len(example.candidates)), size))
        else:
            positives = [i for i, y in enumerate(example.labels) if y]
            negatives = [i for i, y in enumerate(example.labels) if not y]
            first = rng.choice(positives)
            rest = [i for i in positives + negatives if i != first]
            pool = negatives if len(negatives) >= size - 1 else rest
            group = [first, *rng.sample(pool, size - 1)]
        return {"example": example, "group": group, "epoch": epoch}

    def __len__(self) -> int:
        return sum(len(v) for v in self.examples.values())


def collate_task_groups(items: list[dict[str, Any]]) -> RetrievalBatch:
    """Texts, ids, codes and labels of one single-task batch."""
    tasks = {item["example"].task for item in items}
    if len(tasks) != 1:
        raise ValueError(f"a batch mixes tasks {sorted(tasks)}: use HomogeneousTaskBatchSampler")
    examples = [item["example"] for item in items]
    labeled = all(e.labels is not None for e in examples)
    document_ids = [[item["example"].candidate_ids[i] for i in item["group"]] for item in items]
    return RetrievalBatch(
        query_ids=[e.query_id for e in examples],
        queries=[e.query for e in examples],
        documents=[[item["example"].candidates[i] for i in item["group"]] for item in items],
        document_ids=document_ids,
        document_codes=padded_codes([[id_code(i) for i in row] for row in document_ids]),
        gold=torch.tensor([[item["example"].labels[i] for i in item["group"]] for item in items])
        if labeled
        else None,
        answers=[e.answers for e in examples],
        task=tasks.pop(),
        epoch=items[0]["epoch"],
    )


def id_code(document_id: str) -> int:
    """An int64 code of a document id, equal across ranks (60 bits of its SHA-1)."""
    return int(hashlib.sha1(document_id.encode()).hexdigest()[:15], 16)


class MultiTaskDataModule(L.LightningDataModule):
    """Several LLM-Embedder task families, one task per global batch, and a retrieval eval split.

    Args:
        tasks: ``{name: spec}``; each spec has the reader options of :func:`load_task_examples` plus
            ``weight`` (sampling weight, default 1) and ``group_size`` (keys per query, default 5).
        batch_size: queries per rank per step.
        eval: ``{"path": BEIR folder or alias, "split": str, "max_queries": int | None}``.
        steps_per_epoch: optional fixed epoch length.
        tiny: use the tiny HotpotQA fixture for QA and evaluation (``debug=tiny``).
    """

    def __init__(
        self,
        tasks: dict[str, dict[str, Any]],
        batch_size: int = 8,
        eval: dict[str, Any] | None = None,  # noqa: A002 - the config key users write
        steps_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        tiny: bool = False,
    ):
        super().__init__()
        if not tasks:
            raise ValueError("data.tasks is empty: configure at least one task")
        self.task_specs = {name: dict(spec or {}) for name, spec in tasks.items()}
        self.batch_size, self.steps_per_epoch, self.num_workers = batch_size, steps_per_epoch, num_workers
        self.seed, self.tiny = seed, tiny
        eval = dict(eval or {})
        self.path = "tiny_hotpotqa" if tiny else eval.get("path", "hotpotqa")
        self.eval_split = eval.get("split", "dev")
        self.max_eval_queries = eval.get("max_queries")
        self.hub_name = None
        self.corpus: RetrievalCorpus | None = None
        self.examples: dict[str, list[TaskExample]] = {}

    # ---- data ---------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.examples:
            for name, spec in self.task_specs.items():
                examples = load_task_examples(name, spec, self.tiny)
                if not examples:
                    raise DataFormatError(name, "the task produced no examples")
                self.examples[name] = examples

    def group_sizes(self) -> dict[str, int]:
        return {name: int(spec.get("group_size", 5)) for name, spec in self.task_specs.items()}

    def weights(self) -> dict[str, float]:
        return {name: float(spec.get("weight", 1.0)) for name, spec in self.task_specs.items()}

    def batch_sampler(self, num_replicas: int = 1, rank: int = 0) -> HomogeneousTaskBatchSampler:
        return HomogeneousTaskBatchSampler(
            {name: len(items) for name, items in self.examples.items()},
            self.batch_size,
            self.weights(),
            num_replicas=num_replicas,
            rank=rank,
            seed=self.seed,
            steps_per_epoch=self.steps_per_epoch,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        num_replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        dataset = TaskGroupDataset(self.examples, self.group_sizes(), self.seed)
        return DataLoader(
            dataset,
            batch_sampler=self.batch_sampler(num_replicas, rank),
            collate_fn=Collator(collate_task_groups, module_preparer(trainer)),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        """One placeholder batch: retrieval evaluation runs in ``callbacks.RetrievalEvaluation``."""
        return DataLoader([0], batch_size=1)

    # ---- evaluation (the interface RetrievalEvaluation reads) ------------------------------------------------
    def load_corpus(self) -> RetrievalCorpus:
        if self.corpus is None:
            self.corpus = load_beir_folder(resolve_data_path(self.path), [self.eval_split])
        return self.corpus

    def eval_queries(self) -> list:
        queries = self.load_corpus().split_queries(self.eval_split)
        return queries[: self.max_eval_queries] if self.max_eval_queries else queries
