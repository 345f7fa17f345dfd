"""DreamModule: gradients reach the embedder only, the frozen LM stays put, heads are chosen as configured."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch

from datamodules.batch import RetrievalBatch
from datamodules.mining import bm25_top_k
from datamodules.retrieval import RetrievalDataModule
from lightning_modules.dream.heads import (
    middle_third_heads,
    parse_head_map,
    rank_heads_by_intervention,
    top_heads,
)
from lightning_modules.dream.lm_passes import suffix_logits
from lightning_modules.dream.module import DreamModule
from lightning_modules.losses.dream import document_bias, key_position_bias, per_example_nll


def make_module(**overrides) -> DreamModule:
    args = dict(
        embedder={"name_or_path": "tiny-llama", "pooling": "mean", "max_length": 32, "lora": {"r": 4}},
        frozen_lm={"name_or_path": "tiny-llama"},
        max_document_tokens=8,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
    )
    args.update(overrides)
    module = DreamModule(**args)
    module.log = lambda *a, **k: None  # no trainer attached
    return module


DOCUMENTS = [
    ["paris is the capital of france", "the seine is a river", "a city"],
    ["the seine flows in paris", "france has a capital", "question answer passage"],
]


def tiny_batch(documents: list[list[str]] | None = None) -> RetrievalBatch:
    documents = documents or DOCUMENTS
    return RetrievalBatch(
        query_ids=["q1", "q2"],
        queries=["which city is the capital of france ?", "what river flows in paris ?"],
        documents=documents,
        document_ids=[[f"d{i}{j}" for j in range(len(row))] for i, row in enumerate(documents)],
        document_codes=torch.arange(sum(map(len, documents))).view(len(documents), -1),
        gold=torch.tensor([[True] + [False] * (len(row) - 1) for row in documents]),
        answers=[("paris",), ("the seine",)],
    )


@pytest.fixture(scope="module")
def module() -> DreamModule:
    return make_module()


def test_frozen_lm_is_its_own_instance(module):
    embedder_params = {id(p) for p in module.embedder.parameters()}
    assert not embedder_params & {id(p) for p in module.frozen_lm.parameters()}
    assert not any(p.requires_grad for p in module.frozen_lm.parameters())
    assert module.frozen_lm.config._attn_implementation == "dream_sdpa"


def test_gradients_reach_the_embedder_and_nothing_else_and_the_lm_is_unchanged():
    module = make_module()
    module.train()
    batch = tiny_batch()
    probe = module.batch_preparer().lm_inputs(batch.documents[:1], batch.queries[:1], batch.answers[:1])
    with torch.no_grad():
        before = module.frozen_lm(
            input_ids=probe.input_ids, attention_mask=probe.attention_mask
        ).logits.clone()
    embedder_before = {
        n: p.detach().clone() for n, p in module.embedder.named_parameters() if p.requires_grad
    }
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = [p.grad for p in module.embedder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in module.frozen_lm.parameters())
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    with torch.no_grad():
        after = module.frozen_lm(input_ids=probe.input_ids, attention_mask=probe.attention_mask).logits
    assert torch.equal(before, after)
    assert any(
        not torch.equal(embedder_before[n], p)
        for n, p in module.embedder.named_parameters()
        if p.requires_grad
    )


def test_candidate_modes_and_targets(module):
    batch = tiny_batch()
    prepared = module.batch_preparer()(batch)
    assert [sorted(r) for r in prepared.documents] == [sorted(r) for r in DOCUMENTS]
    assert prepared.documents != DOCUMENTS, "the groups are shuffled (seeded per query and epoch)"
    for row, ids, gold in zip(prepared.documents, prepared.document_ids, prepared.gold):
        assert row[int(gold.float().argmax())] in (DOCUMENTS[0][0], DOCUMENTS[1][0]), "gold moves with it"
        assert [DOCUMENTS[int(i[1])][int(i[2])] for i in ids] == row, "ids move with it"
    expected = module.embedder.text_tokenizer(prepared.flat_documents, "document")
    assert torch.equal(prepared.embedder_inputs.documents.input_ids, expected.input_ids)
    assert prepared.embedder_inputs.candidates.tolist() == [[0, 1, 2], [3, 4, 5]]
    in_batch = make_module(candidates="in_batch").batch_preparer()(batch)
    assert in_batch.embedder_inputs.candidates.tolist() == [list(range(6))] * 2
    assert in_batch.lm_inputs.document_index.max().item() == 5, "six candidates per query"
    settings = module.settings
    assert settings.prompt_and_target("who?", ["paris"]) == ("Question: who?\nAnswer:", " paris")
    assert settings.prompt_and_target("who?", []) == ("A question that these passages answer:", " who?")
    query_target = make_module(target="query")
    assert query_target.settings.prompt_and_target("who?", ["paris"])[1] == " who?"


def test_shared_candidates_are_embedded_once_and_the_cosines_index_them(module):
    shared = [["paris is the capital of france", "a city"], ["a city", "the seine is a river"]]
    batch = make_module(shuffle_candidates=False).batch_preparer()(tiny_batch(shared))
    inputs = batch.embedder_inputs
    assert len(inputs.documents) == 3 and inputs.candidates.tolist() == [[0, 1], [1, 2]]
    expected = module.embedder.text_tokenizer(
        ["paris is the capital of france", "a city", "the seine is a river"], "document"
    )
    assert torch.equal(inputs.documents.input_ids, expected.input_ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"query_prompt": "Q: {query}"}, "must not contain"),
        ({"candidates": "bm25"}, "model.candidates"),
        ({"heads": {"selection": "explicit"}}, "needs model.heads.layers"),
        ({"heads": {"selection": "explicit", "layers": {"7": [0]}}}, "layer 7 is out of range"),
        ({"heads": {"selection": "intervention", "calibration_questions": 64}}, "between 1 and 32"),
        ({"frozen_lm": None}, "needs model.frozen_lm"),
    ],
)
def test_bad_configuration_is_reported(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_module(**overrides)


def test_head_maps():
    assert middle_third_heads(30, 9) == {layer: tuple(range(9)) for layer in range(10, 20)}
    assert middle_third_heads(3, 4) == {1: (0, 1, 2, 3)}
    assert parse_head_map({"2": [3, 1, 1], 0: [0]}, 3, 4) == {2: (1, 3), 0: (0,)}
    with pytest.raises(ValueError, match="heads \\[4\\] are out of range"):
        parse_head_map({0: [4]}, 3, 4)


def test_intervention_effect_is_the_nll_difference_of_each_head(module):
    batch = tiny_batch()
    inputs = module.batch_preparer().lm_inputs(batch.documents, batch.queries, batch.answers)
    gold = torch.tensor([[True, False, False], [True, False, False]])
    ranking = rank_heads_by_intervention(module.frozen_lm.model, inputs, gold, 0.1)
    assert len(ranking) == 3 * 4
    assert [r.effect for r in ranking] == sorted((r.effect for r in ranking), reverse=True)
    layer, head = ranking[-1].layer, ranking[-1].head
    nll = {}
    for name, scores in (("gold", gold.float()), ("others", 1 - gold.float())):
        bias = key_position_bias(document_bias(scores, 0.1), inputs.document_index)
        logits = suffix_logits(module.frozen_lm.model, inputs, bias, {layer: (head,)})  # full pass, no cache
        nll[name] = per_example_nll(logits, inputs.labels)
    assert abs((nll["others"] - nll["gold"]).mean().item() - ranking[-1].effect) < 1e-5
    top = top_heads(ranking, 3)
    assert sum(len(h) for h in top.values()) == 3
    assert ranking[0].head in top[ranking[0].layer]


def test_intervention_selection_saves_its_ranking_with_the_run(tmp_path):
    module = make_module(heads={"selection": "intervention", "top_n": 2, "calibration_questions": 3})
    assert module.selected_heads is None
    datamodule = RetrievalDataModule(path="tiny_hotpotqa", group_size=3, batch_size=2)
    datamodule.setup("fit")
    module._trainer = SimpleNamespace(
        datamodule=datamodule, default_root_dir=str(tmp_path), is_global_zero=True
    )
    module.on_fit_start()
    assert sum(len(h) for h in module.selected_heads.values()) == 2
    saved = json.loads((tmp_path / "dream_head_ranking.json").read_text())
    assert "gold labels of 3 training questions" in saved["label_use"]
    assert len(saved["ranking"]) == 12
    checkpoint: dict = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    restored = make_module(heads={"selection": "intervention"})
    restored.on_load_checkpoint(checkpoint)
    assert restored.selected_heads == module.selected_heads


@pytest.mark.parametrize("mine_with", ["embedder", "bm25"])
def test_mined_candidates_come_from_the_corpus_without_labels(mine_with):
    module = make_module(candidates="mined", mined_k=4, mine_with=mine_with)
    datamodule = RetrievalDataModule(path="tiny_hotpotqa", group_size=3, batch_size=2)
    datamodule.setup("fit")
    module._trainer = SimpleNamespace(datamodule=datamodule, global_step=0)
    examples = datamodule.train_examples[:2]
    batch = RetrievalBatch(
        query_ids=[e.query_id for e in examples],
        queries=[e.query for e in examples],
        documents=[["unused"] * 3 for _ in examples],
        document_ids=[["u"] * 3 for _ in examples],
        document_codes=torch.full((2, 3), -1),
        answers=[e.answers for e in examples],
    )
    prepared = module.batch_preparer()(batch)
    assert prepared.embedder_inputs is None, "mined candidates are chosen at step time"
    mined = module.with_mined_candidates(prepared)
    unique = list(dict.fromkeys(t for q in batch.query_ids for t in module.mined.rows[q]))
    rows = [[unique[int(i)] for i in row] for row in mined.embedder_inputs.candidates]
    documents = list(datamodule.load_corpus().corpus.values())
    if mine_with == "bm25":
        expected = bm25_top_k(batch.queries, documents, 4)
    else:
        scores = (
            module.encode_queries(batch.queries) @ module.encode_documents([d.as_text() for d in documents]).T
        )
        expected = scores.topk(4, dim=1).indices.tolist()
    assert rows == [[documents[i].as_text() for i in row] for row in expected]
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
