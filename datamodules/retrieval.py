"""The DataModule every method trains from: queries with positives and hard negatives, plus an eval split.

Sampling is deterministic in (seed, epoch, example index), so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.batch import Collator, RetrievalBatch, module_preparer, padded_codes
from datamodules.beir import load_beir_folder, load_beir_from_hub
from datamodules.hub_export import cached_export
from datamodules.missing import check_policy
from datamodules.paths import resolve_data_path
from datamodules.records import RetrievalCorpus, TrainExample
from datamodules.train_examples import NEGATIVE_SOURCES, ExampleSettings, build_train_examples


class EpochAwareSampler(DistributedSampler):
    """Yields ``(index, epoch)`` in a seeded per-epoch order; Lightning calls ``set_epoch``.

    Across ``num_replicas`` ranks, rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of the one global
    order (cut to equal shares), so the ranks' batches of step ``k`` together are the single-process batch of
    ``W × batch_size`` at step ``k``. It is a ``DistributedSampler`` so that Lightning uses it as it is:
    Lightning would otherwise wrap it in a sampler that reshuffles the order with its own generator and
    never passes the epoch on.

    Resumable mid-epoch: after :meth:`resume_at` ``(epoch, skip)`` the next iteration continues that
    epoch's share after its first ``skip`` samples, exactly where an interrupted run stopped.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        # DistributedSampler's own __init__ is not called: it needs a dataset and an initialised group
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, True
        self.num_samples = size // num_replicas
        self.total_size = self.num_samples * num_replicas
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        """Make the next iteration start ``skip`` samples into this rank's share of ``epoch``."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"cannot resume {skip} samples into an epoch of {self.num_samples} (this rank)")
        self._resume = (epoch, skip)

    def order(self, epoch: int) -> list[int]:
        """The global order of ``epoch`` (every rank computes the same one)."""
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, 0
        if self._resume is not None:
            (epoch, skip), self._resume = self._resume, None
            self.epoch = epoch
        share = self.order(epoch)[self.rank : self.total_size : self.num_replicas]
        return iter([(i, epoch) for i in share[skip:]])

    def __len__(self) -> int:
        return self.num_samples


class GroupDataset(Dataset):
    """Item ``(i, epoch)``: query i with ``positives_per_query`` sampled positives (the first one always
    present) followed by sampled negatives, ``group_size`` documents in all."""

    def __init__(
        self, examples: list[TrainExample], group_size: int, seed: int, positives_per_query: int = 1
    ):
        if not 1 <= positives_per_query <= group_size:
            raise ValueError(
                f"data.positives_per_query must be in [1, group_size={group_size}], got {positives_per_query}"
            )
        self.examples, self.group_size, self.seed = examples, group_size, seed
        self.positives_per_query = positives_per_query

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        example = self.examples[index]
        rng = random.Random(f"{self.seed}-{epoch}-{index}")
        positives = list(example.positives)
        rng.shuffle(positives)
        positives = positives[: self.positives_per_query]
        want = self.group_size - len(positives)
        pool = list(example.negatives)
        negatives = (
            rng.sample(pool, want)
            if len(pool) >= want
            else [rng.choice(pool) for _ in range(want)]
            if pool
            else []
        )
        return {"example": example, "documents": [*positives, *negatives], "epoch": epoch}


class RetrievalDataModule(L.LightningDataModule):
    """Training groups and an evaluation split from a BEIR folder (with optional QA candidates).

    Args:
        path: a local BEIR folder or an alias (``hotpotqa``: the vendored sample; ``tiny_hotpotqa``: the
            in-repo fixture). Ignored when ``hub_name`` is set.
        hub_name: a BEIR-layout hub data set (e.g. ``mteb/scifact``) loaded with ``datasets.load_dataset``.
        hub_sources: hub QA sets (``msmarco``, ``nq``, ``hotpotqa``, or ``{name, max_train_queries,
            max_dev_queries}``) written once as a cached local folder (:mod:`datamodules.hub_export`),
            then read like ``path``.
        negatives: ``candidates`` (the QA file's non-supporting paragraphs; they come with the gold ones),
            ``bm25`` (mined from the corpus, label-free), or ``random`` (random corpus documents).
        group_size: documents per query in a batch (positives first, then negatives).
        positives_per_query: how many of a query's positives each group holds (multi-positive losses).
        tiny: use the tiny fixture (its ``train`` / ``dev`` splits) instead of the data (set by ``debug=tiny``).
        on_missing: a training question without a relevant document or (QA file) without an answer:
            ``error`` (default: the message names file and line) or ``skip`` (left out, counted in a notice).
    """

    def __init__(
        self,
        path: str = "hotpotqa",
        hub_name: str | None = None,
        hub_sources: list[str | dict[str, Any]] | None = None,
        qa_file: str | None = "qa_candidates.jsonl",
        train_split: str = "train",
        eval_split: str = "dev",
        negatives: str = "candidates",
        group_size: int = 4,
        positives_per_query: int = 1,
        batch_size: int = 16,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        tiny: bool = False,
        on_missing: str = "error",
        collate: Callable[[list[dict[str, Any]], dict[str, int]], RetrievalBatch] | None = None,
    ):
        super().__init__()
        if negatives not in NEGATIVE_SOURCES:
            raise ValueError(f"data.negatives must be one of candidates, bm25, random; got '{negatives}'")
        if group_size < 1:
            raise ValueError(f"data.group_size must be >= 1, got {group_size}")
        self.path = "tiny_hotpotqa" if tiny else path
        self.hub_name = None if tiny else hub_name
        self.hub_sources = None if tiny else hub_sources
        self.qa_file, self.train_split, self.eval_split = qa_file, train_split, eval_split
        if tiny:  # the fixture replaces the data, its splits come along (a hub set's "test" is not there)
            self.train_split, self.eval_split = "train", "dev"
        self.negatives, self.group_size, self.batch_size = negatives, group_size, batch_size
        self.positives_per_query = positives_per_query
        self.on_missing = check_policy(on_missing)
        self.max_train_queries, self.max_eval_queries = max_train_queries, max_eval_queries
        self.num_workers, self.seed = num_workers, seed
        self.collate = collate or collate_groups
        self.corpus: RetrievalCorpus | None = None
        self.train_examples: list[TrainExample] = []
        self.doc_index: dict[str, int] = {}
        self._sampler: EpochAwareSampler | None = None
        self._resume_position: tuple[int, int, int] | None = None  # (epoch, batches done, training-set size)

    # ---- loading ----------------------------------------------------------------------------------------
    def load_corpus(self) -> RetrievalCorpus:
        if self.corpus is None:
            splits = sorted({self.train_split, self.eval_split})
            if self.hub_sources:
                self.path = str(cached_export(list(self.hub_sources), self.on_missing))
            if self.hub_name:
                self.corpus = load_beir_from_hub(self.hub_name, splits)
            else:
                self.corpus = load_beir_folder(resolve_data_path(self.path), splits)
            self.doc_index = {doc_id: i for i, doc_id in enumerate(self.corpus.corpus)}
        return self.corpus

    def setup(self, stage: str | None = None) -> None:
        corpus = self.load_corpus()
        if stage in (None, "fit") and not self.train_examples:
            self.train_examples = self._build_train_examples(corpus)

    def _build_train_examples(self, corpus: RetrievalCorpus) -> list[TrainExample]:
        settings = ExampleSettings(
            split=self.train_split,
            negatives=self.negatives,
            group_size=self.group_size,
            seed=self.seed,
            on_missing=self.on_missing,
            max_queries=self.max_train_queries,
        )
        qa_path = None if self.hub_name or not self.qa_file else resolve_data_path(self.path) / self.qa_file
        return build_train_examples(corpus, settings, qa_path)

    # ---- loaders ----------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        dataset = GroupDataset(self.train_examples, self.group_size, self.seed, self.positives_per_query)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.resumable_sampler(len(dataset)),
            collate_fn=Collator(self._collate, module_preparer(self.trainer)),
            num_workers=self.num_workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),  # leaves the global RNG (dropout) untouched
        )

    def resumable_sampler(self, size: int) -> EpochAwareSampler:
        """The training sampler over ``size`` items whose position is saved in every checkpoint and restored
        on resume, mid-epoch included (subclasses with their own ``train_dataloader`` should use it too).
        Under several ranks it is this rank's share of the one global order."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self._sampler = EpochAwareSampler(size, self.seed, num_replicas=world, rank=rank)
        if self._resume_position is not None:
            epoch, batches_done, saved_size = self._resume_position
            if saved_size != size:  # the training data changed between attempts: positions mean nothing
                warnings.warn(
                    f"the training set has {size} items, the checkpoint's had {saved_size}: restarting epoch {epoch}",
                    stacklevel=2,
                )
                batches_done = 0
            share = self._sampler.num_samples
            if batches_done >= share // self.batch_size:  # stopped after an epoch's last batch
                epoch, batches_done = epoch + 1, 0
            self._sampler.resume_at(epoch, min(batches_done * self.batch_size, share))
            self._resume_position = None
        return self._sampler

    # ---- mid-epoch resume: the position in the data order travels in every checkpoint ------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_done", ...}`` of the running epoch; Lightning stores it in each checkpoint.

        ``batches_done`` is the trainer's count of processed batches in this epoch (not the loader's,
        which runs one batch ahead because Lightning prefetches), so the restored order matches the
        batch Lightning resumes at: after a kill, a preemption save or a periodic checkpoint alike.
        """
        trainer = self.trainer
        if self._sampler is None or trainer is None:
            return {}
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "epoch": self._sampler.epoch,
            "batches_done": int(processed),
            "batch_size": self.batch_size,
            "num_examples": self._sampler.size,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        now = {"batch_size": self.batch_size, "seed": self.seed}
        changed = {k: (state_dict.get(k), v) for k, v in now.items() if state_dict.get(k) != v}
        if changed:
            raise ValueError(
                "cannot resume the data order mid-epoch: the checkpoint was written with different data settings "
                + ", ".join(f"{k} {old} (now {new})" for k, (old, new) in changed.items())
            )
        self._resume_position = (
            int(state_dict["epoch"]),
            int(state_dict["batches_done"]),
            int(state_dict["num_examples"]),
        )

    def val_dataloader(self) -> DataLoader:
        """One placeholder batch: retrieval evaluation itself runs in ``callbacks.RetrievalEvaluation``."""
        return DataLoader([0], batch_size=1)

    def _collate(self, items: list[dict[str, Any]]) -> RetrievalBatch:
        return self.collate(items, self.doc_index)

    def eval_queries(self) -> list:
        queries = self.load_corpus().split_queries(self.eval_split)
        return queries[: self.max_eval_queries] if self.max_eval_queries else queries


def collate_groups(items: list[dict[str, Any]], doc_index: dict[str, int]) -> RetrievalBatch:
    """The texts, ids, corpus codes and labels of sampled groups (each query's positives first)."""
    examples = [item["example"] for item in items]
    groups = [item["documents"] for item in items]
    gold_ids = [{p.doc_id for p in ex.positives} for ex in examples]
    return RetrievalBatch(
        query_ids=[ex.query_id for ex in examples],
        queries=[ex.query for ex in examples],
        documents=[[doc.as_text() for doc in group] for group in groups],
        document_ids=[[doc.doc_id for doc in group] for group in groups],
        document_codes=padded_codes([[doc_index.get(doc.doc_id, -1) for doc in group] for group in groups]),
        gold=torch.tensor([[doc.doc_id in gold for doc in group] for gold, group in zip(gold_ids, groups)]),
        answers=[tuple(ex.answers) for ex in examples],
        positive_codes=padded_codes([[doc_index.get(p.doc_id, -1) for p in ex.positives] for ex in examples]),
        epoch=items[0]["epoch"] if items else 0,
    )
