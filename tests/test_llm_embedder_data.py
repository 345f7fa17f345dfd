"""LLM-Embedder task data: the five task readers, bad-input errors, and the homogeneous batch sampler."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from datamodules.errors import DataFormatError
from datamodules.llm_embedder_tasks.datamodule import (
    MultiTaskDataModule,
    TaskGroupDataset,
    collate_task_groups,
    id_code,
    load_task_examples,
)
from datamodules.llm_embedder_tasks.long_context import chunk_examples
from datamodules.llm_embedder_tasks.sampler import HomogeneousTaskBatchSampler
from datamodules.llm_embedder_tasks.tool import tool_from_files


def test_toolbench_sample_keeps_relevant_apis_as_labelled_positives():
    examples = load_task_examples("tool", {"num_candidates": 8})
    assert len(examples) == 10
    first = examples[0]
    assert first.labels[:2] == (True, True) and not any(first.labels[2:])
    assert first.candidate_ids[:2] == ("SQUAKE::Checkhealth", "SQUAKE::Projects")
    assert "SQUAKE: Checkhealth" in first.candidates[0]
    assert len(first.candidates) == 8 and len(set(first.candidate_ids)) == 8


def test_toolbench_bad_file_names_the_field(tmp_path):
    path = tmp_path / "G1_query.json"
    path.write_text(json.dumps([{"query": "q", "api_list": [{"tool_name": "T"}], "relevant APIs": []}]))
    with pytest.raises(DataFormatError, match=r"G1_query.json: field '\[0\].api_list\[0\].api_name'"):
        tool_from_files([path])


def test_qa_local_is_label_free_with_bm25_chosen_own_paragraphs():
    examples = load_task_examples("qa", {"max_queries": 3, "num_candidates": 5}, tiny=True)
    assert len(examples) == 3
    assert all(e.labels is None and len(e.candidates) == 5 and e.answers for e in examples)
    labelled = load_task_examples(
        "qa", {"max_queries": 3, "num_candidates": 5, "use_labels": True}, tiny=True
    )
    assert all(len(e.labels) == 5 for e in labelled)


def test_convsearch_icl_and_long_context_samples():
    conv = load_task_examples("convsearch", {})
    assert conv[0].query.count("\n") == 2 and any(conv[0].labels) and conv[0].answers
    icl = load_task_examples("icl", {"num_candidates": 4})
    assert all(e.query_id not in e.candidate_ids and len(e.candidates) == 4 for e in icl)
    lrlm = load_task_examples("lrlm", {"chunk_words": 50, "num_candidates": 3})
    assert lrlm[0].candidates and lrlm[0].labels is None


def test_chunk_examples_use_only_earlier_chunks_and_the_next_chunk_as_answer():
    text = " ".join(f"w{i}" for i in range(100))
    examples = chunk_examples("book", text, chunk_words=10, continuation_words=3, num_candidates=2)
    first = examples[0]
    assert first.query_id == "book-2" and first.candidate_ids == ("book-1", "book-0")
    assert first.answers == ("w30 w31 w32",)
    assert len(examples) == 7  # chunks 2..8 have a following chunk


def test_unknown_task_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="data.tasks.x: unknown kind 'chatter'"):
        load_task_examples("x", {"kind": "chatter"})


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_every_global_batch_is_one_task_across_ranks(num_replicas):
    sizes = {"qa": 40, "tool": 12, "icl": 30}
    weights = {"qa": 1.0, "tool": 1.0, "icl": 0.0}
    ranks = [
        list(HomogeneousTaskBatchSampler(sizes, 3, weights, num_replicas, rank, seed=7, steps_per_epoch=50))
        for rank in range(num_replicas)
    ]
    tasks = Counter()
    for step in range(50):
        batches = [ranks[r][step] for r in range(num_replicas)]
        step_tasks = {key[0] for batch in batches for key in batch}
        assert len(step_tasks) == 1  # homogeneous across all ranks
        indices = [key[1] for batch in batches for key in batch]
        assert len(indices) == len(set(indices)) == 3 * num_replicas  # ranks get disjoint examples
        tasks[step_tasks.pop()] += 1
    assert tasks["icl"] == 0 and tasks["qa"] > 10 and tasks["tool"] > 10


def test_sampler_is_deterministic_per_epoch_and_checks_sizes():
    sampler = HomogeneousTaskBatchSampler({"a": 10, "b": 10}, 2, seed=1)
    first = list(sampler)
    assert first == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    with pytest.raises(ValueError, match="fewer than one global batch"):
        HomogeneousTaskBatchSampler({"a": 3}, 2, num_replicas=2)
    with pytest.raises(ValueError, match="unknown task"):
        HomogeneousTaskBatchSampler({"a": 10}, 2, weights={"b": 1.0})


def test_groups_put_a_labelled_positive_first_and_collate_one_task():
    tool = load_task_examples("tool", {"num_candidates": 8})
    dataset = TaskGroupDataset({"tool": tool}, {"tool": 4}, seed=0)
    batch = collate_task_groups([dataset[("tool", i, 0)] for i in range(3)])
    assert batch.task == "tool" and len(batch.flat_documents) == 12 and batch.group_size == 4
    assert batch.gold[:, 0].all() and batch.gold.shape == (3, 4)
    assert batch.document_codes.shape == (3, 4)
    shared = batch.document_ids[0][0]  # equal ids get equal codes, on every rank
    assert batch.document_codes[0, 0].item() == id_code(shared) != id_code(shared + "x")
    with pytest.raises(DataFormatError, match="group_size"):
        TaskGroupDataset({"tool": tool}, {"tool": 9}, seed=0)


def test_datamodule_batches_and_eval_interface():
    dm = MultiTaskDataModule(
        {"qa": {"max_queries": 6, "group_size": 5}, "tool": {"group_size": 4}},
        batch_size=2,
        steps_per_epoch=6,
        tiny=True,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and {b.task for b in batches} <= {"qa", "tool"}
    for batch in batches:
        group = 5 if batch.task == "qa" else 4
        assert len(batch.flat_documents) == 2 * group
        assert (batch.gold is None) == (batch.task == "qa")
    assert dm.eval_queries() and dm.load_corpus().corpus
