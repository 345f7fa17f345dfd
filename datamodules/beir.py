"""Read a BEIR-layout retrieval data set from a local folder, or from the hub by name.

Layout: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``, optional
``metadata.answers``), ``qrels/<split>.tsv`` (``query-id  corpus-id  score`` with a header line).
"""

from __future__ import annotations

import csv
from pathlib import Path

from datamodules.errors import DataFormatError
from datamodules.hub import HubTable, load_table
from datamodules.jsonl import read_jsonl, require_field
from datamodules.records import Document, Query, RetrievalCorpus


def load_corpus(path: str | Path) -> dict[str, Document]:
    path = Path(path)
    corpus: dict[str, Document] = {}
    for line, obj in read_jsonl(path):
        doc_id = str(require_field(obj, "_id", (str, int), path, line))
        text = require_field(obj, "text", str, path, line)
        title = obj.get("title", "") or ""
        if not isinstance(title, str):
            raise DataFormatError(path, f"expected str, got {type(title).__name__}", line, "title")
        if doc_id in corpus:
            raise DataFormatError(path, f"duplicate id '{doc_id}'", line, "_id")
        corpus[doc_id] = Document(doc_id=doc_id, text=text, title=title)
    if not corpus:
        raise DataFormatError(path, "corpus is empty: a retrieval corpus needs at least one document")
    return corpus


def load_queries(path: str | Path) -> dict[str, Query]:
    path = Path(path)
    queries: dict[str, Query] = {}
    for line, obj in read_jsonl(path):
        qid = str(require_field(obj, "_id", (str, int), path, line))
        text = require_field(obj, "text", str, path, line)
        if not text.strip():
            raise DataFormatError(path, f"empty query text (query '{qid}')", line, "text")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DataFormatError(path, f"expected object, got {type(metadata).__name__}", line, "metadata")
        answers = metadata.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, "expected a list of strings", line, "metadata.answers")
        if qid in queries:
            raise DataFormatError(path, f"duplicate id '{qid}'", line, "_id")
        queries[qid] = Query(query_id=qid, text=text, answers=tuple(answers))
    if not queries:
        raise DataFormatError(path, "no queries: the file is empty")
    return queries


def load_qrels(
    path: str | Path, corpus: dict[str, Document], queries: dict[str, Query]
) -> dict[str, dict[str, int]]:
    """Read one qrels TSV, checking every id against the corpus and queries."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    qrels: dict[str, dict[str, int]] = {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: a byte-order mark is accepted
            reader = csv.reader(handle, delimiter="\t")
            for line, row in enumerate(reader, start=1):
                if not row or (line == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}):
                    continue
                if len(row) != 3:
                    raise DataFormatError(
                        path,
                        f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}",
                        line,
                    )
                qid, doc_id, score = (cell.strip() for cell in row)
                if qid not in queries:
                    raise DataFormatError(
                        path, f"unknown query id '{qid}' (not in queries.jsonl)", line, "query-id"
                    )
                if doc_id not in corpus:
                    raise DataFormatError(
                        path, f"unknown corpus id '{doc_id}' (not in corpus.jsonl)", line, "corpus-id"
                    )
                try:
                    relevance = int(float(score))
                except ValueError:
                    raise DataFormatError(path, f"expected a number, got '{score}'", line, "score") from None
                qrels.setdefault(qid, {})[doc_id] = relevance
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"not valid UTF-8 ({err.reason})", first_non_utf8_line(path)) from None
    if not qrels:
        raise DataFormatError(path, "no judgements in this qrels file")
    return qrels


def first_non_utf8_line(path: Path) -> int | None:
    """The 1-based number of the first line that is not valid UTF-8 (for error messages)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def check_data_folder(folder: Path) -> None:
    """A clear error when ``folder`` is missing or is a file (the usual ``data.path`` mistakes)."""
    layout = "expected a BEIR-layout folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    if folder.is_file():
        raise DataFormatError(
            folder, f"is a file, not a data folder ({layout}); point data.path at its folder"
        )
    if not folder.is_dir():
        raise DataFormatError(folder, f"data folder not found ({layout})")


