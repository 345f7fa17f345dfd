"""Evaluation during training on a fixed sub-corpus, the whole corpus at the start and the end (issue 15:
"a fixed subsample during training, the full corpus at the end (configurable)")."""

from __future__ import annotations

import json

import pytest

from callbacks.retrieval_eval import RetrievalEvaluation
from datamodules.records import Document, Query, RetrievalCorpus
from tests.helpers import run_experiment


def corpus_of(size: int) -> RetrievalCorpus:
    docs = {f"d{i}": Document(f"d{i}", f"text {i}") for i in range(size)}
    qrels = {"dev": {"q1": {"d3": 1, "d7": 0}, "q2": {"d11": 2}}, "train": {"q3": {"d0": 1}}}
    queries = {q: Query(q, q) for q in ("q1", "q2", "q3")}
    return RetrievalCorpus(corpus=docs, queries=queries, qrels=qrels, name="synthetic")


def test_the_sub_corpus_keeps_every_judged_document_and_is_the_same_each_time():
    corpus = corpus_of(50)
    sub = corpus.subsample("dev", ["q1", "q2"], size=10, seed=3)
    assert len(sub.corpus) == 10 and {"d3", "d7", "d11"} <= set(sub.corpus)
    assert sub.doc_ids == [d for d in corpus.doc_ids if d in sub.corpus]  # corpus order
    assert corpus.subsample("dev", ["q1", "q2"], size=10, seed=3).doc_ids == sub.doc_ids
    assert corpus.subsample("dev", ["q1", "q2"], size=10, seed=4).doc_ids != sub.doc_ids
    assert set(corpus.subsample("dev", ["q1", "q2"], size=2).corpus) == {
        "d3",
        "d7",
        "d11",
    }  # never drops gold
    assert len(corpus.subsample("dev", ["q1"], size=500).corpus) == 50
    assert sub.qrels is corpus.qrels and len(corpus.corpus) == 50  # the original is untouched


def test_a_bad_training_corpus_size_is_refused():
    with pytest.raises(ValueError, match="training_corpus_size must be >= 1 or null, got 0"):
        RetrievalEvaluation(training_corpus_size=0)


def test_training_evaluations_search_the_sub_corpus_and_the_start_and_end_the_whole(tmp_path):
    overrides = [
        "exp=default",
        "debug=tiny",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.retrieval_eval.training_corpus_size=12",
        "callbacks.retrieval_eval.cache_untrained=false",
        "logger=csv",
        "trainer.enable_progress_bar=false",
    ]
    results = run_experiment(overrides, tmp_path)
    steps = {
        int(p.stem.split("_")[1]): json.loads(p.read_text())
        for p in (tmp_path.glob("default/*/*/eval/step_*.json"))
    }
    full = steps[0]["num_documents"]
    assert full > 12
    assert (steps[0]["corpus"], steps[2]["corpus"], steps[4]["corpus"]) == (
        "full",
        "training subsample",
        "full",
    )
    assert (steps[2]["num_documents"], steps[4]["num_documents"]) == (12, full)
    assert results["metrics"]["after"] == steps[4]["metrics"]
