"""Retrieval data from the hub, offline: BEIR sets in the mteb layout, the QA sources (MS MARCO, NQ, HotpotQA)
and their export to a local BEIR folder. ``datasets.load_dataset`` is the fake of tests/hub_fakes.py serving
real-schema rows (tests/fixtures/hub_rows/, SOURCES.md there), and every call is checked to be script-free."""

from __future__ import annotations

import datasets
import pytest

from datamodules.beir import load_beir_folder, load_beir_from_hub
from datamodules.errors import DataFormatError
from datamodules.hub_export import SourceSpec, cached_export, export_sources
from datamodules.hub_qa import iter_qa_examples
from datamodules.llm_embedder_tasks.qa import qa_from_hub
from datamodules.missing import DataNotice
from datamodules.retrieval import RetrievalDataModule
from tests.hub_fakes import FakeHub, converted, hub_rows

MSMARCO_QA = ("microsoft/ms_marco", "v2.1")
NQ_TRAIN = converted("Tevatron/wikipedia-nq", "default", "train")
HOTPOT_TRAIN = converted("hotpotqa/hotpot_qa", "distractor", "train")


@pytest.fixture
def fake_hub(monkeypatch):
    def install(tables: dict[tuple, object]) -> FakeHub:
        hub = FakeHub(tables)
        monkeypatch.setattr(datasets, "load_dataset", hub)
        return hub

    return install


def msmarco_beir_tables() -> dict[tuple, object]:
    return {
        ("mteb/msmarco", "corpus", "corpus"): hub_rows("mteb_msmarco__corpus"),
        ("mteb/msmarco", "queries", "queries"): hub_rows("mteb_msmarco__queries"),
        ("mteb/msmarco", "default", "train"): hub_rows("mteb_msmarco__default_train"),
    }


def qa_tables() -> dict[tuple, object]:
    return {
        (*MSMARCO_QA, "train"): hub_rows("microsoft_ms_marco__v2.1_train"),
        (*MSMARCO_QA, "validation"): [{**hub_rows("microsoft_ms_marco__v2.1_train")[1], "query_id": 1185871}],
        ("parquet", NQ_TRAIN, "train"): hub_rows("Tevatron_wikipedia-nq__default_train"),
        ("parquet", HOTPOT_TRAIN, "train"): hub_rows("hotpotqa_hotpot_qa__distractor_train"),
    }


# ---- BEIR in the mteb layout ---------------------------------------------------------------------------------
def test_beir_from_hub_reads_the_mteb_layout(fake_hub):
    hub = fake_hub(msmarco_beir_tables())
    data = load_beir_from_hub("mteb/msmarco", ["train"], revision="c5a29a10")

    assert [(c["path"], c["name"], c["split"], c["revision"]) for c in hub.calls] == [
        ("mteb/msmarco", "corpus", "corpus", "c5a29a10"),
        ("mteb/msmarco", "queries", "queries", "c5a29a10"),
        ("mteb/msmarco", "default", "train", "c5a29a10"),
    ]
    assert list(data.corpus) == ["0", "1", "2"]
    assert data.corpus["0"].text.startswith("The presence of communication amid scientific minds")
    assert (
        data.queries["1185869"].text
        == ")what was the immediate impact of the success of the manhattan project?"
    )
    assert data.qrels == {"train": {"1185869": {"0": 1}}}  # score float64 on the hub -> int


def test_beir_script_repository_names_the_parquet_copy(fake_hub):
    hub = fake_hub({})
    with pytest.raises(
        DataFormatError, match="BeIR/scifact: is a loading-script repository.*use mteb/scifact"
    ):
        load_beir_from_hub("BeIR/scifact", ["test"])
    assert hub.calls == []


