"""Bad input, round two (issue 19): labels reconciled with qrels, questions without positives or answers
reported with file:line (or left out and counted), a byte-order mark accepted, a file given as data.path,
a missing split, and an empty query text."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from datamodules.beir import load_beir_folder
from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.datamodule import load_task_examples
from datamodules.missing import DataNotice
from datamodules.mteb_tasks import LocalBEIRRetrieval, resolve_task_spec
from datamodules.paths import resolve_data_path
from datamodules.qa_candidates import load_qa_candidates
from datamodules.retrieval import RetrievalDataModule


@pytest.fixture
def beir(tmp_path) -> Path:
    """A writable copy of the in-repo tiny HotpotQA fixture (BEIR layout + qa_candidates.jsonl)."""
    folder = tmp_path / "data"
    shutil.copytree(resolve_data_path("tiny_hotpotqa"), folder)
    return folder


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def train_ids(folder: Path) -> list[str]:
    lines = (folder / "qrels" / "train.tsv").read_text().splitlines()[1:]
    return sorted({line.split("\t")[0] for line in lines})


def line_of(path: Path, qid: str) -> int:
    return next(i for i, r in enumerate(rows(path), start=1) if r["qid"] == qid)


def edit_question(folder: Path, qid: str, **changes) -> int:
    """Change one question of qa_candidates.jsonl; returns its line number."""
    path = folder / "qa_candidates.jsonl"
    records = rows(path)
    for record in records:
        if record["qid"] == qid:
            record.update(changes)
    write_rows(path, records)
    return line_of(path, qid)


def build(folder: Path, **kwargs) -> RetrievalDataModule:
    dm = RetrievalDataModule(path=str(folder), group_size=4, **kwargs)
    dm.setup("fit")
    return dm


# ---- (1) QA candidates reconciled with qrels ---------------------------------------------------------------
def test_gold_document_from_qrels_is_never_a_negative_even_if_not_marked_supporting(beir):
    qid = train_ids(beir)[0]
    path = beir / "qa_candidates.jsonl"
    (record,) = [r for r in rows(path) if r["qid"] == qid]
    unmarked = [{**c, "is_supporting": False} for c in record["candidates"]]
    line = edit_question(beir, qid, candidates=unmarked)
    gold = {
        d
        for d, _ in (
            r.split("\t")[1:3]
            for r in (beir / "qrels" / "train.tsv").read_text().splitlines()[1:]
            if r.startswith(qid)
        )
    }
    assert gold <= {c["doc_id"] for c in unmarked}  # the gold paragraphs are among the unmarked candidates

    with pytest.warns(DataNotice) as notices:
        dm = build(beir)
    (example,) = [e for e in dm.train_examples if e.query_id == qid]
    assert {d.doc_id for d in example.positives} == gold
    assert not gold & {d.doc_id for d in example.negatives}
    assert len(example.negatives) >= 3
    (notice,) = [str(n.message) for n in notices if "is_supporting" in str(n.message)]
    assert notice.startswith(
        f"{len(gold)} candidate(s) judged relevant in qrels but not marked is_supporting"
    )
    assert notice.endswith(f"first: {path}:{line}")


def test_question_with_empty_answers_is_an_error_naming_file_and_line(beir):
    qid = train_ids(beir)[1]
    line = edit_question(beir, qid, answers=[])
    with pytest.raises(DataFormatError) as err:
        build(beir)
    assert str(err.value).startswith(
        f"{beir / 'qa_candidates.jsonl'}:{line}: field 'answers': question '{qid}' has no answer"
    )
    assert "data.on_missing=skip" in str(err.value)


def test_on_missing_skip_leaves_questions_out_with_a_counted_notice(beir):
    first, second = train_ids(beir)[:2]
    lines = [
        edit_question(beir, first, answers=[]),
        edit_question(beir, second, answers=["  "]),
    ]  # blank = none
    line = min(lines)  # the first in file order
    with pytest.warns(DataNotice, match=r"left out 2 question\(s\) with no answer") as notices:
        dm = build(beir, on_missing="skip")
    assert f"first: {beir / 'qa_candidates.jsonl'}:{line}" in str(notices[0].message)
    assert {e.query_id for e in dm.train_examples} == set(train_ids(beir)) - {first, second}


def test_query_without_relevant_document_is_named_with_its_qrels_line(beir):
    qrels = beir / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    qid = lines[1].split("\t")[0]
    qrels.write_text(
        "\n".join(f"{ln.rsplit(chr(9), 1)[0]}\t0" if ln.startswith(qid) else ln for ln in lines) + "\n"
    )
    with pytest.raises(DataFormatError) as err:
        build(beir)
    assert str(err.value).startswith(
        f"{qrels}:2: field 'score': question '{qid}' has no relevant document (score > 0) in qrels"
    )
    with pytest.warns(DataNotice, match=r"left out 1 question\(s\) with no relevant document"):
        dm = build(beir, on_missing="skip")
    assert qid not in {e.query_id for e in dm.train_examples}


def test_on_missing_policy_is_checked():
    with pytest.raises(ValueError, match="data.on_missing must be one of error, skip; got 'drop'"):
        RetrievalDataModule(path="tiny_hotpotqa", on_missing="drop")


def test_llm_embedder_qa_task_names_the_line_of_a_question_without_answers(beir):
    qid = train_ids(beir)[2]
    line = edit_question(beir, qid, answers=[])
    spec = {"kind": "qa", "path": str(beir), "split": "train", "num_candidates": 3}
    with pytest.raises(DataFormatError) as err:
        load_task_examples("qa", spec)
    assert str(err.value).startswith(
        f"{beir / 'qa_candidates.jsonl'}:{line}: field 'answers': question '{qid}'"
    )
    assert "data.tasks.qa.on_missing=skip" in str(err.value)
    with pytest.warns(DataNotice, match=r"left out 1 question\(s\) with no answer"):
        examples = load_task_examples("qa", {**spec, "on_missing": "skip"})
    assert qid not in {e.query_id for e in examples}


def test_llm_embedder_qa_with_labels_names_a_question_without_supporting_paragraph(beir):
    qid = train_ids(beir)[0]
    (record,) = [r for r in rows(beir / "qa_candidates.jsonl") if r["qid"] == qid]
    line = edit_question(beir, qid, candidates=[{**c, "is_supporting": False} for c in record["candidates"]])
    spec = {"kind": "qa", "path": str(beir), "split": "train", "num_candidates": 3, "use_labels": True}
    with pytest.raises(DataFormatError, match=rf"qa_candidates.jsonl:{line}: field 'candidates': question"):
        load_task_examples("qa", spec)


# ---- (5) a UTF-8 byte-order mark ----------------------------------------------------------------------------
def test_byte_order_mark_at_the_start_of_each_file_is_accepted(beir):
    for name in ("corpus.jsonl", "queries.jsonl", "qa_candidates.jsonl", "qrels/train.tsv", "qrels/dev.tsv"):
        path = beir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_beir_folder(beir, ["train", "dev"])
    plain = load_beir_folder(resolve_data_path("tiny_hotpotqa"), ["train", "dev"])
    assert data.corpus == plain.corpus and data.queries == plain.queries and data.qrels == plain.qrels
    assert len(load_qa_candidates(beir / "qa_candidates.jsonl")) == len(
        load_qa_candidates(resolve_data_path("tiny_hotpotqa") / "qa_candidates.jsonl")
    )


# ---- (9) data.path is a file, a missing split, an empty query text -------------------------------------------
def test_data_path_pointing_at_a_file_says_so(beir):
    corpus = beir / "corpus.jsonl"
    message = f"{corpus}: is a file, not a data folder"
    with pytest.raises(DataFormatError, match=message):
        load_beir_folder(corpus)
    with pytest.raises(DataFormatError, match=message):
        build(corpus)
    with pytest.raises(DataFormatError, match=message):
        resolve_task_spec(f"{corpus}@dev")


def test_missing_split_lists_the_splits_that_exist(beir):
    with pytest.raises(DataFormatError) as err:
        build(beir, eval_split="test")
    assert (
        str(err.value)
        == f"{beir / 'qrels' / 'test.tsv'}: file not found: no split 'test' (this folder has: dev, train)"
    )
    with pytest.raises(DataFormatError, match=r"no split 'validation' \(this folder has: dev, train\)"):
        load_task_examples("qa", {"kind": "qa", "path": str(beir), "split": "validation"})
    with pytest.raises(DataFormatError, match=r"no such split \(has: dev, train\)"):
        LocalBEIRRetrieval(beir, split="test")


@pytest.mark.parametrize("text", ["", "   \t"])
def test_empty_query_text_is_reported_with_file_and_line(beir, text):
    path = beir / "queries.jsonl"
    records = rows(path)
    records[3]["text"] = text
    write_rows(path, records)
    with pytest.raises(DataFormatError) as err:
        load_beir_folder(beir)
    assert str(err.value) == f"{path}:4: field 'text': empty query text (query '{records[3]['_id']}')"
    qa = beir / "qa_candidates.jsonl"
    qid = rows(qa)[0]["qid"]
    edit_question(beir, qid, query=text)
    with pytest.raises(DataFormatError, match=rf"{qa}:1: field 'query': empty query text"):
        load_qa_candidates(qa)


def test_a_clean_fixture_builds_without_notices():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataNotice)
        dm = build(resolve_data_path("tiny_hotpotqa"))
    assert len(dm.train_examples) == len(train_ids(resolve_data_path("tiny_hotpotqa")))
