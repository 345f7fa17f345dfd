"""Long-context chunk retrieval: a long document split into chunks; for each chunk, retrieve the earlier
chunks that best help the LM continue it.

The reference trains on Books3, ArXiv and CodeParrot (Books3 is not distributable). Hub sources here:
``pg19`` (``emozilla/pg19``, parquet: ``short_book_title``, ``publication_date``, ``url``, ``text``), a
stand-in for Books3, and ``codeparrot`` (``codeparrot/codeparrot-clean-valid``, its parquet conversion,
column ``content``), the reference's code source at validation size.

Query: chunk ``i``. Desired output: the first ``continuation_words`` words of chunk ``i+1``. Candidates: the
``num_candidates`` chunks before chunk ``i`` (nearest first). No labels: the teacher
(``−NLL(continuation | earlier chunk, chunk i)``) decides, distilled with KL (τ_t 0.1) as in the reference.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, converted_parquet, iter_rows
from datamodules.llm_embedder_tasks.task_example import TaskExample

LONG_TEXT_SOURCES = {  # name -> (table of the split, text column)
    "pg19": (lambda split: HubTable("emozilla/pg19", split=split), "text"),
    "codeparrot": (
        lambda split: converted_parquet("codeparrot/codeparrot-clean-valid", "default", split),
        "content",
    ),
}


def split_words(text: str, chunk_words: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i : i + chunk_words]) for i in range(0, len(words), chunk_words)]


def chunk_examples(
    book_id: str, text: str, chunk_words: int = 96, continuation_words: int = 24, num_candidates: int = 5
) -> list[TaskExample]:
    """Examples for every chunk with at least ``num_candidates`` earlier chunks and a following chunk."""
    chunks = split_words(text, chunk_words)
    examples = []
    for i in range(num_candidates, len(chunks) - 1):
        earlier = list(range(i - 1, i - 1 - num_candidates, -1))
        continuation = " ".join(chunks[i + 1].split()[:continuation_words])
        examples.append(
            TaskExample(
                task="lrlm",
                query_id=f"{book_id}-{i}",
                query=chunks[i],
                answers=(continuation,),
                candidates=tuple(chunks[j] for j in earlier),
                candidate_ids=tuple(f"{book_id}-{j}" for j in earlier),
            )
        )
    return examples


def long_context_from_files(
    paths: list[str | Path],
    chunk_words: int = 96,
    continuation_words: int = 24,
    num_candidates: int = 5,
    max_queries: int | None = None,
) -> list[TaskExample]:
    """Plain-text books (UTF-8), one file each; ``max_queries`` keeps the first examples."""
    examples = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(path, "file not found")
        found = chunk_examples(
            path.stem, path.read_text(encoding="utf-8-sig"), chunk_words, continuation_words, num_candidates
        )
        if not found:
            raise DataFormatError(
                path, f"too short: needs more than {num_candidates + 1} chunks of {chunk_words} words"
            )
        examples.extend(found)
    return examples[:max_queries] if max_queries else examples


def long_context_from_hub(
    split: str = "train",
    max_books: int = 4,
    chunk_words: int = 96,
    continuation_words: int = 24,
    num_candidates: int = 5,
    max_chunks_per_book: int = 200,
    dataset: str = "pg19",
) -> list[TaskExample]:
    """Long texts of ``dataset`` (see the module docstring) streamed with ``datasets``; the first
    ``max_books`` documents, each cut to the words ``max_chunks_per_book`` queries need."""
    if dataset not in LONG_TEXT_SOURCES:
        raise ValueError(f"unknown long-text data set '{dataset}' (known: {', '.join(LONG_TEXT_SOURCES)})")
    table, column = LONG_TEXT_SOURCES[dataset]
    examples = []
    for index, row in enumerate(iter_rows(table(split), streaming=True, limit=max_books)):
        words = (row[column] or "").split()[: chunk_words * (max_chunks_per_book + num_candidates + 1)]
        examples.extend(
            chunk_examples(
                f"{dataset}-{index}", " ".join(words), chunk_words, continuation_words, num_candidates
            )
        )
    return examples
