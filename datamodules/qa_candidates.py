"""Read the QA-with-candidates format: one question per line with answers and judged candidate paragraphs.

Line format (``qa_candidates.jsonl``)::

    {"qid": str, "query": str, "answers": [str], "candidates":
        [{"doc_id": str, "title": str, "text": str, "is_supporting": bool}, ...]}
"""

from __future__ import annotations

from pathlib import Path

from datamodules.errors import DataFormatError
from datamodules.jsonl import read_jsonl, require_field
from datamodules.records import Candidate, Document, QAExample, Query


def load_qa_candidates(path: str | Path, query_ids: set[str] | None = None) -> list[QAExample]:
    """Read QA examples, optionally keeping only ``query_ids`` (a split)."""
    path = Path(path)
    examples: list[QAExample] = []
    seen: set[str] = set()
    for line, obj in read_jsonl(path):
        qid = str(require_field(obj, "qid", (str, int), path, line))
        if qid in seen:
            raise DataFormatError(path, f"duplicate id '{qid}'", line, "qid")
        seen.add(qid)
        if query_ids is not None and qid not in query_ids:
            continue
        text = require_field(obj, "query", str, path, line)
        answers = require_field(obj, "answers", list, path, line)
        if not all(isinstance(a, str) for a in answers):
            raise DataFormatError(path, "expected a list of strings", line, "answers")
        raw_candidates = require_field(obj, "candidates", list, path, line)
        if not raw_candidates:
            raise DataFormatError(path, "empty candidate list", line, "candidates")
        candidates = []
        for index, cand in enumerate(raw_candidates):
            where = f"candidates[{index}]"
            if not isinstance(cand, dict):
                raise DataFormatError(path, f"expected object, got {type(cand).__name__}", line, where)
            for key, kind in (("doc_id", (str, int)), ("text", str), ("is_supporting", bool)):
                if key not in cand:
                    raise DataFormatError(path, "missing", line, f"{where}.{key}")
                if not isinstance(cand[key], kind):
                    raise DataFormatError(
                        path, f"wrong type {type(cand[key]).__name__}", line, f"{where}.{key}"
                    )
            document = Document(doc_id=str(cand["doc_id"]), text=cand["text"], title=cand.get("title") or "")
            candidates.append(Candidate(document=document, is_relevant=cand["is_supporting"]))
        examples.append(
            QAExample(
                query=Query(query_id=qid, text=text, answers=tuple(answers)), candidates=tuple(candidates)
            )
        )
    if not examples:
        raise DataFormatError(
            path, "no QA examples" + (" for the requested split" if query_ids is not None else "")
        )
    return examples
