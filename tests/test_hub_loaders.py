"""The hub loaders, offline: ``datasets.load_dataset`` is replaced by an in-memory fake.

Each fake table follows the real public schema of its hub data set (BeIR/<name> + BeIR/<name>-qrels,
microsoft/ms_marco v1.1, Tevatron/wikipedia-nq, svakulenk0/qrecc, ToolBench query JSON, Muennighoff/flan
JSON lines, deepmind/pg19), and every test checks the arguments the loader passed to ``load_dataset``
(repo, config, split, streaming), so a renamed repo or a dropped ``streaming`` fails here.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import datasets
import pytest
from omegaconf import OmegaConf

from datamodules.beir import load_beir_from_hub
from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.convsearch import convsearch_from_hub
from datamodules.llm_embedder_tasks.datamodule import load_task_examples
from datamodules.llm_embedder_tasks.icl import icl_from_hub
from datamodules.llm_embedder_tasks.long_context import long_context_from_hub
from datamodules.llm_embedder_tasks.qa import qa_from_hub
from datamodules.llm_embedder_tasks.tool import tool_from_files, tool_from_hub
from datamodules.paths import PACKAGE_DIR
from datamodules.retrieval import RetrievalDataModule
from experiments import CONFIG_DIR

REAL_LOAD_DATASET = datasets.load_dataset
TOOLBENCH_SAMPLE = PACKAGE_DIR / "data" / "toolbench_example"


class FakeHub:
    """Stands in for ``datasets.load_dataset``.

    ``tables`` maps ``(path, name or data_files (a tuple for a list), split)`` to a list of rows (served as a ``Dataset``, or as an
    ``IterableDataset`` when the caller passes ``streaming=True``) or to an exception to raise. Every call's
    arguments are bound against the real ``load_dataset`` signature (a misspelt keyword fails) and recorded,
    defaults left out, in ``calls``.
    """

    def __init__(self, tables: dict[tuple, Any]):
        self.tables = tables
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any):
        arguments = dict(inspect.signature(REAL_LOAD_DATASET).bind(*args, **kwargs).arguments)
        assert "config_kwargs" not in arguments, (
            f"unexpected load_dataset keywords {arguments['config_kwargs']}"
        )
        self.calls.append(arguments)
        selector = arguments.get("name") or arguments.get("data_files")
        if isinstance(selector, list):  # several data files: keyed by their tuple
            selector = tuple(selector)
        key = (arguments["path"], selector, arguments.get("split"))
        if key not in self.tables:
            raise FileNotFoundError(f"fake hub has no table {key}")
        table = self.tables[key]
        if isinstance(table, Exception):
            raise table
        dataset = datasets.Dataset.from_list(table)
        return dataset.to_iterable_dataset() if arguments.get("streaming") else dataset


@pytest.fixture
def fake_hub(monkeypatch):
    """``fake_hub(tables)`` installs a :class:`FakeHub` as ``datasets.load_dataset`` and returns it."""

    def install(tables: dict[tuple, Any]) -> FakeHub:
        hub = FakeHub(tables)
        monkeypatch.setattr(datasets, "load_dataset", hub)
        return hub

    return install


# ---- BEIR (BeIR/<name>: configs corpus / queries; BeIR/<name>-qrels: one split per qrels file) ----------
SCIFACT_CORPUS = [
    {
        "_id": "4983",
        "title": "Microstructural development of human brain",
        "text": "Alterations of the architecture of cerebral white matter in the developing human brain.",
    },
    {"_id": "5836", "title": "", "text": "Induction of myelodysplasia by myeloid-derived suppressor cells."},
    {
        "_id": "7912",
        "title": "Aspirin and cancer",
        "text": "Low-dose aspirin reduces the incidence of colorectal cancer.",
    },
]
SCIFACT_QUERIES = [
    {"_id": "1", "title": "", "text": "0-dimensional biomaterials show inductive properties."},
    {"_id": "3", "title": "", "text": "Aspirin lowers colorectal cancer risk."},
]
SCIFACT_QRELS_TRAIN = [  # the hub qrels carry integer ids
    {"query-id": 1, "corpus-id": 4983, "score": 1},
    {"query-id": 1, "corpus-id": 5836, "score": 0},
]
SCIFACT_QRELS_TEST = [{"query-id": 3, "corpus-id": 7912, "score": 1}]


def scifact_tables() -> dict[tuple, Any]:
    return {
        ("BeIR/scifact", "corpus", "corpus"): SCIFACT_CORPUS,
        ("BeIR/scifact", "queries", "queries"): SCIFACT_QUERIES,
        ("BeIR/scifact-qrels", None, "train"): SCIFACT_QRELS_TRAIN,
        ("BeIR/scifact-qrels", None, "test"): SCIFACT_QRELS_TEST,
    }


def test_beir_from_hub_maps_corpus_queries_and_qrels(fake_hub):
    hub = fake_hub(scifact_tables())
    data = load_beir_from_hub("BeIR/scifact", ["train", "test"])

    assert hub.calls == [
        {"path": "BeIR/scifact", "name": "corpus", "split": "corpus", "revision": None},
        {"path": "BeIR/scifact", "name": "queries", "split": "queries", "revision": None},
        {"path": "BeIR/scifact-qrels", "name": None, "split": "train", "revision": None},
        {"path": "BeIR/scifact-qrels", "name": None, "split": "test", "revision": None},
    ]
    assert data.name == "scifact"
    assert list(data.corpus) == ["4983", "5836", "7912"]
    assert data.corpus["4983"].title == "Microstructural development of human brain"
    assert data.corpus["4983"].as_text() == (
        "Microstructural development of human brain: "
        "Alterations of the architecture of cerebral white matter in the developing human brain."
    )
    assert data.corpus["5836"].as_text() == "Induction of myelodysplasia by myeloid-derived suppressor cells."
    assert {q: data.queries[q].text for q in data.queries} == {
        "1": "0-dimensional biomaterials show inductive properties.",
        "3": "Aspirin lowers colorectal cancer risk.",
    }
    assert data.queries["1"].answers == ()
    assert data.qrels == {"train": {"1": {"4983": 1, "5836": 0}}, "test": {"3": {"7912": 1}}}
    assert [q.query_id for q in data.split_queries("test")] == ["3"]


def test_beir_from_hub_passes_the_revision_on(fake_hub):
    hub = fake_hub(scifact_tables())
    load_beir_from_hub("BeIR/scifact", ["test"], revision="abc123", qrels_revision="def456")
    assert [call["revision"] for call in hub.calls] == ["abc123", "abc123", "def456"]
    assert [call["split"] for call in hub.calls] == ["corpus", "queries", "test"]


def test_beir_from_hub_unreachable_says_how_to_use_a_local_folder(fake_hub, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cause = ConnectionError("Couldn't reach 'BeIR/scifact' on the Hub (LocalEntryNotFoundError)")
    fake_hub({("BeIR/scifact", "corpus", "corpus"): cause})
    with pytest.raises(DataFormatError) as info:
        load_beir_from_hub("BeIR/scifact", ["test"])
    message = str(info.value)
    assert message.startswith(
        "BeIR/scifact: could not load 'BeIR/scifact' (corpus, split corpus) from the hub"
    )
    assert "ConnectionError: Couldn't reach 'BeIR/scifact' on the Hub" in message
    assert "point data.path at it" in message
    assert "corpus.jsonl, queries.jsonl, qrels/<split>.tsv" in message
    assert info.value.__cause__ is cause


def test_beir_from_hub_offline_mode_and_a_missing_qrels_split_name_that_repo(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tables = scifact_tables()
    tables[("BeIR/scifact-qrels", None, "dev")] = ValueError(
        'Unknown split "dev". Should be one of [train, test].'
    )
    fake_hub(tables)
    with pytest.raises(DataFormatError) as info:
        load_beir_from_hub("BeIR/scifact", ["dev"])
    message = str(info.value)
    assert message.startswith(
        "BeIR/scifact-qrels: could not load 'BeIR/scifact-qrels' (default, split dev) from the hub "
        "(offline mode is set)."
    )
    assert "point data.path at it" in message


def test_beir_from_hub_empty_corpus_is_an_error(fake_hub):
    tables = scifact_tables()
    tables[("BeIR/scifact", "corpus", "corpus")] = []
    fake_hub(tables)
    with pytest.raises(DataFormatError, match="BeIR/scifact: corpus is empty"):
        load_beir_from_hub("BeIR/scifact", ["test"])


# ---- RetrievalDataModule(hub_name=...) (datamodules/retrieval.py) ----------------------------------------
def test_retrieval_datamodule_hub_name_loads_both_splits_and_mines_bm25_negatives(fake_hub):
    hub = fake_hub(scifact_tables())
    dm = RetrievalDataModule(
        hub_name="BeIR/scifact", qa_file=None, negatives="bm25", group_size=2, eval_split="test"
    )
    dm.setup("fit")

    assert [(c["path"], c.get("name"), c["split"]) for c in hub.calls] == [
        ("BeIR/scifact", "corpus", "corpus"),
        ("BeIR/scifact", "queries", "queries"),
        ("BeIR/scifact-qrels", None, "test"),  # splits are loaded sorted
        ("BeIR/scifact-qrels", None, "train"),
    ]
    assert dm.doc_index == {"4983": 0, "5836": 1, "7912": 2}
    (example,) = dm.train_examples  # train query 1: positive 4983; 5836 is judged (score 0), never a negative
    assert example.query_id == "1"
    assert example.query == "0-dimensional biomaterials show inductive properties."
    assert [d.doc_id for d in example.positives] == ["4983"]
    assert [d.doc_id for d in example.negatives] == ["7912"]
    assert [(q.query_id, q.text) for q in dm.eval_queries()] == [
        ("3", "Aspirin lowers colorectal cancer risk.")
    ]


def test_retrieval_datamodule_hub_name_rejects_candidate_negatives(fake_hub):
    fake_hub(scifact_tables())
    dm = RetrievalDataModule(hub_name="BeIR/scifact", negatives="candidates", eval_split="test")
    with pytest.raises(DataFormatError, match="use negatives=bm25 for plain BEIR data"):
        dm.setup("fit")


# ---- QA: microsoft/ms_marco v1.1 --------------------------------------------------------------------------
def msmarco_row(query_id: int, query: str, answers: list[str], texts: list[str], selected: list[int]) -> dict:
    return {
        "answers": answers,
        "passages": {
            "is_selected": selected,
            "passage_text": texts,
            "url": [f"https://example.org/{query_id}/{i}" for i in range(len(texts))],
        },
        "query": query,
        "query_id": query_id,
        "query_type": "DESCRIPTION",
        "wellFormedAnswers": [],
    }


MSMARCO_ROWS = [
    msmarco_row(
        1185869,
        ")what was the immediate impact of the success of the manhattan project?",
        ["No Answer Present."],
        ["The Manhattan Project was a research project.", "It produced the first atomic bombs."],
        [0, 0],
    ),
    msmarco_row(
        19699,
        "what is the boiling point of water",
        ["100 degrees Celsius"],
        [
            "Paris is the capital of France.",
            "Water boils at 100 degrees Celsius at sea level, the boiling point of water.",
            "The boiling point of ethanol is 78 degrees.",
        ],
        [0, 1, 0],
    ),
    msmarco_row(
        524332,
        "what is the highest mountain",
        ["", "Mount Everest"],
        ["Mount Everest is the highest mountain on Earth.", "K2 is the second highest mountain."],
        [1, 0],
    ),
]


def test_qa_from_hub_msmarco_skips_no_answer_rows_and_keeps_bm25_top_passages(fake_hub):
    hub = fake_hub({("microsoft/ms_marco", "v1.1", "train"): MSMARCO_ROWS})
    examples = qa_from_hub("msmarco", num_candidates=2, use_labels=True)

    assert hub.calls == [{"path": "microsoft/ms_marco", "name": "v1.1", "split": "train", "streaming": False}]
    assert [e.query_id for e in examples] == ["19699", "524332"]  # 1185869 has "No Answer Present." only
    water, everest = examples
    assert water.task == "qa"
    assert water.query == "what is the boiling point of water"
    assert water.answers == ("100 degrees Celsius",)
    assert water.candidates == (  # BM25: two query terms, then one; the Paris passage shares none
        "Water boils at 100 degrees Celsius at sea level, the boiling point of water.",
        "The boiling point of ethanol is 78 degrees.",
    )
    assert water.candidate_ids == ("19699-1", "19699-2")
    assert water.labels == (True, False)
    assert everest.answers == ("Mount Everest",)  # the empty answer string is dropped
    assert everest.candidates == (
        "Mount Everest is the highest mountain on Earth.",
        "K2 is the second highest mountain.",
    )
    assert everest.labels == (True, False)


def test_qa_from_hub_msmarco_max_queries_streams_and_stops(fake_hub):
    hub = fake_hub({("microsoft/ms_marco", "v1.1", "validation"): MSMARCO_ROWS})
    examples = qa_from_hub("msmarco", split="validation", num_candidates=None, max_queries=1)

    assert hub.calls == [
        {"path": "microsoft/ms_marco", "name": "v1.1", "split": "validation", "streaming": True}
    ]
    (example,) = examples
    assert example.query_id == "19699"
    assert example.candidates == tuple(MSMARCO_ROWS[1]["passages"]["passage_text"])  # all, in file order
    assert example.candidate_ids == ("19699-0", "19699-1", "19699-2")
    assert example.labels is None  # label-free unless asked


NQ_ROWS = [
    {
        "query_id": "0",
        "query": "big little lies season 2 how many episodes",
        "answers": ["seven"],
        "positive_passages": [
            {
                "docid": "18768923",
                "title": "Big Little Lies (TV series)",
                "text": "The second season consists of seven episodes.",
            }
        ],
        "negative_passages": [
            {"docid": "5473512", "title": "Little Lies", "text": "Little Lies is a song by Fleetwood Mac."},
            {"docid": "200", "title": "", "text": "An untitled passage about television."},
        ],
    },
    {  # the test split carries no passages: nothing to retrieve, skipped
        "query_id": "1",
        "query": "who sings does he love me with reba",
        "answers": ["Linda Davis"],
        "positive_passages": [],
        "negative_passages": [],
    },
]


def test_qa_from_hub_nq_puts_titled_positives_first(fake_hub):
    hub = fake_hub({("Tevatron/wikipedia-nq", None, "train"): NQ_ROWS})
    examples = qa_from_hub("nq", num_candidates=5, use_labels=True)

    assert hub.calls == [{"path": "Tevatron/wikipedia-nq", "split": "train", "streaming": False}]
    (example,) = examples
    assert example.query_id == "0"
    assert example.query == "big little lies season 2 how many episodes"
    assert example.answers == ("seven",)
    assert example.candidates == (
        "Big Little Lies (TV series): The second season consists of seven episodes.",
        "Little Lies: Little Lies is a song by Fleetwood Mac.",
        "An untitled passage about television.",
    )
    assert example.candidate_ids == ("18768923", "5473512", "200")  # the corpus docids, shared across queries
    assert example.labels == (True, False, False)


def test_qa_from_hub_unknown_dataset_names_the_known_ones(fake_hub):
    hub = fake_hub({})
    with pytest.raises(ValueError, match="unknown QA hub data set 'hotpot' \\(known: msmarco, nq\\)"):
        qa_from_hub("hotpot")
    assert hub.calls == []


# ---- Conversational search: svakulenk0/qrecc -------------------------------------------------------------
def qrecc_row(
    conversation: int, turn: int, context: list[str], question: str, rewrite: str, answer: str
) -> dict:
    return {
        "Context": context,
        "Question": question,
        "Rewrite": rewrite,
        "Answer": answer,
        "Answer_URL": f"https://en.wikipedia.org/wiki/Conversation_{conversation}" if answer else "",
        "Conversation_no": conversation,
        "Turn_no": turn,
        "Conversation_source": "nq",
    }


Q1, A1 = "What is the capital of France?", "Paris is the capital of France."
Q2, A2 = "How many people live there?", "About 2.1 million people live in Paris."
Q3, A3 = "What is its most famous museum?", "The Louvre is the most visited museum in the world."
QRECC_ROWS = [
    qrecc_row(1, 1, [], Q1, Q1, A1),
    qrecc_row(1, 2, [Q1, A1], Q2, "How many people live in Paris?", A2),
    qrecc_row(1, 3, [Q1, A1, Q2, A2], Q3, "What is the most famous museum in Paris?", A3),
    qrecc_row(2, 1, [], "Who wrote Hamlet?", "Who wrote Hamlet?", ""),  # unanswered: neither query nor key
    qrecc_row(3, 1, [], "When was the Eiffel Tower built?", "When was the Eiffel Tower built?", "In 1889."),
]


def test_convsearch_from_hub_first_rows_use_each_others_answers_as_keys(fake_hub):
    hub = fake_hub({("svakulenk0/qrecc", None, "train"): QRECC_ROWS})
    examples = convsearch_from_hub(max_rows=2)

    assert hub.calls == [{"path": "svakulenk0/qrecc", "split": "train"}]
    first, second = examples
    assert (first.task, first.query_id, first.query) == ("convsearch", "1-1", Q1)
    assert first.answers == (A1,)
    assert first.candidates == (A1, A2) and first.candidate_ids == ("1-1", "1-2")
    assert first.labels == (True, False)
    assert second.query_id == "1-2"
    assert second.query == f"{Q1}\n{A1}\n{Q2}"
    assert second.candidates == (A2, A1) and second.candidate_ids == ("1-2", "1-1")
    assert second.labels == (True, False)


def test_convsearch_from_hub_truncates_context_and_skips_unanswered_turns(fake_hub):
    hub = fake_hub({("svakulenk0/qrecc", None, "test"): QRECC_ROWS})
    examples = convsearch_from_hub(split="test", num_candidates=8, max_turns=2)

    assert hub.calls == [{"path": "svakulenk0/qrecc", "split": "test"}]
    answers = {"1-1": A1, "1-2": A2, "1-3": A3, "3-1": "In 1889."}
    assert [e.query_id for e in examples] == ["1-1", "1-2", "1-3", "3-1"]  # 2-1 has no answer
    third = examples[2]
    assert third.query == f"{Q2}\n{A2}\n{Q3}"  # the last 2 context utterances, then the question
    for example in examples:  # 4 answered turns: each sees its own answer first, then the other 3
        assert example.candidate_ids[0] == example.query_id
        assert sorted(example.candidate_ids[1:]) == sorted(set(answers) - {example.query_id})
        assert example.candidates == tuple(answers[k] for k in example.candidate_ids)
        assert example.labels == (True, False, False, False)
        assert "" not in example.candidates
    assert examples == convsearch_from_hub(split="test", num_candidates=8, max_turns=2)  # seeded: same order


# ---- Tool retrieval: ToolBench query JSON through load_dataset("json", data_files=...) -------------------
def toolbench_api(tool: str, api: str, category: str, description: str, required: list[str]) -> dict:
    return {
        "category_name": category,
        "tool_name": tool,
        "api_name": api,
        "api_description": description,
        "required_parameters": [
            {"name": name, "type": "STRING", "description": "", "default": ""} for name in required
        ],
        "optional_parameters": [],
        "method": "GET",
        "template_response": {"status": "str"},
    }


WEATHER = toolbench_api("Weather", "Current", "Weather", "Current weather for a city.", ["city"])
FORECAST = toolbench_api("Weather", "Forecast", "Weather", " ", ["city", "days"])  # blank, as in ToolBench
QUOTES = toolbench_api("Finance Data", "Quote", "Finance", "Latest stock quote.", ["symbol"])
NEWS = toolbench_api("Finance Data", "News", "Finance", "Market news.", [])
TOOL_ROWS = [
    {
        "api_list": [WEATHER, FORECAST],
        "query": "What's the weather in Paris right now?",
        "relevant APIs": [["Weather", "Current"]],
        "query_id": 11,
    },
    {
        "api_list": [QUOTES, NEWS],
        "query": "Give me the latest quote for GOOG.",
        "relevant APIs": [["Finance Data", "Quote"]],
        "query_id": 27,
    },
]
WEATHER_TEXT = "Weather: Current. category: Weather. Current weather for a city.. parameters: city"
FORECAST_TEXT = "Weather: Forecast. category: Weather. parameters: city, days"
QUOTES_TEXT = "Finance Data: Quote. category: Finance. Latest stock quote.. parameters: symbol"
NEWS_TEXT = "Finance Data: News. category: Finance. Market news."


def test_tool_from_hub_relevant_api_first_then_the_querys_own_apis(fake_hub):
    files = "toolbench/data/instruction/G1_query.json"
    hub = fake_hub({("json", files, "train"): TOOL_ROWS})
    weather, quote = tool_from_hub(files, num_candidates=2)

    assert hub.calls == [{"path": "json", "data_files": files, "split": "train"}]
    assert (weather.task, weather.query_id, weather.query) == (
        "tool",
        "G1_query-11",
        "What's the weather in Paris right now?",
    )
    assert weather.answers == ()
    assert weather.candidate_ids == ("Weather::Current", "Weather::Forecast")
    assert weather.candidates == (WEATHER_TEXT, FORECAST_TEXT)
    assert weather.labels == (True, False)
    assert quote.query_id == "G1_query-27"
    assert quote.candidate_ids == ("Finance Data::Quote", "Finance Data::News")
    assert quote.candidates == (QUOTES_TEXT, NEWS_TEXT)
    assert quote.labels == (True, False)


def test_tool_from_hub_adds_other_queries_apis_as_negatives(fake_hub):
    files = ["G1_query.json"]
    hub = fake_hub({("json", "G1_query.json", "train"): TOOL_ROWS})
    weather, quote = tool_from_hub(files, num_candidates=8)

    assert hub.calls == [{"path": "json", "data_files": "G1_query.json", "split": "train"}]
    assert weather.candidate_ids[:2] == ("Weather::Current", "Weather::Forecast")
    assert sorted(weather.candidate_ids[2:]) == ["Finance Data::News", "Finance Data::Quote"]
    assert quote.candidate_ids[:2] == ("Finance Data::Quote", "Finance Data::News")
    assert sorted(quote.candidate_ids[2:]) == ["Weather::Current", "Weather::Forecast"]
    assert weather.labels == quote.labels == (True, False, False, False)
    texts = {"Weather::Current": WEATHER_TEXT, "Weather::Forecast": FORECAST_TEXT}
    texts |= {"Finance Data::Quote": QUOTES_TEXT, "Finance Data::News": NEWS_TEXT}
    assert weather.candidates == tuple(texts[k] for k in weather.candidate_ids)


def test_tool_from_hub_reads_the_real_toolbench_file_like_the_local_reader(fake_hub):
    """The vendored G1 file, through an Arrow table (struct fields unified, missing keys filled), gives
    the same keys and labels as the local JSON reader."""
    path = TOOLBENCH_SAMPLE / "G1_query.json"
    fake_hub({("json", str(path), "train"): json.loads(path.read_text(encoding="utf-8"))})
    from_hub = tool_from_hub(str(path))
    local = tool_from_files([path])

    assert (
        [e.query_id for e in from_hub]
        == [e.query_id for e in local]
        == [
            "G1_query-1",
            "G1_query-2",
            "G1_query-3",
            "G1_query-4",
            "G1_query-5",
        ]
    )
    assert [e.query for e in from_hub] == [e.query for e in local]
    assert [e.candidates for e in from_hub] == [e.candidates for e in local]
    assert [e.labels for e in from_hub] == [e.labels for e in local]
    assert from_hub[0].candidate_ids[:2] == ("SQUAKE::Checkhealth", "SQUAKE::Projects")
    assert (
        from_hub[0].candidates[0] == "SQUAKE: Checkhealth. category: Logistics"
    )  # blank description dropped


# ---- In-context learning: Muennighoff/flan JSON lines (inputs, targets, task) ----------------------------
def flan_rows(task: str, inputs: list[str]) -> list[dict]:
    return [{"inputs": text, "targets": f"answer {i}", "task": task} for i, text in enumerate(inputs)]


AG_NEWS = flan_rows(
    "ag_news_subset",
    [
        "stocks rally as markets rise",
        "stocks fall as markets drop",
        "football team wins the cup final",
        "football team loses the cup final",
        "this row is past per_task",
    ],
)
TREC = flan_rows(
    "trec", ["who invented the telephone", "who invented the light bulb", "what is the speed of light"]
)
FLAN = "hf://datasets/Muennighoff/flan/train/{}_10templates.jsonl"


def test_icl_from_hub_streams_each_task_file_and_pairs_bm25_neighbours(fake_hub):
    hub = fake_hub(
        {
            ("json", FLAN.format("ag_news_subset"), "train"): AG_NEWS,
            ("json", FLAN.format("trec"), "train"): TREC,
        }
    )
    examples = icl_from_hub(["ag_news_subset", "trec"], per_task=4, num_candidates=1)

    assert hub.calls == [
        {"path": "json", "data_files": FLAN.format("ag_news_subset"), "split": "train", "streaming": True},
        {"path": "json", "data_files": FLAN.format("trec"), "split": "train", "streaming": True},
    ]
    by_id = {e.query_id: e for e in examples}
    assert sorted(by_id) == [
        "ag_news_subset-0",
        "ag_news_subset-1",
        "ag_news_subset-2",
        "ag_news_subset-3",
        "trec-0",
        "trec-1",
        "trec-2",
    ]  # per_task=4 stops ag_news_subset before its 5th row
    first = by_id["ag_news_subset-0"]
    assert (first.task, first.query, first.answers) == ("icl", "stocks rally as markets rise", ("answer 0",))
    assert first.candidates == ("stocks fall as markets drop\nanswer 1",)
    assert first.candidate_ids == ("ag_news_subset-1",)
    assert first.labels is None
    assert by_id["ag_news_subset-2"].candidate_ids == ("ag_news_subset-3",)
    assert by_id["ag_news_subset-3"].candidates == ("football team wins the cup final\nanswer 2",)
    assert by_id["trec-0"].candidate_ids == ("trec-1",)  # shares "invented" (who/the are stopwords)
    assert by_id["trec-2"].candidates == ("who invented the light bulb\nanswer 1",)


def test_icl_from_hub_too_few_records_names_the_task(fake_hub):
    fake_hub({("json", FLAN.format("trec"), "train"): TREC})
    with pytest.raises(
        DataFormatError, match="trec: needs more than 5 records to draw demonstrations from, has 3"
    ):
        icl_from_hub(["trec"], per_task=200, num_candidates=5)


# ---- Long context: deepmind/pg19 (short_book_title, publication_date, url, text), streamed ---------------
def pg19_row(title: str, text: str, book_number: int = 11) -> dict:
    return {
        "short_book_title": title,
        "publication_date": 1865,
        "url": f"http://www.gutenberg.org/ebooks/{book_number}",
        "text": text,
    }


def test_long_context_from_hub_streams_books_and_chunks_them(fake_hub):
    books = [
        pg19_row("Book A", " ".join(f"a{i}" for i in range(12))),
        pg19_row("Book B", " ".join(f"b{i}" for i in range(8))),
        pg19_row("Book C", " ".join(f"c{i}" for i in range(12))),  # past max_books
    ]
    hub = fake_hub({("deepmind/pg19", None, "train"): books})
    examples = long_context_from_hub(
        max_books=2, chunk_words=2, continuation_words=1, num_candidates=2, max_chunks_per_book=2
    )

    assert hub.calls == [{"path": "deepmind/pg19", "split": "train", "streaming": True}]
    # words kept per book: 2 * (2 + 2 + 1) = 10 -> chunks 0..4; queries are chunks 2 and 3
    assert [e.query_id for e in examples] == ["pg19-0-2", "pg19-0-3", "pg19-1-2"]
    a2, a3, b2 = examples
    assert (a2.task, a2.query, a2.answers) == ("lrlm", "a4 a5", ("a6",))
    assert a2.candidates == ("a2 a3", "a0 a1") and a2.candidate_ids == ("pg19-0-1", "pg19-0-0")
    assert (a3.query, a3.answers) == ("a6 a7", ("a8",))  # "a10 a11" were cut by max_chunks_per_book
    assert a3.candidates == ("a4 a5", "a2 a3")
    assert (b2.query, b2.answers, b2.candidates) == ("b4 b5", ("b6",), ("b2 b3", "b0 b1"))
    assert a2.labels is None


# ---- The shipped config's hub task specs reach the hub loaders with valid arguments ----------------------
def test_llm_embedder_base_hub_task_specs_load_through_the_fake_hub(fake_hub, monkeypatch):
    monkeypatch.delenv("TOOLBENCH_QUERIES", raising=False)
    config = OmegaConf.load(CONFIG_DIR / "exp" / "llm_embedder_base.yaml")
    tasks = OmegaConf.to_container(config.data.tasks, resolve=True)
    flan_tasks = tasks["icl"]["tasks"]
    assert all(spec["source"] == "hub" for spec in tasks.values())

    nine_inputs = [f"question {i} about topic {i % 3}" for i in range(9)]
    tables: dict[tuple, Any] = {
        ("microsoft/ms_marco", "v1.1", "train"): [
            msmarco_row(
                i, f"query {i}", [f"answer {i}"], [f"passage {i} {j}" for j in range(10)], [1] + [0] * 9
            )
            for i in range(2)
        ],
        ("Tevatron/wikipedia-nq", None, "train"): NQ_ROWS,
        ("json", "toolbench/data/instruction/G1_query.json", "train"): json.loads(
            (TOOLBENCH_SAMPLE / "G1_query.json").read_text(encoding="utf-8")
        ),
        ("svakulenk0/qrecc", None, "train"): QRECC_ROWS,
        ("deepmind/pg19", None, "train"): [pg19_row("Book A", " ".join(f"w{i}" for i in range(96 * 10)))],
    }
    for task in flan_tasks:
        tables[("json", FLAN.format(task), "train")] = flan_rows(task, nine_inputs)
    hub = fake_hub(tables)

    loaded = {name: load_task_examples(name, spec) for name, spec in tasks.items()}

    assert [(c["path"], c.get("name") or c.get("data_files"), c.get("streaming")) for c in hub.calls] == [
        ("microsoft/ms_marco", "v1.1", False),
        ("Tevatron/wikipedia-nq", None, False),
        ("json", "toolbench/data/instruction/G1_query.json", None),
        ("svakulenk0/qrecc", None, None),
        *[("json", FLAN.format(task), True) for task in flan_tasks],
        ("deepmind/pg19", None, True),
    ]
    assert [len(loaded[name]) for name in ("qa", "nq", "tool", "convsearch", "icl", "lrlm")] == [
        2,
        1,
        5,
        4,
        9 * len(flan_tasks),
        1,  # 10 chunks of 96 words, 8 earlier chunks needed and one after: chunk 8 only
    ]
    assert all(len(e.candidates) == 8 for e in loaded["qa"] + loaded["tool"] + loaded["icl"] + loaded["lrlm"])
    assert loaded["lrlm"][0].query_id == "pg19-0-8"


def test_tool_from_hub_keeps_query_ids_unique_across_files(fake_hub):
    """ToolBench numbers each file's queries from 1: the file stem keeps the ids apart, as locally."""
    weather, quote = TOOL_ROWS
    hub = fake_hub(
        {("json", "G1_query.json", "train"): [weather], ("json", "G2_query.json", "train"): [quote]}
    )
    examples = tool_from_hub(["G1_query.json", "G2_query.json"], num_candidates=2)
    assert [c["data_files"] for c in hub.calls] == ["G1_query.json", "G2_query.json"]
    ids = [e.query_id for e in examples]
    assert ids[0].startswith("G1_query-") and ids[1].startswith("G2_query-") and len(set(ids)) == 2
