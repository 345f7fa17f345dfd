"""The DataModule every method trains from: queries with positives and hard negatives, plus an eval split.

Sampling is deterministic in (seed, epoch, example index), so a resumed run sees the same batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.beir import load_beir_folder, load_beir_from_hub
from datamodules.errors import DataFormatError
from datamodules.mining import bm25_top_k
from datamodules.paths import resolve_data_path
from datamodules.qa_candidates import load_qa_candidates
from datamodules.records import Document, RetrievalCorpus


@dataclass(frozen=True)
class TrainExample:
    query_id: str
    query: str
    answers: tuple[str, ...]
    positives: tuple[Document, ...]
    negatives: tuple[Document, ...]


class EpochAwareSampler(Sampler):
    """Yields ``(index, epoch)`` in a seeded per-epoch order; Lightning calls ``set_epoch``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return iter([(i, self.epoch) for i in order])

    def __len__(self) -> int:
        return self.size


class GroupDataset(Dataset):
    """Item ``(i, epoch)``: query i with one sampled positive and ``group_size − 1`` sampled negatives."""

    def __init__(self, examples: list[TrainExample], group_size: int, seed: int):
        self.examples, self.group_size, self.seed = examples, group_size, seed

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        example = self.examples[index]
        rng = random.Random(f"{self.seed}-{epoch}-{index}")
        positive = rng.choice(example.positives)
        want = self.group_size - 1
        pool = list(example.negatives)
        negatives = rng.sample(pool, want) if len(pool) >= want else [rng.choice(pool) for _ in range(want)] if pool else []
        return {"example": example, "documents": [positive, *negatives]}


class RetrievalDataModule(L.LightningDataModule):
    """Training groups and an evaluation split from a BEIR folder (with optional QA candidates).

    Args:
        path: a local BEIR folder or an alias (``hotpotqa``: the vendored sample; ``tiny_hotpotqa``: the
            in-repo fixture). Ignored when ``hub_name`` is set.
        hub_name: a hub data set (e.g. ``BeIR/scifact``) loaded with ``datasets.load_dataset``.
        negatives: ``candidates`` (the QA file's non-supporting paragraphs; they come with the gold ones),
            ``bm25`` (mined from the corpus, label-free), or ``random`` (random corpus documents).
        group_size: documents per query in a batch (1 positive + group_size−1 negatives).
        tiny: use the tiny fixture instead of ``path`` (set by ``debug=tiny``).
    """

    def __init__(
        self,
        path: str = "hotpotqa",
        hub_name: str | None = None,
        qa_file: str | None = "qa_candidates.jsonl",
        train_split: str = "train",
        eval_split: str = "dev",
        negatives: str = "candidates",
        group_size: int = 4,
        batch_size: int = 16,
        max_train_queries: int | None = None,
        max_eval_queries: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        tiny: bool = False,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ):
        super().__init__()
        if negatives not in ("candidates", "bm25", "random"):
            raise ValueError(f"data.negatives must be one of candidates, bm25, random; got '{negatives}'")
        if group_size < 1:
            raise ValueError(f"data.group_size must be >= 1, got {group_size}")
        self.path = "tiny_hotpotqa" if tiny else path
        self.hub_name = None if tiny else hub_name
        self.qa_file, self.train_split, self.eval_split = qa_file, train_split, eval_split
        self.negatives, self.group_size, self.batch_size = negatives, group_size, batch_size
        self.max_train_queries, self.max_eval_queries = max_train_queries, max_eval_queries
        self.num_workers, self.seed = num_workers, seed
        self.collate = collate or collate_groups
        self.corpus: RetrievalCorpus | None = None
        self.train_examples: list[TrainExample] = []
        self.doc_index: dict[str, int] = {}

    # ---- loading ----------------------------------------------------------------------------------------
    def load_corpus(self) -> RetrievalCorpus:
        if self.corpus is None:
            splits = sorted({self.train_split, self.eval_split})
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
        qrels = corpus.qrels[self.train_split]
        query_ids = sorted(qrels)
        if self.max_train_queries is not None:
            query_ids = query_ids[: self.max_train_queries]
        folder = resolve_data_path(self.path)
        candidates: dict[str, list] = {}
        if self.negatives == "candidates":
            if self.hub_name or not self.qa_file or not (folder / self.qa_file).exists():
                raise DataFormatError(folder / str(self.qa_file), "negatives=candidates needs a QA candidates file; use negatives=bm25 for plain BEIR data")
            candidates = {ex.query.query_id: ex.negatives for ex in load_qa_candidates(folder / self.qa_file, set(query_ids))}
        elif self.negatives == "bm25":
            documents = list(corpus.corpus.values())
            top = bm25_top_k([corpus.queries[q].text for q in query_ids], documents, k=max(4 * self.group_size, 20))
            candidates = {
                q: [documents[i] for i in row if documents[i].doc_id not in qrels[q]] for q, row in zip(query_ids, top)
            }
        examples = []
        documents = list(corpus.corpus.values())
        for qid in query_ids:
            query = corpus.queries[qid]
            positives = tuple(corpus.corpus[d] for d, rel in qrels[qid].items() if rel > 0)
            if not positives:
                continue
            if self.negatives == "random":
                rng = random.Random(f"{self.seed}-{qid}")
                negatives = tuple(d for d in rng.sample(documents, min(len(documents), 4 * self.group_size)) if d.doc_id not in qrels[qid])
            else:
                negatives = tuple(candidates.get(qid, ()))
            examples.append(TrainExample(qid, query.text, query.answers, positives, negatives))
        if not examples:
            raise DataFormatError(folder, f"split '{self.train_split}' has no query with a relevant document")
        return examples

    # ---- loaders ----------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        dataset = GroupDataset(self.train_examples, self.group_size, self.seed)
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=EpochAwareSampler(len(dataset), self.seed),
            collate_fn=self._collate, num_workers=self.num_workers, drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """One placeholder batch: retrieval evaluation itself runs in ``callbacks.RetrievalEvaluation``."""
        return DataLoader([0], batch_size=1)

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(items, self.doc_index)

    def eval_queries(self) -> list:
        queries = self.load_corpus().split_queries(self.eval_split)
        return queries[: self.max_eval_queries] if self.max_eval_queries else queries


def collate_groups(items: list[dict[str, Any]], doc_index: dict[str, int]) -> dict[str, Any]:
    """Raw texts plus integer ids: the format every method's ``training_step`` reads."""
    examples = [item["example"] for item in items]
    documents = [doc for item in items for doc in item["documents"]]
    width = max(len(ex.positives) for ex in examples)
    positive_ids = torch.full((len(examples), width), -1, dtype=torch.long)
    for row, ex in enumerate(examples):
        for col, doc in enumerate(ex.positives):
            positive_ids[row, col] = doc_index.get(doc.doc_id, -1)
    return {
        "query_ids": [ex.query_id for ex in examples],
        "queries": [ex.query for ex in examples],
        "answers": [list(ex.answers) for ex in examples],
        "documents": [doc.as_text() for doc in documents],
        "document_ids": torch.tensor([doc_index.get(doc.doc_id, -1) for doc in documents], dtype=torch.long),
        "labels": torch.tensor([[doc.doc_id in {p.doc_id for p in ex.positives} for doc in item["documents"]]
                                for ex, item in zip(examples, items)]),
        "positive_ids": positive_ids,
    }
