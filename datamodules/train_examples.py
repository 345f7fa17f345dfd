"""Training examples of a BEIR-layout split: each query's judged positives and the negatives to sample from.

Negatives come from one of three sources (``negatives``):

- ``candidates``: the question's paragraphs in ``qa_candidates.jsonl`` that are neither marked
  ``is_supporting`` nor judged relevant in qrels (a gold document is never a negative; a candidate that
  qrels calls relevant but the file does not mark is counted in a notice).
- ``bm25``: BM25 top hits over the corpus (bm25s, :mod:`datamodules.mining`), judged documents excluded.
- ``random``: random corpus documents, judged documents excluded.

A query of the split with no relevant document, or (QA file) no answer, goes through ``on_missing``
(:mod:`datamodules.missing`): an error naming file and line, or left out with a counted notice.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from datamodules.beir import qrels_line
from datamodules.errors import DataFormatError
from datamodules.mining import bm25_top_k
from datamodules.missing import DataNotice, MissingReport
from datamodules.qa_candidates import load_qa_candidates
from datamodules.records import Document, RetrievalCorpus, TrainExample

NEGATIVE_SOURCES = ("candidates", "bm25", "random")


@dataclass(frozen=True)
class ExampleSettings:
    """How to build a split's training examples (the data module's options)."""

    split: str = "train"
    negatives: str = "candidates"
    group_size: int = 4
    seed: int = 42
    on_missing: str = "error"
    max_queries: int | None = None


def build_train_examples(
    corpus: RetrievalCorpus, settings: ExampleSettings, qa_path: Path | None = None
) -> list[TrainExample]:
    """The training examples of ``settings.split`` (see the module docstring)."""
    report = MissingReport(settings.on_missing)
    query_ids = sorted(corpus.qrels[settings.split])
    if settings.max_queries is not None:
        query_ids = query_ids[: settings.max_queries]
    source = corpus.qrels_sources.get(settings.split, f"{corpus.name or 'data set'} split {settings.split}")
    for qid in query_ids:
        if not corpus.gold_ids(settings.split, qid):
            report.add(
                "no relevant document (score > 0) in qrels", source, qrels_line(source, qid), "score", qid
            )
    negatives = negative_pools(
        corpus, settings, [q for q in query_ids if q not in report.query_ids], qa_path, report
    )
    documents = list(corpus.corpus.values())
    examples = []
    for qid in query_ids:
        if qid in report.query_ids:
            continue
        pool = tuple(negatives.get(qid, ()))
        if len(pool) < settings.group_size - 1:  # e.g. a question whose candidates are all gold
            judged = set(corpus.qrels[settings.split][qid])
            pool += random_negatives(
                documents, judged, settings.group_size - 1 - len(pool), f"{settings.seed}-topup-{qid}"
            )
        query = corpus.queries[qid]
        positives = tuple(corpus.corpus[d] for d, rel in corpus.qrels[settings.split][qid].items() if rel > 0)
        examples.append(TrainExample(qid, query.text, query.answers, positives, pool))
    report.notify()
    if not examples:
        raise DataFormatError(source, f"split '{settings.split}' has no query with a relevant document")
    return examples


def negative_pools(
    corpus: RetrievalCorpus,
    settings: ExampleSettings,
    query_ids: list[str],
    qa_path: Path | None,
    report: MissingReport,
) -> dict[str, list[Document]]:
    """Each query's negative pool from the configured source."""
    judged = {qid: set(corpus.qrels[settings.split][qid]) for qid in query_ids}
    if settings.negatives == "candidates":
        if qa_path is None or not qa_path.is_file():
            raise DataFormatError(
                qa_path or corpus.name,
                "negatives=candidates needs a QA candidates file; use negatives=bm25 for plain BEIR data",
            )
        return candidate_negatives(corpus, settings.split, query_ids, qa_path, report)
    documents = list(corpus.corpus.values())
    if settings.negatives == "bm25":
        top = bm25_top_k(
            [corpus.queries[q].text for q in query_ids], documents, k=max(4 * settings.group_size, 20)
        )
        return {
            q: [documents[i] for i in row if documents[i].doc_id not in judged[q]]
            for q, row in zip(query_ids, top)
        }
    return {
        q: [
            d
            for d in random.Random(f"{settings.seed}-{q}").sample(
                documents, min(len(documents), 4 * settings.group_size)
            )
            if d.doc_id not in judged[q]
        ]
        for q in query_ids
    }


def candidate_negatives(
    corpus: RetrievalCorpus, split: str, query_ids: list[str], qa_path: Path, report: MissingReport
) -> dict[str, list[Document]]:
    """Negatives from the QA file, reconciled with qrels; questions left out go into ``report``."""
    examples = load_qa_candidates(qa_path, set(query_ids), report=report)
    pools, relabelled = {}, []
    for example in examples:
        gold = corpus.gold_ids(split, example.query.query_id)
        pools[example.query.query_id] = example.negatives_given(gold)
        relabelled += [
            example.origin for c in example.candidates if not c.is_relevant and c.document.doc_id in gold
        ]
    if relabelled:
        warnings.warn(
            f"{len(relabelled)} candidate(s) judged relevant in qrels but not marked is_supporting were kept out "
            f"of the negatives (a gold document is never a negative); first: {relabelled[0]}",
            DataNotice,
            stacklevel=2,
        )
    absent = [q for q in query_ids if q not in pools and q not in report.query_ids]
    if absent:
        warnings.warn(
            f"{len(absent)} question(s) of split '{split}' have no line in {qa_path}: their negatives are random "
            f"corpus documents; first: '{absent[0]}'",
            DataNotice,
            stacklevel=2,
        )
    return pools


def random_negatives(
    documents: list[Document], judged: set[str], count: int, seed: str
) -> tuple[Document, ...]:
    """Top-up negatives: random corpus documents not judged for the query, seeded by ``seed``."""
    rng = random.Random(seed)
    picked: list[Document] = []
    while len(picked) < count and len(picked) < len(documents) - len(judged):
        doc = rng.choice(documents)
        if doc.doc_id not in judged and doc not in picked:
            picked.append(doc)
    return tuple(picked)
