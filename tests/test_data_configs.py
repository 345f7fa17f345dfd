"""The full-size data configs (experiments/data/*_hub.yaml, llm_embedder_tasks_reference.yaml), the chat task,
the Tulu prompts and the named MTEB task sets: each composes, builds and loads offline (fake hub or debug=tiny)."""

from __future__ import annotations

import json
import pickle

import datasets
import pytest
from hydra.utils import instantiate

from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.chat import (
    chat_examples,
    chat_from_file,
    exchange_text,
    session_exchanges,
)
from datamodules.llm_embedder_tasks.readers import TASK_DATA
from datamodules.mteb_tasks import resolve_task_spec
from datamodules.unlabeled_queries import UnlabeledQueryDataModule, single_turn_question
from experiments.config_check import check_config
from tests.helpers import compose_config
from tests.hub_fakes import FakeHub, converted, hub_rows

HUB_DATA_CONFIGS = [
    "beir_hub",
    "msmarco_passage_hub",
    "retrieval_mix_hub",
    "tulu_queries_hub",
    "llm_embedder_tasks_hub",
    "llm_embedder_tasks_reference",
]


@pytest.fixture
def fake_hub(monkeypatch):
    def install(tables: dict[tuple, object]) -> FakeHub:
        hub = FakeHub(tables)
        monkeypatch.setattr(datasets, "load_dataset", hub)
        return hub

    return install


def data_module(name: str, tiny: bool):
    experiment = "llm_embedder_tiny" if name.startswith("llm_embedder") else "default"
    overrides = [f"exp={experiment}", f"data={name}", *(["debug=tiny"] if tiny else [])]
    cfg = compose_config(overrides)
    check_config(cfg)
    return instantiate(cfg.data, _convert_="all")


@pytest.mark.parametrize("name", HUB_DATA_CONFIGS)
def test_each_hub_data_config_composes_and_smoke_loads_offline_under_debug_tiny(name):
    dm = data_module(name, tiny=True)  # debug=tiny: the in-repo fixture and local task samples, no network
    dm.setup("fit")
    assert getattr(dm, "train_examples", None) or getattr(dm, "train_queries", None) or dm.examples
    assert dm.eval_queries()


def test_retrieval_mix_config_builds_all_three_sources_from_the_hub(fake_hub):
    nq_dev = {**hub_rows("Tevatron_wikipedia-nq__default_train")[0], "query_id": "dev-0"}
    hotpot_dev = {**hub_rows("hotpotqa_hotpot_qa__distractor_train")[0], "id": "dev-0"}
    msmarco_dev = {**hub_rows("microsoft_ms_marco__v2.1_train")[0], "query_id": 7}
    fake_hub(
        {
            ("microsoft/ms_marco", "v2.1", "train"): hub_rows("microsoft_ms_marco__v2.1_train"),
            ("microsoft/ms_marco", "v2.1", "validation"): [msmarco_dev],
            ("parquet", converted("Tevatron/wikipedia-nq", "default", "train"), "train"): hub_rows(
                "Tevatron_wikipedia-nq__default_train"
            ),
            ("parquet", converted("Tevatron/wikipedia-nq", "default", "dev"), "train"): [nq_dev],
            ("parquet", converted("hotpotqa/hotpot_qa", "distractor", "train"), "train"): hub_rows(
                "hotpotqa_hotpot_qa__distractor_train"
            ),
            ("parquet", converted("hotpotqa/hotpot_qa", "distractor", "validation"), "train"): [hotpot_dev],
        }
    )
    dm = data_module("retrieval_mix_hub", tiny=False)
    with pytest.warns(UserWarning, match=r"left out 1 question\(s\) with no answer"):
        dm.setup("fit")
    sources = sorted({e.query_id.split("-")[0] for e in dm.train_examples})
    assert sources == ["hotpotqa", "msmarco", "nq"]
    assert all(e.answers for e in dm.train_examples)
    assert sorted(q.query_id for q in dm.eval_queries()) == ["hotpotqa-dev-0", "msmarco-7", "nq-dev-0"]


