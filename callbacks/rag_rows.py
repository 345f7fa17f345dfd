"""Rows of the downstream evaluation: which documents each question gets, and the reader's scores for them.

A *row* gives every evaluation question a list of documents (the current model's top-k, BM25's top-k, the
gold paragraphs, or none) and measures the frozen LM on each ``[documents; question]`` prompt: the gold
answer's mean token NLL and the greedy answer's exact match / F1 (docs/evaluation.md, "Downstream").
Under DDP each rank reads a contiguous shard of the questions and the per-question results are
all-gathered, so every rank ends with the same numbers; every rank makes the same collective calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch.distributed as dist

from callbacks.rag_reader import PromptBuilder, read
from callbacks.retrieval_eval import shard_bounds
from datamodules.errors import DataFormatError
from datamodules.mining import bm25_top_k
from datamodules.protocols import corpus_source, source_name
from datamodules.records import Document
from lightning_modules.models.frozen_lm import FrozenCausalLM
from retrieval.answers import best_match

METRICS = ("answer_nll", "em", "f1")
REFERENCES = ("none", "bm25", "oracle")


@dataclass(frozen=True)
class RagQuestion:
    """An evaluation question with its gold answers and its relevant documents (best grade first)."""

    query_id: str
    text: str
    answers: tuple[str, ...]
    relevant: tuple[str, ...]


def rag_questions(datamodule: Any, max_questions: int | None) -> list[RagQuestion]:
    """The evaluation split's judged queries that have answers, in the retrieval evaluation's order."""
    datamodule = corpus_source(datamodule, "callbacks.rag")
    corpus = datamodule.load_corpus()
    qrels = corpus.qrels[datamodule.eval_split]
    questions = []
    for query in datamodule.eval_queries():
        if not query.answers:
            continue
        grades = qrels.get(query.query_id, {})
        relevant = sorted((d for d, g in grades.items() if g > 0), key=lambda d: (-grades[d], d))
        questions.append(RagQuestion(query.query_id, query.text, tuple(query.answers), tuple(relevant)))
    if not questions:
        where = source_name(datamodule)
        raise DataFormatError(
            f"{where} (queries)",
            f"callbacks=rag needs questions with answers, and no query of split "
            f"'{datamodule.eval_split}' has any",
            field="metadata.answers",
        )
    return questions[:max_questions] if max_questions else questions


def reference_documents(
    kind: str, questions: Sequence[RagQuestion], corpus: dict[str, Document], k: int
) -> list[list[Document]]:
    """``none``: no documents; ``bm25``: BM25's top-k over the corpus (bm25s); ``oracle``: the question's
    relevant documents from the qrels, highest grade first, at most ``k``."""
    if kind == "none":
        return [[] for _ in questions]
    if kind == "oracle":
        return [[corpus[d] for d in q.relevant[:k] if d in corpus] for q in questions]
    if kind == "bm25":
        documents = list(corpus.values())
        rows = bm25_top_k([q.text for q in questions], documents, k)
        return [[documents[i] for i in row] for row in rows]
    raise ValueError(f"unknown reference row '{kind}' (choose from: {', '.join(REFERENCES)})")


def gather_objects(trainer: L.Trainer, local: list[Any]) -> list[Any]:
    """Every rank's ``local`` list concatenated in rank order (``local`` itself without DDP)."""
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return list(local)
    parts: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]


class RowReader:
    """Scores rows with one frozen LM; results are memoised per (prompt, gold answer), so a question whose
    documents did not change since the last evaluation costs no LM work.

    ``lm_items`` counts the prompts the LM has actually read (what the caching tests count).
    """

    def __init__(
        self,
        lm: FrozenCausalLM,
        builder: PromptBuilder,
        batch_size: int,
        max_new_tokens: int,
        precision: str,
    ):
        self.lm, self.builder = lm, builder
        self.batch_size, self.max_new_tokens, self.precision = batch_size, max_new_tokens, precision
        self.lm_items = 0
        self._memo: dict[str, tuple[float, str]] = {}

    def score(self, questions: Sequence[RagQuestion], documents: Sequence[list[Document]]) -> list[dict]:
        """Per-question records: documents, gold answer scored, its NLL, the generation, EM and F1.

        The NLL is the first gold answer's (the data set's canonical answer; the other gold answers only
        count for EM / F1, which take the best match over all of them).
        """
        texts = [self.builder.text(q.text, docs) for q, docs in zip(questions, documents)]
        keys = [_memo_key(text, q.answers[0]) for text, q in zip(texts, questions)]
        first_index: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key not in self._memo:
                first_index.setdefault(key, index)
        missing = list(first_index.items())
        if missing:
            prompts = [self.builder.prompt_ids(texts[i]) for _, i in missing]
            answers = [self.builder.answer_ids(questions[i].answers[0]) for _, i in missing]
            results = read(
                self.lm.model,
                self.lm.tokenizer,
                prompts,
                answers,
                self.batch_size,
                self.max_new_tokens,
                self.precision,
            )
            self.lm_items += len(missing)
            self._memo.update({key: result for (key, _), result in zip(missing, results)})
        records = []
        for question, docs, key in zip(questions, documents, keys):
            nll, generation = self._memo[key]
            em, f1 = best_match(generation, question.answers)
            records.append(
                {
                    "query_id": question.query_id,
                    "documents": [d.doc_id for d in docs],
                    "answer": question.answers[0],
                    "answer_nll": nll,
                    "generation": generation,
                    "em": em,
                    "f1": f1,
                }
            )
        return records

    def score_sharded(
        self, trainer: L.Trainer, questions: Sequence[RagQuestion], documents: Sequence[list[Document]]
    ) -> list[dict]:
        """:meth:`score` on this rank's shard of the questions; all ranks' records, in question order."""
        start, end = shard_bounds(len(questions), trainer.world_size, trainer.global_rank)
        return gather_objects(trainer, self.score(questions[start:end], documents[start:end]))


def row_metrics(records: Sequence[dict]) -> dict[str, float]:
    """Means over the questions of ``answer_nll``, ``em`` and ``f1``."""
    return {m: sum(r[m] for r in records) / len(records) for m in METRICS}


def _memo_key(prompt_text: str, answer: str) -> str:
    return hashlib.sha1(f"{prompt_text}\x00{answer}".encode()).hexdigest()
