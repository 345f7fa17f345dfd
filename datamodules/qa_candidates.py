"""Read the QA-with-candidates format: one question per line with answers and judged candidate paragraphs.

Line format (``qa_candidates.jsonl``)::

    {"qid": str, "query": str, "answers": [str], "candidates":
        [{"doc_id": str, "title": str, "text": str, "is_supporting": bool}, ...]}

A question with an empty ``answers`` list is reported with its file and line: an error under
``on_missing=error`` (the default), left out and counted under ``on_missing=skip`` (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.errors import DataFormatError
from datamodules.jsonl import read_jsonl, require_field
from datamodules.missing import MissingReport
from datamodules.records import Candidate, Document, QAExample, Query

CANDIDATE_FIELDS = (("doc_id", (str, int)), ("text", str), ("is_supporting", bool))


def parse_candidate(cand: Any, path: Path, line: int, index: int) -> Candidate:
    """One ``candidates[index]`` entry, checked field by field."""
    where = f"candidates[{index}]"
    if not isinstance(cand, dict):
        raise DataFormatError(path, f"expected object, got {type(cand).__name__}", line, where)
    for key, kind in CANDIDATE_FIELDS:
        if key not in cand:
            raise DataFormatError(path, "missing", line, f"{where}.{key}")
        if not isinstance(cand[key], kind):
            raise DataFormatError(path, f"wrong type {type(cand[key]).__name__}", line, f"{where}.{key}")
    document = Document(doc_id=str(cand["doc_id"]), text=cand["text"], title=cand.get("title") or "")
    return Candidate(document=document, is_relevant=cand["is_supporting"])


def parse_qa_line(obj: dict[str, Any], path: Path, line: int) -> QAExample:
    """One line as a :class:`QAExample` (answers may be empty: the caller applies the policy)."""
    qid = str(require_field(obj, "qid", (str, int), path, line))
    text = require_field(obj, "query", str, path, line)
    if not text.strip():
        raise DataFormatError(path, f"empty query text (question '{qid}')", line, "query")
    answers = require_field(obj, "answers", list, path, line)
    if not all(isinstance(a, str) for a in answers):
        raise DataFormatError(path, "expected a list of strings", line, "answers")
    raw_candidates = require_field(obj, "candidates", list, path, line)
    if not raw_candidates:
        raise DataFormatError(path, "empty candidate list", line, "candidates")
    candidates = tuple(parse_candidate(c, path, line, i) for i, c in enumerate(raw_candidates))
    answers = [a for a in answers if a.strip()]
    return QAExample(
        query=Query(query_id=qid, text=text, answers=tuple(answers)),
        candidates=candidates,
        origin=f"{path}:{line}",
    )


def load_qa_candidates(
    path: str | Path,
    query_ids: set[str] | None = None,
    on_missing: str = "error",
    report: MissingReport | None = None,
) -> list[QAExample]:
    """Read QA examples, optionally keeping only ``query_ids`` (a split).

    A question without a (non-blank) answer goes through ``on_missing`` (``error`` or ``skip``); pass
    ``report`` to collect the left-out questions yourself, else a counted notice is issued here.
    """
    path = Path(path)
    own_report = report is None
    report = report or MissingReport(on_missing)
    examples: list[QAExample] = []
    seen: set[str] = set()
    for line, obj in read_jsonl(path):
        qid = str(require_field(obj, "qid", (str, int), path, line))
        if qid in seen:
            raise DataFormatError(path, f"duplicate id '{qid}'", line, "qid")
        seen.add(qid)
        if query_ids is not None and qid not in query_ids:
            continue
        example = parse_qa_line(obj, path, line)
        if not example.query.answers:
            report.add("no answer (empty 'answers')", path, line, "answers", qid)
            continue
        examples.append(example)
    if own_report:
        report.notify()
    if not examples:
        raise DataFormatError(
            path, "no QA examples" + (" for the requested split" if query_ids is not None else "")
        )
    return examples
