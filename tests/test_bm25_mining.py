"""BM25 mining (datamodules/mining.py): same ranking as plain bm25s, a disk cache keyed by corpus and settings,
batched retrieval equal to one batch, and a damaged cache rebuilt."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest

from datamodules import mining
from datamodules.beir import load_beir_folder
from datamodules.mining import BM25Index, bm25_top_k, corpus_fingerprint, index_key
from datamodules.paths import resolve_data_path


@pytest.fixture(scope="module")
def hotpotqa():
    data = load_beir_folder(resolve_data_path("hotpotqa"), ["train"])
    return [d.as_text() for d in data.corpus.values()], [q.text for q in data.queries.values()]


def test_ranking_equals_plain_bm25s_and_batches_do_not_change_it(hotpotqa):
    texts, queries = hotpotqa
    plain = bm25s.BM25()
    plain.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    expected, _ = plain.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=10, show_progress=False
    )

    index = BM25Index.build(texts)
    assert np.array_equal(index.top_k(queries, 10), expected)
    assert np.array_equal(
        index.top_k(queries, 10, batch_size=37), expected
    )  # words new to later batches count


def test_index_is_cached_by_corpus_and_settings(tmp_path, monkeypatch):
    texts = ["the cat sat on the mat", "dogs chase cats", "a bird in the hand", "cat food is tasty"]
    builds = []
    real_build = BM25Index.build.__func__
    monkeypatch.setattr(
        BM25Index, "build", classmethod(lambda cls, t: builds.append(len(t)) or real_build(cls, t))
    )

    first = BM25Index.cached(texts, cache_dir=tmp_path)
    again = BM25Index.cached(texts, cache_dir=tmp_path)
    assert builds == [4]  # the second call loaded the saved index
    assert np.array_equal(first.top_k(["cat mat"], 4), again.top_k(["cat mat"], 4))
    assert again.top_k(["cat mat"], 4)[0, 0] == 0

    BM25Index.cached([*texts, "one more"], cache_dir=tmp_path)  # another corpus: another index
    monkeypatch.setitem(mining.TOKENIZER, "stopwords", None)
    BM25Index.cached(texts, cache_dir=tmp_path)  # other tokenizer settings: another index
    assert builds == [4, 5, 4]
    assert len(list(tmp_path.glob("*/.complete"))) == 3


def test_a_damaged_cached_index_is_rebuilt(tmp_path):
    texts = ["alpha beta", "beta gamma", "gamma delta"]
    BM25Index.cached(texts, cache_dir=tmp_path)
    folder = tmp_path / index_key(corpus_fingerprint(texts))
    data = next(p for p in folder.iterdir() if p.name.startswith("data.csc"))
    data.write_bytes(data.read_bytes()[:10])  # truncated by a crash or a full disk
    rebuilt = BM25Index.cached(texts, cache_dir=tmp_path)
    assert rebuilt.top_k(["delta"], 1).tolist() == [[2]]


def test_fingerprint_separates_texts_and_order():
    assert corpus_fingerprint(["ab", "c"]) != corpus_fingerprint(["a", "bc"])
    assert corpus_fingerprint(["a", "b"]) != corpus_fingerprint(["b", "a"])
    assert corpus_fingerprint(["a", "b"]) == corpus_fingerprint(iter(["a", "b"]))


def test_large_corpora_use_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(mining, "CACHE_MIN_DOCUMENTS", 3)
    from datamodules.records import Document

    documents = [Document(str(i), text) for i, text in enumerate(["red apple", "green pear", "red cherry"])]
    assert bm25_top_k(["red"], documents, 2)[0][0] in (0, 2)
    assert len(list((tmp_path / "bm25").glob("*/.complete"))) == 1
    assert bm25_top_k(["pear"], documents[:2], 1) == [[1]]  # below the threshold: in memory
    assert len(list((tmp_path / "bm25").glob("*/.complete"))) == 1