def available_splits(folder: Path) -> list[str]:
    """The splits of a BEIR folder: the stems of ``qrels/*.tsv``."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def qrels_file(folder: Path, split: str) -> Path:
    """``qrels/<split>.tsv``; a missing split names the splits the folder has."""
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        splits = available_splits(folder)
        raise DataFormatError(
            path, f"file not found: no split '{split}' (this folder has: {', '.join(splits) or 'no qrels'})"
        )
    return path


def load_beir_folder(folder: str | Path, splits: list[str] | None = None) -> RetrievalCorpus:
    """Load a BEIR-layout folder. ``splits=None`` loads every ``qrels/*.tsv``."""
    folder = Path(folder)
    check_data_folder(folder)
    if splits is not None:  # a missing split is named before the (large) corpus is read
        paths = {split: qrels_file(folder, split) for split in splits}
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    if splits is None:
        paths = {split: folder / "qrels" / f"{split}.tsv" for split in available_splits(folder)}
        if not paths:
            raise DataFormatError(folder / "qrels", "no qrels/<split>.tsv files")
    qrels = {split: load_qrels(path, corpus, queries) for split, path in paths.items()}
    return RetrievalCorpus(
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        name=folder.name,
        qrels_sources={split: str(path) for split, path in paths.items()},
    )


def load_beir_from_hub(name: str, splits: list[str], revision: str | None = None) -> RetrievalCorpus:
    """Load a BEIR data set in the mteb hub layout, e.g. ``mteb/scifact`` or ``mteb/msmarco``.

    One repository holds config ``corpus`` (split ``corpus``: ``_id``, ``title``, ``text``), config
    ``queries`` (split ``queries``: ``_id``, ``text``) and config ``default`` (the qrels, one split per
    judged split: ``query-id``, ``corpus-id``, ``score``). The ``BeIR/<name>`` repositories are loading
    scripts, which datasets >= 4 refuses: their name is answered with the ``mteb/<name>`` to use.
    ``revision`` pins the repository's commit. Needs network access (or a populated HF cache).
    """
    corpus: dict[str, Document] = {}
    for row in _hub_rows(name, "corpus", "corpus", revision):
        doc_id = str(row["_id"])
        corpus[doc_id] = Document(doc_id=doc_id, text=row["text"] or "", title=row.get("title") or "")
    if not corpus:
        raise DataFormatError(name, "corpus is empty")
    where = f"{name} (queries) split queries"
    queries: dict[str, Query] = {}
    for number, row in enumerate(_hub_rows(name, "queries", "queries", revision), start=1):
        if not (row["text"] or "").strip():
            raise DataFormatError(where, f"empty query text (query '{row['_id']}')", number, "text")
        queries[str(row["_id"])] = Query(query_id=str(row["_id"]), text=row["text"])
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in splits:
        table: dict[str, dict[str, int]] = {}
        for row in _hub_rows(name, "default", split, revision):
            table.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
        qrels[split] = table
    return RetrievalCorpus(
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        name=name.split("/")[-1],
        qrels_sources={split: f"{name} (default) split {split}" for split in splits},
    )


def _hub_rows(name: str, config: str, split: str, revision: str | None):
    return load_table(HubTable(name, config, split, revision=revision))


def split_query_ids(folder: str | Path, split: str) -> set[str]:
    """The query ids judged in ``qrels/<split>.tsv`` (without reading the corpus); a missing split names
    the splits the folder has."""
    folder = Path(folder)
    check_data_folder(folder)
    path = qrels_file(folder, split)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row and row[0].strip()]
    if rows and rows[0][0].strip().lower() in {"query-id", "query_id", "qid"}:
        rows = rows[1:]
    return {row[0].strip() for row in rows}


def qrels_line(path: str | Path, query_id: str) -> int | None:
    """The 1-based line of ``query_id``'s first judgement in a qrels TSV (for messages), else None."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as handle:
            for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if row and row[0].strip() == query_id:
                    return number
    except OSError:
        return None
    return None
