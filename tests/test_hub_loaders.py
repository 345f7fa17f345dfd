"""The LLM-Embedder task loaders from the hub, offline: ``datasets.load_dataset`` is the fake of
tests/hub_fakes.py (real-schema rows from tests/fixtures/hub_rows/; every call checked to be script-free).

Every test checks the arguments the loader passed to ``load_dataset`` (repo, config, data files, split,
streaming), so a renamed repository or file, a dropped ``streaming`` or a loading-script repository fails here.
Retrieval sets (BEIR in the mteb layout, MS MARCO / NQ / HotpotQA questions) are in test_hub_retrieval_data.py.
"""

from __future__ import annotations

import json
import tarfile
from typing import Any

import datasets
import pytest
from omegaconf import OmegaConf

from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.convsearch import convsearch_from_hub
from datamodules.llm_embedder_tasks.datamodule import load_task_examples
from datamodules.llm_embedder_tasks.icl import icl_from_hub
from datamodules.llm_embedder_tasks.long_context import long_context_from_hub
from datamodules.llm_embedder_tasks.tool import tool_from_files, tool_from_hub
from datamodules.paths import PACKAGE_DIR
from experiments import CONFIG_DIR
from tests.hub_fakes import HUB_ROWS, FakeHub, converted, hub_rows

TOOLBENCH_SAMPLE = PACKAGE_DIR / "data" / "toolbench_example"


@pytest.fixture
def fake_hub(monkeypatch):
    """``fake_hub(tables)`` installs a :class:`FakeHub` as ``datasets.load_dataset`` and returns it."""

    def install(tables: dict[tuple, Any]) -> FakeHub:
        hub = FakeHub(tables)
        monkeypatch.setattr(datasets, "load_dataset", hub)
        return hub

    return install


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
FLAN = "hf://datasets/Muennighoff/flan/train/{}_10templates_train.jsonl"  # renamed from {}_10templates.json


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


def test_icl_from_hub_reads_real_flan_rows(fake_hub):
    rows = hub_rows("Muennighoff_flan__train_ag_news_subset_10templates_train")
    fake_hub({("json", FLAN.format("ag_news_subset"), "train"): rows})
    examples = icl_from_hub(["ag_news_subset"], per_task=len(rows), num_candidates=3)
    assert len(examples) == len(rows)
    first = next(e for e in examples if e.query_id == "ag_news_subset-0")
    assert first.query == rows[0]["inputs"] and first.answers == (rows[0]["targets"],) == ("World",)
    assert all(c.endswith("\nWorld") for c in first.candidates)  # demonstrations: "<inputs>\n<targets>"
    assert "ag_news_subset-0" not in first.candidate_ids


# ---- Long context: emozilla/pg19 (parquet copy of PG-19) and CodeParrot, streamed ----------------------------
def test_long_context_from_hub_streams_books_and_chunks_them(fake_hub):
    books = [
        {"text": " ".join(f"a{i}" for i in range(12))},
        {"text": " ".join(f"b{i}" for i in range(8))},
        {"text": " ".join(f"c{i}" for i in range(12))},  # past max_books
    ]
    hub = fake_hub({("emozilla/pg19", None, "train"): books})
    examples = long_context_from_hub(
        max_books=2, chunk_words=2, continuation_words=1, num_candidates=2, max_chunks_per_book=2
    )

    assert hub.calls == [{"path": "emozilla/pg19", "split": "train", "streaming": True}]
    # words kept per book: 2 * (2 + 2 + 1) = 10 -> chunks 0..4; queries are chunks 2 and 3
    assert [e.query_id for e in examples] == ["pg19-0-2", "pg19-0-3", "pg19-1-2"]
    a2, a3, b2 = examples
    assert (a2.task, a2.query, a2.answers) == ("lrlm", "a4 a5", ("a6",))
    assert a2.candidates == ("a2 a3", "a0 a1") and a2.candidate_ids == ("pg19-0-1", "pg19-0-0")
    assert (a3.query, a3.answers) == ("a6 a7", ("a8",))  # "a10 a11" were cut by max_chunks_per_book
    assert a3.candidates == ("a4 a5", "a2 a3")
    assert (b2.query, b2.answers, b2.candidates) == ("b4 b5", ("b6",), ("b2 b3", "b0 b1"))
    assert a2.labels is None


