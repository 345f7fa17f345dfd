"""Questions with answers and judged candidate passages from three hub data sets, as :class:`QAExample`.

| source | table (train / dev) | row schema |
| --- | --- | --- |
| ``msmarco`` | ``microsoft/ms_marco`` config ``v2.1``, splits ``train`` / ``validation`` (parquet) | ``query_id``, ``query``, ``answers``, ``passages`` {``is_selected``, ``passage_text``, ``url``} |
| ``nq`` | ``Tevatron/wikipedia-nq`` on ``refs/convert/parquet``: ``default/train``, ``default/dev`` | ``query_id``, ``query``, ``answers``, ``positive_passages`` / ``negative_passages`` [{``docid``, ``title``, ``text``}] |
| ``hotpotqa`` | ``hotpotqa/hotpot_qa`` on ``refs/convert/parquet``: ``distractor/train``, ``distractor/validation`` | ``id``, ``question``, ``answer``, ``supporting_facts`` {``title``, ``sent_id``}, ``context`` {``title``, ``sentences``} |

MS MARCO QnA passages carry no id: theirs is a hash of the text, so a passage shown to several questions is
one corpus document. HotpotQA paragraphs are identified by a hash of title and text. Answers ``"No Answer
Present."`` (MS MARCO) and blank answers are dropped; the caller reports questions left without one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

from datamodules.hub import HubTable, converted_parquet, iter_rows
from datamodules.records import Candidate, Document, QAExample, Query

NO_ANSWER = "No Answer Present."
QA_TABLES: dict[str, dict[str, HubTable]] = {
    "msmarco": {
        "train": HubTable("microsoft/ms_marco", "v2.1", "train"),
        "dev": HubTable("microsoft/ms_marco", "v2.1", "validation"),
    },
    "nq": {
        "train": converted_parquet("Tevatron/wikipedia-nq", "default", "train"),
        "dev": converted_parquet("Tevatron/wikipedia-nq", "default", "dev"),
    },
    "hotpotqa": {
        "train": converted_parquet("hotpotqa/hotpot_qa", "distractor", "train"),
        "dev": converted_parquet("hotpotqa/hotpot_qa", "distractor", "validation"),
    },
}


def text_id(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha1("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def clean_answers(answers: list[str]) -> tuple[str, ...]:
    return tuple(a for a in answers if a and a.strip() and a.strip() != NO_ANSWER)


def msmarco_example(row: dict[str, Any], origin: str) -> QAExample:
    passages = row["passages"]
    candidates = tuple(
        Candidate(Document(text_id("msm-", text), text), bool(selected))
        for text, selected in zip(passages["passage_text"], passages["is_selected"])
    )
    query = Query(str(row["query_id"]), row["query"], clean_answers(list(row["answers"])))
    return QAExample(query, candidates, origin)


def nq_example(row: dict[str, Any], origin: str) -> QAExample:
    def candidate(passage: dict[str, Any], relevant: bool) -> Candidate:
        return Candidate(
            Document(str(passage["docid"]), passage["text"], passage.get("title") or ""), relevant
        )

    candidates = tuple(candidate(p, True) for p in row["positive_passages"])
    candidates += tuple(candidate(p, False) for p in row["negative_passages"])
    query = Query(str(row["query_id"]), row["query"], clean_answers(list(row["answers"])))
    return QAExample(query, candidates, origin)


def hotpotqa_example(row: dict[str, Any], origin: str) -> QAExample:
    supporting = set(row["supporting_facts"]["title"])
    context = row["context"]
    candidates = []
    for title, sentences in zip(context["title"], context["sentences"]):
        text = "".join(sentences).strip()
        candidates.append(Candidate(Document(text_id("hp-", title, text), text, title), title in supporting))
    query = Query(str(row["id"]), row["question"], clean_answers([row["answer"]]))
    return QAExample(query, tuple(candidates), origin)


CONVERTERS: dict[str, Callable[[dict[str, Any], str], QAExample]] = {
    "msmarco": msmarco_example,
    "nq": nq_example,
    "hotpotqa": hotpotqa_example,
}


def qa_table(source: str, split: str) -> HubTable:
    if source not in QA_TABLES:
        raise ValueError(f"unknown QA hub data set '{source}' (known: {', '.join(QA_TABLES)})")
    if split not in QA_TABLES[source]:
        raise ValueError(
            f"QA hub data set '{source}' has no split '{split}' (has: {', '.join(QA_TABLES[source])})"
        )
    return QA_TABLES[source][split]


def iter_qa_examples(source: str, split: str = "train", limit: int | None = None) -> Iterator[QAExample]:
    """The examples of one source and split (``train`` or ``dev``), streamed; ``limit`` rows at most."""
    table = qa_table(source, split)
    convert = CONVERTERS[source]
    for number, row in enumerate(iter_rows(table, streaming=True, limit=limit), start=1):
        yield convert(row, f"{table.describe()}:{number}")