# ---- Tulu prompts (LLM2Vec-Gen) -----------------------------------------------------------------------------
def test_tulu_prompts_are_single_turn_user_messages_sampled_once_and_cached(fake_hub):
    rows = hub_rows("vaibhavad_tulu-3-sft-mixture__train")
    hub = fake_hub({("vaibhavad/tulu-3-sft-mixture", None, "train"): rows})
    dm = UnlabeledQueryDataModule(queries="tulu", max_train_queries=None, path="hotpotqa")
    dm.setup("fit")
    assert hub.calls == [{"path": "vaibhavad/tulu-3-sft-mixture", "split": "train", "streaming": True}]
    expected = [
        r["messages"][0]["content"]
        for r in rows
        if r["id"].startswith("assembled-") and r["id"][-1].isdigit()
    ]
    assert [
        q.text for q in dm.train_queries
    ] == expected  # the multi-turn and the system-first rows are dropped

    sampled = UnlabeledQueryDataModule(queries="tulu", max_train_queries=2, path="hotpotqa", seed=7)
    sampled.setup("fit")
    again = UnlabeledQueryDataModule(queries="tulu", max_train_queries=2, path="hotpotqa", seed=7)
    again.setup("fit")
    assert len(sampled.train_queries) == 2 and sampled.train_queries == again.train_queries
    assert len(hub.calls) == 2  # the seeded sample was built once, then read from the cache


def test_single_turn_question_filter():
    user, bot = {"role": "user", "content": " hi "}, {"role": "assistant", "content": "hello"}
    assert single_turn_question({"messages": [user, bot]}) == "hi"
    assert single_turn_question({"messages": [bot, user]}) is None
    assert single_turn_question({"messages": [user, bot, user, bot]}) is None
    assert single_turn_question({"messages": [{"role": "user", "content": "  "}, bot]}) is None


# ---- Multi-Session Chat ---------------------------------------------------------------------------------------
def test_chat_keys_are_the_earlier_exchanges_and_the_reply_is_the_answer():
    examples = chat_from_file(TASK_DATA["msc_sample"], min_history=4)
    first, second = examples[:2]  # the real MSC dialogue: 4 exchanges in session 1, 2 in session 2
    assert first.query == "Are you still in the military?" and first.answers[0].startswith(
        "No, I have no longer"
    )
    assert len(first.candidates) == 4 and first.candidates[0] == (
        "Speaker 1: I need some advice on where to go on vacation, have you been anywhere lately?\n"
        "Speaker 2: I have been all over the world. I'm military."
    )
    assert second.candidates[:4] == first.candidates and second.candidates[4].startswith(
        "Speaker 1: Are you still in the military?"
    )  # the current session's earlier turn is a key too
    assert first.labels is None and first.task == "chat"
    assert len(chat_from_file(TASK_DATA["msc_sample"], min_history=5)) == len(examples) - 1


def long_dialogue(exchanges_per_session: int) -> list[list[str]]:
    return [[f"turn {s}-{i}" for i in range(2 * exchanges_per_session)] for s in range(5)]


@pytest.mark.parametrize("max_history", [None, 5])
def test_chat_keys_of_a_long_dialogue_equal_per_turn_copies_and_grow_linearly(max_history):
    sessions = long_dialogue(20)
    examples = chat_examples("d", sessions, min_history=3, max_history=max_history)
    texts = [exchange_text(u, r) for session in sessions for u, r in session_exchanges(session)]
    ids = [f"d-{s + 1}-{t}" for s in range(5) for t in range(20)]
    assert len(examples) == 80
    for example in examples:
        end = ids.index(example.query_id)  # every exchange before this turn (the most recent max_history)
        start = max(0, end - max_history) if max_history else 0
        assert tuple(example.candidates) == tuple(texts[start:end])
        assert list(example.candidate_ids) == ids[start:end] and example.candidates[-1] == texts[end - 1]
    assert pickle.loads(pickle.dumps(examples)) == examples  # DataLoader workers get equal examples
    # the keys share the dialogue's history: 4x the turns is ~4x the bytes, not 16x (copies per turn)
    sizes = [len(pickle.dumps(chat_examples("d", long_dialogue(n), min_history=3))) for n in (20, 80)]
    assert sizes[1] < 6 * sizes[0], sizes


def test_chat_file_with_a_bad_session_names_file_line_and_field(tmp_path):
    path = tmp_path / "msc.jsonl"
    path.write_text(json.dumps({"dataID": "x", "first_session_dialogue": "not a list"}) + "\n")
    with pytest.raises(
        DataFormatError, match=r"msc.jsonl:1: field 'first_session_dialogue': expected a list"
    ):
        chat_from_file(path)


# ---- named MTEB task sets -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "count", "split"),
    [
        ("nanobeir", 13, "train"),
        ("beir", 15, None),
        ("mteb_eng_v2_retrieval", 10, "test"),
        ("rteb_eng_public", 15, None),
    ],
)
def test_named_task_sets_resolve_offline_to_public_retrieval_tasks(name, count, split):
    tasks = resolve_task_spec(name)
    assert len(tasks) == count
    assert all(t.metadata.type == "Retrieval" and t.metadata.is_public for t in tasks)
    if split:
        assert all(t.metadata.eval_splits == [split] for t in tasks)