def test_beir_from_hub_offline_says_how_to_use_a_local_folder(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    fake_hub({("mteb/scifact", "corpus", "corpus"): ConnectionError("no network")})
    with pytest.raises(DataFormatError) as err:
        load_beir_from_hub("mteb/scifact", ["test"])
    assert str(err.value).startswith(
        "mteb/scifact: could not load mteb/scifact (corpus) split corpus from the hub"
    )
    assert "(offline mode is set)" in str(err.value) and "point data.path at the folder" in str(err.value)


def test_retrieval_datamodule_on_mteb_msmarco_mines_negatives_with_bm25(fake_hub):
    tables = msmarco_beir_tables()
    tables[("mteb/msmarco", "default", "dev")] = hub_rows("mteb_msmarco__default_train")
    fake_hub(tables)
    dm = RetrievalDataModule(
        hub_name="mteb/msmarco", qa_file=None, negatives="bm25", group_size=3, eval_split="dev"
    )
    dm.setup("fit")
    (example,) = dm.train_examples
    assert [d.doc_id for d in example.positives] == ["0"]
    assert sorted(d.doc_id for d in example.negatives) == ["1", "2"]  # every other passage; the gold never


# ---- QA sources: rows -> questions with judged candidates ------------------------------------------------------
def test_msmarco_rows_keep_passages_with_selection_labels_and_hash_ids(fake_hub):
    hub = fake_hub(qa_tables())
    first, second, unanswered = iter_qa_examples("msmarco", "train")
    assert hub.calls == [{"path": "microsoft/ms_marco", "name": "v2.1", "split": "train", "streaming": True}]
    assert first.query.query_id == "1185869" and first.query.answers[0].startswith("The immediate impact")
    selected = hub_rows("microsoft_ms_marco__v2.1_train")[0]["passages"]["is_selected"]
    assert (
        [c.is_relevant for c in first.candidates]
        == [bool(x) for x in selected]
        == [True, False, False, False, False]
    )
    assert first.candidates[0].document.text.startswith("Introduction The presence of communication")
    assert first.candidates[0].document.doc_id.startswith("msm-")
    assert unanswered.query.answers == ()  # "No Answer Present." is no answer
    assert first.origin == "microsoft/ms_marco (v2.1) split train:1"


def test_nq_rows_keep_corpus_docids_and_titles(fake_hub):
    hub = fake_hub(qa_tables())
    (example,) = iter_qa_examples("nq", "train")
    assert hub.calls == [{"path": "parquet", "data_files": NQ_TRAIN, "split": "train", "streaming": True}]
    assert example.query.text == "big little lies season 2 how many episodes"
    assert example.query.answers == ("seven",)
    positive = example.candidates[0]
    assert positive.is_relevant and positive.document.doc_id == "18768923"
    assert positive.document.title == "Big Little Lies (TV series)"


def test_hotpotqa_rows_mark_the_supporting_paragraphs(fake_hub):
    fake_hub(qa_tables())
    (example,) = iter_qa_examples("hotpotqa", "train")
    row = hub_rows("hotpotqa_hotpot_qa__distractor_train")[0]
    assert example.query.text == row["question"] and example.query.answers == (row["answer"],)
    assert len(example.candidates) == len(row["context"]["title"])
    supporting = {c.document.title for c in example.candidates if c.is_relevant}
    assert supporting == set(row["supporting_facts"]["title"])


def test_qa_from_hub_counts_questions_without_answers_under_skip(fake_hub):
    fake_hub(qa_tables())
    with pytest.raises(
        DataFormatError, match=r"split train:3: field 'answers': question '1185870' has no answer"
    ):
        qa_from_hub("msmarco", num_candidates=3)
    with pytest.warns(
        DataNotice, match=r"left out 1 question\(s\) with no answer .*first: microsoft/ms_marco"
    ):
        examples = qa_from_hub("msmarco", num_candidates=3, use_labels=True, on_missing="skip")
    assert [e.query_id for e in examples] == ["1185869", "1185868"]
    assert all(len(e.candidates) == 3 for e in examples)


# ---- export to a local BEIR folder ------------------------------------------------------------------------------
def test_export_writes_a_beir_folder_the_local_readers_load(fake_hub, tmp_path):
    fake_hub(qa_tables())
    sources = [
        SourceSpec("msmarco", max_dev_queries=1),
        SourceSpec("nq", None, 0),
        SourceSpec("hotpotqa", None, 0),
    ]
    with pytest.warns(DataNotice, match=r"left out 1 question\(s\) with no answer"):
        counts = export_sources(sources, tmp_path / "mix", on_missing="skip")
    assert counts["train"] == 4 and counts["dev"] == 1

    data = load_beir_folder(tmp_path / "mix", ["train", "dev"])
    assert sorted(data.qrels["train"]) == [
        "hotpotqa-5a8c7595554299585d9e36b6",
        "msmarco-1185868",
        "msmarco-1185869",
        "nq-0",
    ]
    assert data.queries["nq-0"].answers == ("seven",)
    nq_row = hub_rows("Tevatron_wikipedia-nq__default_train")[0]
    assert data.qrels["train"]["nq-0"] == {p["docid"]: 1 for p in nq_row["positive_passages"]}
    dm = RetrievalDataModule(
        path=str(tmp_path / "mix"), negatives="candidates", group_size=2, eval_split="dev"
    )
    dm.setup("fit")
    assert len(dm.train_examples) == 4 and len(dm.eval_queries()) == 1


def test_datamodule_hub_sources_build_the_folder_once(fake_hub):
    hub = fake_hub(qa_tables())
    specs = [{"name": "nq", "max_dev_queries": 0}]
    dm = RetrievalDataModule(
        path=None, hub_sources=specs, negatives="candidates", group_size=1, eval_split="train"
    )
    dm.setup("fit")
    assert [e.query_id for e in dm.train_examples] == ["nq-0"]
    calls = len(hub.calls)
    assert cached_export(specs) == cached_export(specs)  # cached: no further hub reads
    assert len(hub.calls) == calls


def test_hub_source_spec_is_checked():
    with pytest.raises(
        ValueError, match="data.hub_sources entry .*expected a name \\(msmarco, nq, hotpotqa\\)"
    ):
        SourceSpec.parse({"name": "marco"})
