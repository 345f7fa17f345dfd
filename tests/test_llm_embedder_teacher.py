"""Teacher scoring of LLM-Embedder: rewards, templates and the resumable disk cache (tiny random LM)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.llm_embedder.rewards import mean_output_log_likelihood, rank_aware_reward
from lightning_modules.llm_embedder.teacher import ScoringItem, TeacherScorer
from lightning_modules.llm_embedder.templates import QA_TEMPLATE, split_template, task_settings
from lightning_modules.models.frozen_lm import FrozenCausalLM


@pytest.fixture(scope="module")
def tiny_lm() -> FrozenCausalLM:
    return FrozenCausalLM("tiny-llama")


ITEMS = [
    ScoringItem("paris is the capital of france", "what is the capital of france ?", "paris"),
    ScoringItem("berlin is in germany", "what is the capital of france ?", "paris"),
    ScoringItem("the film was released in 1994", "when was the film released ?", "1994"),
]


def test_rank_aware_reward_hand_computed():
    desired = torch.tensor([-1.0, -1.0, -5.0])
    samples = torch.tensor([[-0.5, -2.0, -3.0, -4.0], [-2.0, -2.0, -3.0, -1.0], [-1.0, -2.0, -3.0, -4.0]])
    assert rank_aware_reward(desired, samples, tie_break=False).tolist() == pytest.approx([0.5, 1.0, 0.2])
    # a sample exactly as likely as o does not push it down
    assert (
        rank_aware_reward(torch.tensor([-2.0]), torch.tensor([[-2.0, -3.0]]), tie_break=False).item() == 1.0
    )
    # the tie-break orders equal ranks by likelihood but never crosses a rank gap (N = 4: gap >= 1/20)
    broken = rank_aware_reward(
        torch.tensor([-0.1, -3.0, 0.0]), torch.tensor([[-0.05] + [-9.0] * 3, [-9.0] * 4, [-9.0] * 4])
    )
    assert broken[2] > broken[1] > broken[0] and broken[1] - 1.0 < 1 / 40 and broken[0] < 0.5 + 1 / 40


def test_split_template_moves_the_space_into_the_output():
    prompt, output = split_template(QA_TEMPLATE, " Paris is in France. ", "Capital of France?", "Paris")
    assert prompt == "Knowledge: Paris is in France.\n\nQuestion: Capital of France?\n\nAnswer:"
    assert output == " Paris"


def test_the_teacher_scores_only_the_answer_tokens_as_the_reference():
    icl = task_settings()["icl"].template
    prompt, output = split_template(icl, "Review: great\npositive", "Review: awful", "negative")
    assert (prompt, output) == ("Review: great\npositive\nReview: awful\n", "negative")  # no "\n" scored
    chat = task_settings()["chat"].template
    assert split_template(chat, "history", "hi", "hello")[1] == " hello"  # the space is the word's own


def test_task_settings_reference_defaults_and_overrides():
    settings = task_settings({"qa": {"contrastive_weight": 0.2}})
    assert settings["qa"].distillation == "graded" and settings["qa"].contrastive_weight == 0.2
    assert settings["lrlm"].distillation == "kl" and settings["lrlm"].teacher_temperature == 0.1
    assert settings["tool"].query_instruction.startswith("Transform this user request")
    assert not settings["tool"].uses_teacher and not settings["convsearch"].uses_teacher
    with pytest.raises(ValueError, match="unknown field"):
        task_settings({"qa": {"weight": 1.0}})
    with pytest.raises(ValueError, match="must set"):
        task_settings({"mytask": {"distillation": "kl"}})


def test_output_log_likelihood_matches_a_direct_forward(tiny_lm):
    tokenizer, model = tiny_lm.tokenizer, tiny_lm.model
    prompt = tokenizer("paris is the capital", add_special_tokens=False)["input_ids"]
    output = tokenizer("of france", add_special_tokens=False)["input_ids"]
    other_prompt = tokenizer("berlin", add_special_tokens=False)["input_ids"]
    batched = mean_output_log_likelihood(
        model, [prompt, other_prompt], [output, output], tokenizer.pad_token_id, batch_size=2
    )
    sequence = torch.tensor([prompt + output])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=sequence).logits[0].float(), dim=-1)
    direct = sum(log_probs[len(prompt) - 1 + t, output[t]].item() for t in range(len(output))) / len(output)
    assert batched[0].item() == pytest.approx(direct, abs=1e-4)


def test_nll_scores_are_cached_and_resume_after_interruption(tiny_lm, tmp_path, monkeypatch):
    scorer = TeacherScorer(tiny_lm, reward="nll", chunk_size=1, cache_dir=str(tmp_path), show_progress=False)
    reference, report = scorer.score(QA_TEMPLATE, ITEMS[:1])
    assert report.scored == 1 and report.cached == 0

    # a fresh scorer (a new run) that dies while scoring the third item keeps the second one
    calls = {"n": 0}
    fresh = TeacherScorer(tiny_lm, reward="nll", chunk_size=1, cache_dir=str(tmp_path), show_progress=False)
    original = fresh._score_pairs

    def failing(pairs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(pairs)

    monkeypatch.setattr(fresh, "_score_pairs", failing)
    with pytest.raises(KeyboardInterrupt):
        fresh.score(QA_TEMPLATE, ITEMS)
    resumed = TeacherScorer(tiny_lm, reward="nll", chunk_size=1, cache_dir=str(tmp_path), show_progress=False)
    scores, report = resumed.score(QA_TEMPLATE, ITEMS)
    assert (report.cached, report.scored) == (2, 1)
    assert scores[0].item() == pytest.approx(reference[0].item())
    assert torch.isfinite(scores).all() and (scores < 0).all()  # mean log-probabilities


def test_cache_namespace_separates_template_and_reward(tiny_lm, tmp_path):
    nll = TeacherScorer(tiny_lm, reward="nll", cache_dir=str(tmp_path), show_progress=False)
    other_template = "{key}\n{query}\n{answer}"
    assert nll.cache(QA_TEMPLATE).directory != nll.cache(other_template).directory
    ranked = TeacherScorer(tiny_lm, reward="rank_aware", cache_dir=str(tmp_path), show_progress=False)
    assert ranked.cache(QA_TEMPLATE).directory != nll.cache(QA_TEMPLATE).directory
    with pytest.raises(ValueError, match="reward"):
        TeacherScorer(tiny_lm, reward="bleu")
    with pytest.raises(ValueError, match="desired output"):
        nll.score(QA_TEMPLATE, [ScoringItem("key", "query", "  ")])


def test_rank_aware_scores_are_reciprocal_ranks_and_deterministic(tiny_lm, tmp_path):
    kwargs = dict(reward="rank_aware", num_samples=3, max_new_tokens=4, tie_break=False, show_progress=False)
    first, _ = TeacherScorer(tiny_lm, cache_dir=str(tmp_path / "a"), **kwargs).score(QA_TEMPLATE, ITEMS)
    second, _ = TeacherScorer(tiny_lm, cache_dir=str(tmp_path / "b"), **kwargs).score(
        QA_TEMPLATE, ITEMS[::-1]
    )
    assert set(first.tolist()) <= {1.0, 1 / 2, 1 / 3, 1 / 4}
    assert first.tolist() == second.flip(0).tolist()  # per-item seeds: batch order does not matter


def test_step_lookups_tokenise_each_item_once_with_the_per_item_truncation(tiny_lm, tmp_path, monkeypatch):
    """Keys (and so scores) as if each key and answer were cut to its first tokens one by one; a training
    step's lookup of items seen before does not run the tokenizer again."""
    from lightning_modules.llm_embedder import teacher as teacher_module
    from lightning_modules.llm_embedder.score_cache import item_key

    tokenizer = tiny_lm.tokenizer
    scorer = TeacherScorer(
        tiny_lm,
        reward="nll",
        key_max_tokens=4,
        output_max_tokens=2,
        cache_dir=str(tmp_path),
        show_progress=False,
    )

    def cut(text: str, limit: int) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tokenizer.decode(ids[:limit])

    expected = [
        item_key(*split_template(QA_TEMPLATE, cut(i.key, 4), i.query, cut(i.answer, 2))) for i in ITEMS
    ]
    assert any(cut(i.key, 4) != i.key for i in ITEMS), "some key must be cut for this test"
    scores, _ = scorer.score(QA_TEMPLATE, ITEMS)
    assert scorer.keys(QA_TEMPLATE, ITEMS) == expected

    calls = {"n": 0}
    counted = teacher_module.plain_token_ids

    def counting(*args, **kwargs):
        calls["n"] += 1
        return counted(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "plain_token_ids", counting)
    batch = [ITEMS[2], ITEMS[0], ITEMS[2]]
    looked_up = scorer.lookup(QA_TEMPLATE, batch)
    assert calls["n"] == 0, "a lookup of scored items tokenised them again"
    assert looked_up.tolist() == [scores[2].item(), scores[0].item(), scores[2].item()]


