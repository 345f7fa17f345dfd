"""BM25 candidate mining with bm25s, at any corpus size (label-free).

The index is built once per corpus and setting and cached on disk: the cache key is the corpus
fingerprint (SHA-256 over every text, in order) plus the tokenizer and BM25 settings and the bm25s
version; the folder is written through :func:`retrieval.cache.build_dir_atomically`, so a killed build
leaves nothing half-written, and it is reloaded memory-mapped. Queries are tokenized and retrieved in
batches by bm25s (``LSR_BM25_THREADS`` threads), which sums each query's posting lists and selects its top k
with NumPy (``argpartition``; no per-query Python sort). A batched alternative (one weighted ``bincount``
per batch) was measured slower and far larger in memory on frequent words: docs/data.md. Corpora below
``CACHE_MIN_DOCUMENTS`` are indexed in memory every time (milliseconds). See docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from datamodules.records import Document
from retrieval.cache import build_dir_atomically, cache_root

TOKENIZER = {"lower": True, "splitter": r"(?u)\b\w\w+\b", "stopwords": "en"}
BM25_PARAMS = {"k1": 1.5, "b": 0.75, "method": "lucene"}
CACHE_MIN_DOCUMENTS = 20_000
QUERY_BATCH = 4096
# bm25s retrieval threads (0: sequential, -1: all CPUs)
THREADS = int(os.environ.get("LSR_BM25_THREADS", "0"))


def corpus_fingerprint(texts: Iterable[str]) -> str:
    """SHA-256 over the texts in order (length-prefixed, so ``["ab", "c"]`` differs from ``["a", "bc"]``)."""
    digest = hashlib.sha256()
    count = 0
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
        count += 1
    digest.update(count.to_bytes(8, "little"))
    return digest.hexdigest()


def index_key(fingerprint: str) -> str:
    """The cache folder name: corpus fingerprint + tokenizer + BM25 settings + bm25s version."""
    import bm25s

    settings = {
        "corpus": fingerprint,
        "tokenizer": TOKENIZER,
        "bm25": BM25_PARAMS,
        "bm25s": bm25s.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def _tokenizer():
    from bm25s.tokenization import Tokenizer

    return Tokenizer(**TOKENIZER)


class BM25Index:
    """A bm25s index over a fixed list of texts; :meth:`top_k` returns row indices into that list."""

    def __init__(self, retriever, size: int):
        self.retriever, self.size = retriever, size

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Index:
        import bm25s

        tokenizer = _tokenizer()
        ids = tokenizer.tokenize(list(texts), return_as="ids", show_progress=False)
        retriever = bm25s.BM25(**BM25_PARAMS)
        retriever.index((ids, tokenizer.get_vocab_dict()), show_progress=False)
        return cls(retriever, len(texts))

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import bm25s

        retriever = bm25s.BM25.load(str(folder), mmap=True, show_progress=False)
        size = json.loads((Path(folder) / "size.json").read_text())["documents"]
        return cls(retriever, size)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)
        (Path(folder) / "size.json").write_text(json.dumps({"documents": self.size}))

    @classmethod
    def cached(cls, texts: Sequence[str], cache_dir: Path | None = None) -> BM25Index:
        """The index of ``texts``, from the on-disk cache when built before, else built and cached."""
        folder = Path(cache_dir or cache_root() / "bm25") / index_key(corpus_fingerprint(texts))
        build_dir_atomically(folder, lambda tmp: cls.build(texts).save(tmp))
        return cls.load(folder)

    def top_k(self, queries: Sequence[str], k: int, batch_size: int = QUERY_BATCH) -> np.ndarray:
        """``[len(queries), min(k, size)]`` document indices, best first, retrieved ``batch_size`` at a time
        by bm25s (``LSR_BM25_THREADS`` threads)."""
        k = min(k, self.size)
        tokenizer = _tokenizer()
        rows = [np.zeros((0, k), dtype=np.int64)]
        for start in range(0, len(queries), batch_size):
            tokens = tokenizer.tokenize(  # update_vocab: every batch's words are kept (default: first batch only)
                list(queries[start : start + batch_size]),
                update_vocab=True,
                return_as="string",
                show_progress=False,
            )
            found, _ = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=THREADS)
            rows.append(np.asarray(found, dtype=np.int64))
        return np.concatenate(rows)


def bm25_index(texts: Sequence[str], cache: bool | None = None) -> BM25Index:
    """A cached index for a large corpus (``cache=None``: when it has ``CACHE_MIN_DOCUMENTS`` texts or more)."""
    if cache is None:
        cache = len(texts) >= CACHE_MIN_DOCUMENTS
    return BM25Index.cached(texts) if cache else BM25Index.build(texts)


def bm25_top_k(queries: list[str], documents: list[Document], k: int) -> list[list[int]]:
    """For each query, the indices of the ``k`` best documents by BM25 (bm25s, English stopwords)."""
    index = bm25_index([d.as_text() for d in documents])
    return index.top_k(queries, k).tolist()