def test_long_context_reads_the_real_schemas_of_pg19_and_codeparrot(fake_hub):
    code_files = converted("codeparrot/codeparrot-clean-valid", "default", "train")
    hub = fake_hub(
        {
            ("emozilla/pg19", None, "train"): hub_rows("emozilla_pg19__train"),
            ("parquet", code_files, "train"): hub_rows("codeparrot_codeparrot-clean-valid__default_train"),
        }
    )
    books = long_context_from_hub(chunk_words=40, num_candidates=3)
    code = long_context_from_hub(dataset="codeparrot", chunk_words=20, num_candidates=2)
    assert books and code and hub.calls[1]["data_files"] == code_files
    assert books[0].query.split()[:1] == hub_rows("emozilla_pg19__train")[0]["text"].split()[120:121]
    assert code[0].query_id == "codeparrot-0-2" and "def" in " ".join(e.query for e in code)
    with pytest.raises(ValueError, match="unknown long-text data set 'books3' \\(known: pg19, codeparrot\\)"):
        long_context_from_hub(dataset="books3")


# ---- The shipped hub task mix loads through the fake hub with real-schema rows ----------------------------------
def hub_mix_tables(flan_tasks: list[str]) -> dict[tuple, Any]:
    flan = hub_rows("Muennighoff_flan__train_ag_news_subset_10templates_train")
    tables: dict[tuple, Any] = {
        ("microsoft/ms_marco", "v2.1", "train"): hub_rows("microsoft_ms_marco__v2.1_train"),
        ("parquet", converted("Tevatron/wikipedia-nq", "default", "train"), "train"): hub_rows(
            "Tevatron_wikipedia-nq__default_train"
        ),
        ("nayohan/msc-raw", None, "train"): hub_rows("nayohan_msc-raw__train"),
        ("svakulenk0/qrecc", None, "train"): hub_rows("svakulenk0_qrecc__train"),
        ("json", "toolbench/data/instruction/G1_query.json", "train"): json.loads(
            (TOOLBENCH_SAMPLE / "G1_query.json").read_text(encoding="utf-8")
        ),
        ("emozilla/pg19", None, "train"): hub_rows("emozilla_pg19__train"),
        ("parquet", converted("codeparrot/codeparrot-clean-valid", "default", "train"), "train"): hub_rows(
            "codeparrot_codeparrot-clean-valid__default_train"
        ),
    }
    for task in flan_tasks:
        tables[("json", FLAN.format(task), "train")] = [{**row, "task": task} for row in flan]
    return tables


def test_llm_embedder_hub_task_mix_loads_through_the_fake_hub(fake_hub, monkeypatch):
    monkeypatch.delenv("TOOLBENCH_QUERIES", raising=False)
    config = OmegaConf.load(CONFIG_DIR / "data" / "llm_embedder_tasks_hub.yaml")
    tasks = OmegaConf.to_container(config.tasks, resolve=True)
    tasks["chat"]["min_history"] = 4  # the fixture dialogue has 4 earlier exchanges
    for name in ("lrlm_books", "lrlm_code"):
        tasks[name] |= {"chunk_words": 20, "num_candidates": 2}
    tasks["icl"]["num_candidates"] = 3
    hub = fake_hub(hub_mix_tables(tasks["icl"]["tasks"]))

    with pytest.warns(UserWarning, match="left out 1 question"):
        loaded = {name: load_task_examples(name, spec) for name, spec in tasks.items()}

    assert {name: bool(examples) for name, examples in loaded.items()} == dict.fromkeys(tasks, True)
    assert [e.query_id for e in loaded["qa"]] == ["1185869", "1185868"]  # 1185870: "No Answer Present."
    chat = loaded["chat"]
    assert [e.query for e in chat] == [
        "Are you still in the military?",
        "Oh wow that's very admirable. What do you do now?",
    ]
    assert (
        chat[1].candidates[-1].startswith("Speaker 1: Are you still in the military?\nSpeaker 2: No, I have")
    )
    assert loaded["convsearch"][2].query.endswith(
        "What significant fact can you tell me about Gary that you liked?"
    )
    assert {c["path"] for c in hub.calls} >= {
        "microsoft/ms_marco",
        "nayohan/msc-raw",
        "emozilla/pg19",
        "parquet",
    }


