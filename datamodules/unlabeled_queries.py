"""Unlabeled training queries (LLM2Vec-Gen trains on queries alone) with the usual retrieval eval split.

Training batches are query-only :class:`~datamodules.batch.RetrievalBatch` es; evaluation (corpus, eval split) comes from
:class:`RetrievalDataModule` unchanged, so the retrieval callback works as for every other method.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.batch import Collator, RetrievalBatch, module_preparer
from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, iter_rows
from datamodules.jsonl import read_jsonl, require_field
from datamodules.records import Query
from datamodules.retrieval import RetrievalDataModule
from retrieval.cache import build_dir_atomically, cache_root

QUERY_SETS = {"nq_open": Path(__file__).resolve().parent / "data" / "nq_open" / "queries.jsonl"}
TRAIN_SPLIT_QUERIES = "train_split"
# Tulu-3 SFT prompts, as the LLM2Vec-Gen reference builds its training questions (McGill-NLP/llm2vec-gen
# scripts/upload_responses_to_hf.py): the first message of every two-message conversation.
HUB_QUERY_SETS = {"tulu": HubTable("vaibhavad/tulu-3-sft-mixture", split="train")}


def single_turn_question(row: dict[str, Any]) -> str | None:
    """The user message of a two-message (user, assistant) conversation; None for any other row."""
    messages = row.get("messages") or []
    if len(messages) != 2 or messages[0].get("role") != "user" or messages[1].get("role") != "assistant":
        return None
    text = (messages[0].get("content") or "").strip()
    return text or None


def write_hub_queries(name: str, folder: Path, max_queries: int | None, seed: int) -> None:
    """``folder/queries.jsonl`` from a hub prompt set, streamed; with ``max_queries``, a seeded uniform
    sample of the qualifying rows (reservoir sampling, so the whole table is seen once, in order)."""
    rng = random.Random(f"{seed}-{name}")
    kept: list[tuple[str, str]] = []
    seen = 0
    for index, row in enumerate(iter_rows(HUB_QUERY_SETS[name], streaming=True)):
        text = single_turn_question(row)
        if text is None:
            continue
        item = (str(row.get("id") or f"{name}-{index}"), text)
        seen += 1
        if max_queries is None or len(kept) < max_queries:
            kept.append(item)
        elif (slot := rng.randrange(seen)) < max_queries:
            kept[slot] = item
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in kept:
            handle.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")


def cached_hub_queries(name: str, max_queries: int | None, seed: int) -> Path:
    """The queries file of a hub prompt set (built once into the cache, atomically)."""
    table = HUB_QUERY_SETS[name]
    key = hashlib.sha256(json.dumps([name, table.path, table.split, max_queries, seed]).encode()).hexdigest()[
        :20
    ]
    folder = build_dir_atomically(
        cache_root() / "hub_queries" / key, lambda tmp: write_hub_queries(name, tmp, max_queries, seed)
    )
    return folder / "queries.jsonl"


def load_unlabeled_queries(path: str | Path) -> list[Query]:
    """Queries from a JSONL file of ``{"_id": str, "text": str}`` objects (BEIR ``queries.jsonl`` layout).

    Raises :class:`DataFormatError` naming file, line and field for a missing/ill-typed field, an empty
    text or a duplicate id.
    """
    path = Path(path)
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for line, obj in read_jsonl(path):
        query_id = require_field(obj, "_id", str, path, line)
        text = require_field(obj, "text", str, path, line)
        if not text.strip():
            raise DataFormatError(path, "empty query text", line, "text")
        if query_id in seen:
            raise DataFormatError(
                path, f"duplicate query id '{query_id}' (first on line {seen[query_id]})", line, "_id"
            )
        seen[query_id] = line
        queries.append(Query(query_id, text))
    if not queries:
        raise DataFormatError(path, "no queries")
    return queries


class QueryDataset(Dataset):
    def __init__(self, queries: list[Query]):
        self.queries = queries

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, key: tuple[int, int] | int) -> Query:
        index = key[0] if isinstance(key, tuple) else key
        return self.queries[index]


def collate_queries(items: list[Query]) -> RetrievalBatch:
    """A query-only batch: no documents (each query's group is empty)."""
    return RetrievalBatch(
        query_ids=[q.query_id for q in items],
        queries=[q.text for q in items],
        documents=[[] for _ in items],
        document_ids=[[] for _ in items],
        document_codes=torch.empty(len(items), 0, dtype=torch.long),
    )


class UnlabeledQueryDataModule(RetrievalDataModule):
    """Unlabeled queries for training; the corpus and eval split of ``path`` for evaluation.

    Args:
        queries: ``nq_open`` (the vendored 1,000-question NQ-open sample), ``tulu`` (Tulu-3 SFT prompts
            from the hub, ``vaibhavad/tulu-3-sft-mixture``: single-turn user messages, as the reference;
            ``max_train_queries`` of them sampled once and cached), a JSONL file of
            ``{"_id", "text"}``, or ``train_split``: the question texts of ``path``'s train split (no
            labels are read). ``tiny`` (debug=tiny) forces ``train_split`` of the tiny fixture, whose
            words the tiny models' tokenizer knows.
        max_train_queries: keep a seeded random sample of this many queries (None: all).
        **kwargs: :class:`RetrievalDataModule` arguments (``path``, ``eval_split``, ``batch_size``, ...).
    """

    def __init__(self, queries: str = "nq_open", max_train_queries: int | None = None, **kwargs: Any):
        kwargs.setdefault("negatives", "random")
        super().__init__(**kwargs)
        self.queries_source = TRAIN_SPLIT_QUERIES if kwargs.get("tiny") else queries
        self.max_unlabeled = max_train_queries
        self.train_queries: list[Query] = []

    def setup(self, stage: str | None = None) -> None:
        corpus = self.load_corpus()
        if stage in (None, "fit") and not self.train_queries:
            if self.queries_source == TRAIN_SPLIT_QUERIES:
                queries = [Query(q.query_id, q.text) for q in corpus.split_queries(self.train_split)]
            elif self.queries_source in HUB_QUERY_SETS:
                path = cached_hub_queries(self.queries_source, self.max_unlabeled, self.seed)
                queries = load_unlabeled_queries(path)
            else:
                queries = load_unlabeled_queries(
                    QUERY_SETS.get(self.queries_source, Path(self.queries_source).expanduser())
                )
            if self.max_unlabeled is not None and self.max_unlabeled < len(queries):
                chosen = sorted(
                    random.Random(f"{self.seed}-queries").sample(range(len(queries)), self.max_unlabeled)
                )
                queries = [queries[i] for i in chosen]
            self.train_queries = queries

    def train_dataloader(self) -> DataLoader:
        dataset = QueryDataset(self.train_queries)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.resumable_sampler(len(dataset)),
            collate_fn=Collator(collate_queries, module_preparer(self.trainer)),
            num_workers=self.num_workers,
            drop_last=len(dataset) >= self.batch_size,
        )
