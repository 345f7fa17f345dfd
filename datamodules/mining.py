"""Candidate mining without labels: BM25 (bm25s) over the corpus."""

from __future__ import annotations

from datamodules.records import Document


def bm25_top_k(queries: list[str], documents: list[Document], k: int) -> list[list[int]]:
    """For each query, the indices of the ``k`` best documents by BM25 (bm25s, English stopwords)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([d.as_text() for d in documents], stopwords="en", show_progress=False),
        show_progress=False,
    )
    k = min(k, len(documents))
    results, _ = retriever.retrieve(
        bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k, show_progress=False
    )
    return [list(map(int, row)) for row in results]
