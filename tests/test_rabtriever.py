"""Rabtriever on a tiny random LM: prompt layout, predictor shapes, what trains, independence, retrieval."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from datamodules.batch import RetrievalBatch
from datamodules.records import Document
from lightning_modules.rabtriever.module import RabtrieverModule
from lightning_modules.rabtriever.predictor import build_predictor
from lightning_modules.rabtriever.prompt import PromptTokenizer, RelevancePrompt, relevance_token_ids
from lightning_modules.rabtriever.reranker import rerank, rerank_top_k

TINY_PROMPT = {"relevance_tokens": ["A", "B"], "max_document_tokens": 24, "max_query_tokens": 16}
DOCUMENTS = [
    "the river flows through the city of london",
    "a film directed by the american director in 1999",
    "the band released an album in the united states",
    "he was born in paris and played football",
    "the company was founded in new york",
    "the university of oxford is in england",
]
QUERIES = ["which city does the river flow through", "who directed the film", "where was he born"]


@pytest.fixture(scope="module")
def module() -> RabtrieverModule:
    model = RabtrieverModule(
        frozen_lm={"name_or_path": "tiny-llama"},
        prompt=TINY_PROMPT,
        predictor={"kind": "mlp", "inner_size": 32},
        lm_batch_size=4,
        cache_document_states=False,
    )
    torch.manual_seed(0)
    torch.nn.init.normal_(
        model.predictor.down.weight, std=0.5
    )  # untrained it ignores Z_d (zero-init residual)
    return model


@pytest.mark.parametrize("kind", ["mlp", "cross_attention"])
def test_predictor_shapes_broadcasting_and_identity_at_init(kind):
    predictor = build_predictor(kind, hidden_size=16, inner_size=8, num_heads=4)
    h_q, z_d = torch.randn(3, 16), torch.randn(3, 8, 16)
    assert predictor(h_q, z_d).shape == (3, 16)
    assert torch.allclose(predictor(h_q, z_d), h_q)  # zero-initialised correction: P = h_q before training
    grid = predictor(torch.randn(2, 1, 16), torch.randn(1, 5, 8, 16))  # 2 queries × 5 stored documents
    assert grid.shape == (2, 5, 16)
    with pytest.raises(ValueError, match=r"Z_d \[\.\.\., K, H\]"):
        predictor(torch.randn(3, 16), torch.randn(3, 8, 12))


def test_unknown_predictor_and_bad_heads_are_named():
    with pytest.raises(ValueError, match="predictor.kind"):
        build_predictor("transformer", 16)
    with pytest.raises(ValueError, match="num_heads=5"):
        build_predictor("cross_attention", 16, num_heads=5)


def test_prompt_puts_the_document_first_and_shares_it_with_the_student(module):
    ids: PromptTokenizer = module.lm.ids
    pair = ids.pair_ids(QUERIES[:1], DOCUMENTS[:1])[0]
    document = ids.document_ids(DOCUMENTS[:1])[0]
    query_alone = ids.query_ids(QUERIES[:1])[0]
    assert pair[: len(document)] == document
    assert pair[len(document) :] == ids.query_ids(QUERIES[:1], with_prefix=False)[0]
    assert query_alone[-3:] == pair[-3:]  # both end with the same assistant header: the answer position
    long_document = " ".join(["river"] * 100)
    assert (
        len(ids.document_ids([long_document])[0]) == len(ids.document_ids(["river"])[0]) + 23
    )  # truncated to 24


def test_prompt_errors_name_the_option(module):
    with pytest.raises(ValueError, match="unknown to the tokenizer"):
        relevance_token_ids(["Yes", "No"], module.lm.tokenizer)  # the tiny word-level vocabulary lacks "yes"
    with pytest.raises(ValueError, match="share a first token"):
        relevance_token_ids(["A", "A"], module.lm.tokenizer)
    with pytest.raises(ValueError, match=r"\{document\}"):
        RelevancePrompt(document_template="Passage: {doc}")
    with pytest.raises(ValueError, match="at least two"):
        RelevancePrompt(relevance_tokens=("A",))


def test_document_states_equal_the_teachers_document_prefix(module):
    with torch.no_grad():
        alone = module.lm.document_states(DOCUMENTS[:3])
        teacher = module.lm.teacher(QUERIES, DOCUMENTS[:3]).document_states
    assert alone.shape == (3, 8, module.lm.hidden_size)
    assert torch.allclose(alone, teacher, atol=1e-4)


def test_rabtriever_refuses_a_trainable_embedder():
    with pytest.raises(ValueError, match="no trainable embedder"):
        RabtrieverModule(
            frozen_lm={"name_or_path": "tiny-llama"},
            embedder={"name_or_path": "tiny-bert"},
            prompt=TINY_PROMPT,
        )


def _batch(queries: list[str], group: int) -> RetrievalBatch:
    documents = [[DOCUMENTS[(i + j) % len(DOCUMENTS)] for j in range(group)] for i in range(len(queries))]
    return RetrievalBatch(
        query_ids=[f"q{i}" for i in range(len(queries))],
        queries=queries,
        documents=documents,
        document_ids=[[f"d{(i + j) % len(DOCUMENTS)}" for j in range(group)] for i in range(len(queries))],
        document_codes=torch.tensor(
            [[(i + j) % len(DOCUMENTS) for j in range(group)] for i in range(len(queries))]
        ),
    )


def sft_training_losses(sft, batch: RetrievalBatch, steps: int) -> list[float]:
    """The losses of ``steps`` optimisation steps of the reranker SFT module on one batch."""
    optimizer = sft.configure_optimizers()

    def step() -> float:
        loss = sft.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return [step() for _ in range(steps)]


def labelled_batch(group: int, gold: torch.Tensor) -> RetrievalBatch:
    """Two queries, each with the next ``group`` of DOCUMENTS (query 0: the first ``group``), and labels."""
    return RetrievalBatch(
        query_ids=["q0", "q1"],
        queries=QUERIES[:2],
        documents=[DOCUMENTS[i * group : (i + 1) * group] for i in range(2)],
        document_ids=[[f"d{i * group + j}" for j in range(group)] for i in range(2)],
        document_codes=torch.arange(2 * group).view(2, group),
        gold=gold,
    )


@pytest.mark.parametrize(("kind", "kl_over"), [("mlp", "relevance"), ("cross_attention", "vocabulary")])
def test_only_the_predictor_trains(kind, kl_over):
    model = RabtrieverModule(
        frozen_lm={"name_or_path": "tiny-llama"},
        prompt=TINY_PROMPT,
        kl_over=kl_over,
        predictor={"kind": kind, "inner_size": 32, "num_heads": 4},
        lm_batch_size=4,
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("predictor.") for name in trainable)
    lm_before = {k: v.clone() for k, v in model.frozen_lm.state_dict().items()}
    predictor_before = {k: v.clone() for k, v in model.predictor.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):  # LM passes are cached after the first step: the rest is predictor work
        loss = model.training_step(_batch(QUERIES[:2], 3), 0)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.frozen_lm.parameters())
        assert sum(p.grad.abs().sum() for p in model.predictor.parameters() if p.grad is not None) > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, model.frozen_lm.state_dict()[k]) for k, v in lm_before.items())
    assert any(not torch.equal(v, model.predictor.state_dict()[k]) for k, v in predictor_before.items())


def test_teacher_targets_are_cached_per_pair(module, monkeypatch):
    batch = _batch(QUERIES[:2], 2)
    first = module.training_step(batch, 0)
    monkeypatch.setattr(
        module.lm, "teacher", lambda *a, **k: pytest.fail("teacher pass repeated for a cached pair")
    )
    monkeypatch.setattr(
        module.lm, "query_states", lambda *a, **k: pytest.fail("query pass repeated for a cached query")
    )
    assert torch.allclose(module.training_step(batch, 0), first)


def test_student_score_of_a_pair_does_not_depend_on_the_rest_of_the_batch(module):
    with torch.no_grad():
        batched = module.student_scores(
            module.lm.query_states(QUERIES), module.lm.document_states(DOCUMENTS[:3])
        )
        alone = module.student_scores(
            module.lm.query_states(QUERIES[1:2]), module.lm.document_states(DOCUMENTS[1:2])
        )
        other_first = module.student_scores(
            module.lm.query_states([QUERIES[2], QUERIES[1]]),
            module.lm.document_states([DOCUMENTS[5], DOCUMENTS[1]]),
        )
    assert torch.allclose(batched[1], alone[0], atol=1e-5)
    assert torch.allclose(other_first[1], alone[0], atol=1e-5)
    assert batched.unique().numel() == 3  # the scores do depend on the document


def test_stored_state_retrieval_equals_on_the_fly_scoring(module):
    documents = [Document(f"d{i}", text) for i, text in enumerate(DOCUMENTS)]
    scores, indices = module.retrieve(QUERIES, documents, top_k=4)
    assert scores.shape == indices.shape == (3, 4)
    with torch.no_grad():
        on_the_fly = torch.stack(
            [
                torch.cat(
                    [
                        module.student_scores(module.lm.query_states([q]), module.lm.document_states([d]))
                        for d in DOCUMENTS
                    ]
                )
                for q in QUERIES
            ]
        )
    expected = on_the_fly.topk(4, dim=1)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(scores, expected.values, atol=1e-4)


def test_rerank_orders_by_teacher_log_odds(module):
    scores, order = rerank(module.lm, QUERIES[0], DOCUMENTS, top_k=3)
    full = module.lm.teacher_scores([QUERIES[0]] * len(DOCUMENTS), DOCUMENTS)
    assert order.tolist() == full.argsort(descending=True)[:3].tolist()
    assert torch.allclose(scores, full[order], atol=1e-5)
    candidates = torch.tensor([[0, 1, 2], [3, 4, 5]])
    new_scores, new_indices = rerank_top_k(
        lambda q, d: torch.tensor([float(len(x)) for x in d]), QUERIES[:2], DOCUMENTS, candidates
    )
    assert new_indices[0, 0].item() == max([0, 1, 2], key=lambda i: len(DOCUMENTS[i]))
    assert (new_scores[:, :-1] >= new_scores[:, 1:]).all()


@pytest.mark.parametrize("experiment", ["rabtriever_tiny", "rabtriever_qwen2_7b"])
def test_experiment_smoke_runs_with_tiny_models(experiment, tmp_path):
    from tests.helpers import run_experiment

    results = run_experiment([f"exp={experiment}", "debug=tiny", "data.max_eval_queries=4"], tmp_path)
    after = results["metrics"]["after"]
    assert 0.0 <= after["ndcg@10"] <= 1.0
    rerank = results["rerank"]["metrics"]
    assert set(rerank) == {"first_stage", "teacher_rerank", "student_rerank", "random_rerank"}
    assert all(0.0 <= m["ndcg@10"] <= 1.0 for m in rerank.values())
    assert results["budget"]["steps"] == 2


def test_reranker_sft_trains_lora_only_and_saves_the_merged_teacher(tmp_path):
    from lightning_modules.models.frozen_lm import load_frozen_lm
    from lightning_modules.rabtriever.passes import RelevanceLM
    from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule

    sft = RerankerSFTModule("tiny-llama", prompt=TINY_PROMPT, lora={"r": 4}, lr=5e-3)
    trainable = [name for name, p in sft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    batch = labelled_batch(2, torch.tensor([[True, False], [False, True]]))
    losses = sft_training_losses(sft, batch, steps=8)
    assert losses[-1] < losses[0]
    model, tokenizer = load_frozen_lm(str(sft.save_merged(tmp_path / "teacher")))
    merged = RelevanceLM(model, tokenizer, RelevancePrompt(**TINY_PROMPT))
    pairs = ([QUERIES[0]] * 4, DOCUMENTS[:4])
    with torch.no_grad():
        assert torch.allclose(merged.teacher_scores(*pairs), sft.lm.teacher_scores(*pairs), atol=1e-4)


def test_on_policy_adds_the_students_current_top_documents(module, monkeypatch):
    monkeypatch.setattr(module, "on_policy_pool", lambda: DOCUMENTS)
    monkeypatch.setattr(module, "settings", replace(module.settings, on_policy_top_m=2))
    batch = _batch(QUERIES[:2], 2)
    pair_queries, pair_documents = module.training_pairs(batch)
    assert len(pair_queries) == len(pair_documents) == 2 * (2 + 2)
    with torch.no_grad():
        scores = module.student_scores(
            module.query_states(QUERIES[:2])[:, None], module.lm.document_states(DOCUMENTS)[None]
        )
    for row in range(2):
        group = batch.documents[row]
        ranked = [
            DOCUMENTS[i] for i in scores[row].argsort(descending=True).tolist() if DOCUMENTS[i] not in group
        ]
        assert pair_documents[4 * row : 4 * row + 4] == [*group, *ranked[:2]]
        assert set(pair_queries[4 * row : 4 * row + 4]) == {QUERIES[row]}


def test_random_order_reference_matches_the_expected_ndcg_and_mrr():
    """One gold among two candidates in random order: E[nDCG@10] = (1 + 1/log2 3)/2, E[MRR@10] = 3/4."""
    import math

    from callbacks.rerank_eval import random_order_metrics

    candidates = torch.tensor([[0, 1]])
    metrics = random_order_metrics(
        ["q"], ["gold", "other"], candidates, {"q": {"gold": 1}}, permutations=4000
    )
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=0.02)
    assert metrics["mrr@10"] == pytest.approx(0.75, abs=0.02)
    assert metrics["recall@10"] == pytest.approx(1.0)
    # every candidate relevant: any order is perfect
    both = random_order_metrics(["q"], ["a", "b"], candidates, {"q": {"a": 1, "b": 1}}, permutations=3)
    assert both["ndcg@10"] == pytest.approx(1.0)


def test_reranker_sft_listwise_option_softmaxes_each_querys_group():
    from lightning_modules.losses.rabtriever import listwise_relevance_loss
    from lightning_modules.rabtriever.reranker_sft import RerankerSFTModule

    with pytest.raises(ValueError, match="sft loss must be one of pointwise, listwise; got 'pairwise'"):
        RerankerSFTModule("tiny-llama", prompt=TINY_PROMPT, loss="pairwise")
    torch.manual_seed(0)
    sft = RerankerSFTModule("tiny-llama", prompt=TINY_PROMPT, lora={"r": 4}, lr=1e-3, loss="listwise")
    labels = torch.tensor([[True, False, False], [False, True, False]])
    batch = labelled_batch(3, labels)
    with torch.no_grad():
        logits = sft.lm.teacher([q for q in QUERIES[:2] for _ in range(3)], DOCUMENTS).relevance_logits
        expected = listwise_relevance_loss(logits.view(2, 3, -1), labels)
        assert sft.training_step(batch, 0).item() == pytest.approx(expected.item(), abs=1e-5)
    losses = sft_training_losses(sft, batch, steps=6)
    assert losses[-1] < losses[0]


def test_stored_document_states_are_checksummed_and_recomputed_when_damaged(module, tmp_path, monkeypatch):
    from lightning_modules.rabtriever.state_store import cached_document_states

    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    states, seconds = cached_document_states("tiny", module.lm, DOCUMENTS, 4, "fp32")
    (path,) = (tmp_path / "rabtriever").glob("states-*.checked")
    again, stored_seconds = cached_document_states("tiny", module.lm, DOCUMENTS, 4, "fp32")
    assert torch.equal(again, states) and stored_seconds == seconds, "read back from the cache"
    path.write_bytes(path.read_bytes()[:-16])  # a truncated copy
    recomputed, _ = cached_document_states("tiny", module.lm, DOCUMENTS, 4, "fp32")
    assert torch.allclose(recomputed, states) and path.exists(), "damage is detected and the entry rewritten"