@pytest.mark.parametrize("reward", ["nll", "rank_aware"])
def test_no_full_vocabulary_logits_are_copied_to_the_host(tiny_lm, monkeypatch, reward):
    """Issue 15 (hot paths): the teacher reduces logits on the model's device; only per-token or per-item
    values move to the host (``.cpu()`` of a tensor with the vocabulary as a dimension is refused here)."""
    from lightning_modules.llm_embedder import rewards

    vocabulary = tiny_lm.model.config.vocab_size
    copied: list[tuple[int, ...]] = []
    original = torch.Tensor.cpu

    def watched(tensor, *args, **kwargs):
        copied.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", watched)
    tokenizer = tiny_lm.tokenizer
    prompt = tokenizer("question: what is the capital of france ? answer:")["input_ids"]
    output = tokenizer(" paris", add_special_tokens=False)["input_ids"]
    if reward == "nll":
        scores = mean_output_log_likelihood(tiny_lm.model, [prompt] * 3, [output] * 3, pad_token_id=0)
    else:
        scores = rewards.sample_mean_log_likelihoods(
            tiny_lm.model, prompt, num_samples=4, max_new_tokens=5, eos_token_id=None, pad_token_id=0
        )
    assert torch.isfinite(scores).all() and copied
    assert all(vocabulary not in shape for shape in copied), copied