# ---- The reference's own files: the archive from the hub, read as tasks ------------------------------------------
@pytest.fixture
def reference_archive(tmp_path, monkeypatch):
    """A small llm-embedder.tar.gz of the reference's real toy rows, served by a fake hf_hub_download."""
    archive = tmp_path / "llm-embedder.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(HUB_ROWS / "llm_embedder_reference", arcname="llm-embedder")
    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(archive)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return calls


def test_reference_files_give_passage_keys_for_convsearch_and_history_keys_for_chat(reference_archive):
    conv = load_task_examples("convsearch", {"source": "reference", "file": "convsearch"})
    rows = hub_rows("llm_embedder_reference/convsearch/qrecc/train.concat.json")
    assert reference_archive == [
        {"repo_id": "namespace-Pt/projects", "filename": "llm-embedder.tar.gz", "repo_type": "dataset"}
    ]
    assert conv[0].candidates == tuple(rows[0]["pos"] + rows[0]["neg"])  # passages, not answers
    assert conv[0].candidate_ids[0] == "54386775" and conv[0].labels == (True,) + (False,) * len(
        rows[0]["neg"]
    )
    chat = load_task_examples("chat", {"source": "reference", "file": "chat"})
    assert chat[0].candidates == tuple(hub_rows("llm_embedder_reference/chat/msc/train.json")[0]["history"])
    assert chat[0].labels is None and chat[0].task == "chat"
    qa = load_task_examples("qa", {"source": "reference", "file": "qa_msmarco", "use_labels": False})
    assert qa[0].query_id == "1185869" and qa[0].labels is None and qa[0].candidate_ids[0] == "0"
    books = load_task_examples("lrlm", {"source": "reference", "file": "lrlm_books3"})
    assert books[0].labels is None and len(books[0].candidates) == 4
    assert len(reference_archive) == 1  # extracted once into the cache, then reused
    tool = load_task_examples("tool", {"source": "reference", "file": "tool"})
    assert tool[0].query_id == "49635" and tool[0].answers == () and tool[0].labels[:3] == (True, True, True)


def test_reference_file_with_a_bad_row_names_file_line_and_field(tmp_path):
    folder = tmp_path / "ref" / "qa" / "nq"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(
        json.dumps({"query": "q", "answers": ["a"], "pos": "not a list", "neg": []}) + "\n"
    )
    with pytest.raises(DataFormatError, match=r"qa/nq/train.json:1: field 'pos': expected list, got str"):
        load_task_examples(
            "nq", {"kind": "qa", "source": "reference", "file": "qa_nq", "root": str(tmp_path / "ref")}
        )


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


# ---- no loader runs a loading script ----------------------------------------------------------------------------
def every_hub_table() -> list:
    from datamodules.hub import HubTable, json_files
    from datamodules.hub_qa import QA_TABLES
    from datamodules.llm_embedder_tasks.chat import MSC_REPO
    from datamodules.llm_embedder_tasks.convsearch import HUB_NAME
    from datamodules.llm_embedder_tasks.icl import FLAN_FILES, FLAN_REPO
    from datamodules.llm_embedder_tasks.long_context import LONG_TEXT_SOURCES
    from datamodules.unlabeled_queries import HUB_QUERY_SETS

    tables = [t for splits in QA_TABLES.values() for t in splits.values()]
    tables += list(HUB_QUERY_SETS.values()) + [table("train") for table, _ in LONG_TEXT_SOURCES.values()]
    tables += [HubTable(MSC_REPO), HubTable(HUB_NAME), json_files(FLAN_REPO, FLAN_FILES.format(task="trec"))]
    return tables


def test_no_hub_table_is_a_loading_script_or_remote_code():
    from tests.hub_fakes import script_free_problem

    tables = every_hub_table()
    assert len(tables) == 12
    for table in tables:
        arguments = {"path": table.path, "data_files": table.data_files}
        assert script_free_problem(arguments) is None, table
        if (
            table.data_files
        ):  # packaged builders read parquet / json files of a repository (or its conversion)
            assert table.data_files.startswith("hf://datasets/") and table.data_files.endswith(
                (".parquet", ".jsonl")
            )


@pytest.mark.parametrize("repo", ["Tevatron/wikipedia-nq", "deepmind/pg19", "BeIR/scifact", "BeIR/msmarco"])
def test_a_loading_script_repository_is_refused_naming_what_to_use(repo):
    from datamodules.hub import HubTable, load_table

    with pytest.raises(DataFormatError, match=f"{repo}: is a loading-script repository.*; use "):
        load_table(HubTable(repo))
