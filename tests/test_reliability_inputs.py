"""Bad input files: every case fails with a message naming the file, the line and the field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datamodules.beir import load_beir_folder
from datamodules.errors import DataFormatError
from datamodules.jsonl import read_jsonl
from datamodules.paths import resolve_data_path
from datamodules.qa_candidates import load_qa_candidates


@pytest.fixture
def beir(tmp_path) -> Path:
    """A writable copy of the in-repo tiny HotpotQA fixture (BEIR layout + qa_candidates.jsonl)."""
    folder = tmp_path / "data"
    shutil.copytree(resolve_data_path("tiny_hotpotqa"), folder)
    return folder


def set_line(path: Path, number: int, content: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = content + b"\n"
    path.write_bytes(b"".join(lines))


def first_record(path: Path) -> dict:
    return json.loads(path.read_bytes().splitlines()[0])


def load_error(folder: Path) -> str:
    with pytest.raises(DataFormatError) as err:
        load_beir_folder(folder, ["train", "dev"])
    return str(err.value)


def test_the_fixture_itself_loads(beir):
    corpus = load_beir_folder(beir, ["train", "dev"])
    assert corpus.corpus and corpus.queries and corpus.qrels["train"]


def test_malformed_json_line(beir):
    set_line(beir / "corpus.jsonl", 3, b'{"_id": "d3", "text": "unterminated')
    assert load_error(beir).startswith(f"{beir / 'corpus.jsonl'}:3: malformed JSON")


def test_line_that_is_not_an_object(beir):
    set_line(beir / "queries.jsonl", 2, b'["a", "list"]')
    assert load_error(beir) == f"{beir / 'queries.jsonl'}:2: expected a JSON object, got list"


def test_missing_field(beir):
    record = first_record(beir / "queries.jsonl")
    del record["text"]
    set_line(beir / "queries.jsonl", 1, json.dumps(record).encode())
    assert load_error(beir) == f"{beir / 'queries.jsonl'}:1: field 'text': missing"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("text", 5, "expected str, got int"),
        ("_id", None, "expected str/int, got NoneType"),
        ("title", ["x"], "expected str, got list"),
    ],
)
def test_wrong_type(beir, field, value, expected):
    record = first_record(beir / "corpus.jsonl")
    record[field] = value
    set_line(beir / "corpus.jsonl", 1, json.dumps(record).encode())
    assert load_error(beir) == f"{beir / 'corpus.jsonl'}:1: field '{field}': {expected}"


def test_wrong_nested_type_in_qa_candidates(beir):
    path = beir / "qa_candidates.jsonl"
    record = first_record(path)
    record["candidates"][1]["is_supporting"] = "yes"
    set_line(path, 1, json.dumps(record).encode())
    with pytest.raises(DataFormatError) as err:
        load_qa_candidates(path)
    assert str(err.value) == f"{path}:1: field 'candidates[1].is_supporting': wrong type str"


def test_empty_corpus(beir):
    (beir / "corpus.jsonl").write_bytes(b"\n\n")
    assert (
        load_error(beir)
        == f"{beir / 'corpus.jsonl'}: corpus is empty: a retrieval corpus needs at least one document"
    )


def test_empty_queries(beir):
    (beir / "queries.jsonl").write_bytes(b"")
    assert load_error(beir) == f"{beir / 'queries.jsonl'}: no queries: the file is empty"


def test_empty_qrels(beir):
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert load_error(beir) == f"{beir / 'qrels' / 'dev.tsv'}: no judgements in this qrels file"


@pytest.mark.parametrize(("column", "field"), [(0, "query-id"), (1, "corpus-id")])
def test_qrels_with_unknown_ids(beir, column, field):
    path = beir / "qrels" / "train.tsv"
    row = path.read_bytes().splitlines()[1].split(b"\t")
    row[column] = b"no-such-id"
    set_line(path, 2, b"\t".join(row))
    message = load_error(beir)
    assert message.startswith(f"{path}:2: field '{field}': unknown")
    assert "'no-such-id'" in message


def test_qrels_with_bad_score_and_column_count(beir):
    path = beir / "qrels" / "train.tsv"
    row = path.read_bytes().splitlines()[1].split(b"\t")
    set_line(path, 2, b"\t".join([row[0], row[1], b"high"]))
    assert load_error(beir) == f"{path}:2: field 'score': expected a number, got 'high'"
    set_line(path, 2, b"\t".join(row[:2]))
    assert load_error(beir).startswith(f"{path}:2: expected 3 tab-separated columns")


@pytest.mark.parametrize(
    ("file", "field"), [("corpus.jsonl", "_id"), ("queries.jsonl", "_id"), ("qa_candidates.jsonl", "qid")]
)
def test_duplicate_ids(beir, file, field):
    path = beir / file
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([*lines, lines[0]]) + b"\n")
    with pytest.raises(DataFormatError) as err:
        load_qa_candidates(path) if file == "qa_candidates.jsonl" else load_beir_folder(
            beir, ["train", "dev"]
        )
    assert str(err.value).startswith(f"{path}:{len(lines) + 1}: field '{field}': duplicate id")


def test_non_utf8_bytes_in_jsonl(beir):
    set_line(beir / "corpus.jsonl", 2, b'{"_id": "x", "text": "caf\xe9"}')
    assert load_error(beir).startswith(f"{beir / 'corpus.jsonl'}:2: not valid UTF-8")


def test_non_utf8_bytes_in_qrels(beir):
    path = beir / "qrels" / "dev.tsv"
    set_line(path, 3, b"q\xff\xfe\tdoc\t1")
    assert load_error(beir).startswith(f"{path}:3: not valid UTF-8")


def test_enormous_line_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "ok"}\n' + b'{"_id": "b", "text": "' + b"x" * 50_000 + b'"}\n')
    with pytest.raises(DataFormatError) as err:
        list(read_jsonl(path, max_line_bytes=4096))
    assert str(err.value) == f"{path}:2: line is longer than the 4096-byte limit (a broken file?)"


def test_missing_files_and_folders(beir, tmp_path):
    assert load_error(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: data folder not found")
    (beir / "qrels" / "dev.tsv").unlink()
    assert load_error(beir) == (
        f"{beir / 'qrels' / 'dev.tsv'}: file not found: no split 'dev' (this folder has: train)"
    )
