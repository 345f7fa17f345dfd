"""Data readers: real files load; bad files fail naming the file, line and field."""

from __future__ import annotations

import json

import pytest

from datamodules.beir import load_beir_folder
from datamodules.errors import DataFormatError
from datamodules.paths import resolve_data_path
from datamodules.qa_candidates import load_qa_candidates
from datamodules.retrieval import RetrievalDataModule


def write_beir(folder, corpus_lines, query_lines, qrels_lines):
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")


GOOD_DOC = json.dumps({"_id": "d1", "title": "T", "text": "a document"})
GOOD_QUERY = json.dumps({"_id": "q1", "text": "a query"})


def test_vendored_hotpotqa_loads_with_its_splits():
    data = load_beir_folder(resolve_data_path("hotpotqa"))
    assert len(data.corpus) == 4858
    assert len(data.qrels["train"]) == 300 and len(data.qrels["dev"]) == 100
    examples = load_qa_candidates(
        resolve_data_path("hotpotqa") / "qa_candidates.jsonl", set(data.qrels["dev"])
    )
    assert len(examples) == 100 and all(len(ex.positives) == 2 for ex in examples)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match="corpus.jsonl: file not found"):
        load_beir_folder_with(tmp_path, corpus=None)


def load_beir_folder_with(tmp_path, corpus=(GOOD_DOC,), queries=(GOOD_QUERY,), qrels=("q1\td1\t1",)):
    (tmp_path / "qrels").mkdir(exist_ok=True)
    if corpus is not None:
        (tmp_path / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return load_beir_folder(tmp_path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    with pytest.raises(DataFormatError) as err:
        load_beir_folder_with(tmp_path, corpus=(GOOD_DOC, '{"_id": "d2", "text": '))
    assert "corpus.jsonl:2" in str(err.value) and "malformed JSON" in str(err.value)


def test_missing_field_is_named(tmp_path):
    with pytest.raises(DataFormatError) as err:
        load_beir_folder_with(tmp_path, corpus=(GOOD_DOC, json.dumps({"_id": "d2"})))
    assert "corpus.jsonl:2" in str(err.value) and "field 'text'" in str(err.value)


def test_empty_corpus_is_refused(tmp_path):
    with pytest.raises(DataFormatError, match="corpus is empty"):
        load_beir_folder_with(tmp_path, corpus=("",))


def test_qrels_with_unknown_document(tmp_path):
    with pytest.raises(DataFormatError) as err:
        load_beir_folder_with(tmp_path, qrels=("q1\tnope\t1",))
    assert "test.tsv:2" in str(err.value) and "unknown corpus id 'nope'" in str(err.value)


def test_datamodule_groups_put_the_positive_first():
    dm = RetrievalDataModule(path="tiny_hotpotqa", group_size=3, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch.queries) == 2 and len(batch.flat_documents) == 6 and batch.group_size == 3
    assert batch.gold[:, 0].all(), "each group starts with a positive"
    assert batch.positive_codes.shape[0] == 2


def test_datamodule_sampling_is_deterministic_per_epoch():
    def first_batch(epoch):
        dm = RetrievalDataModule(path="tiny_hotpotqa", group_size=3, batch_size=4, seed=7)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader)).documents

    assert first_batch(0) == first_batch(0)
    assert first_batch(0) != first_batch(1)


def test_bm25_negatives_exclude_the_positives():
    dm = RetrievalDataModule(path="tiny_hotpotqa", negatives="bm25", group_size=4)
    dm.setup("fit")
    for ex in dm.train_examples:
        positive_ids = {d.doc_id for d in ex.positives}
        assert ex.negatives and not positive_ids & {d.doc_id for d in ex.negatives}


def test_hub_loading_offline_says_how_to_use_a_local_copy(monkeypatch):
    from datamodules.beir import load_beir_from_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataFormatError) as err:
        load_beir_from_hub("mteb/scifact", ["test"])  # the real datasets.load_dataset, offline
    assert "data.path" in str(err.value) and "mteb/scifact" in str(err.value)
