"""The LLM2Vec teacher's losses (MNTP, unsupervised SimCSE) and the listwise reranker-SFT loss, against
hand-computed values and HF's own shifted causal-LM loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses.llm2vec import masked_next_token_loss, mntp_positions, simcse_loss
from lightning_modules.losses.rabtriever import listwise_relevance_loss, relevance_classification_loss


def test_mntp_predicts_each_masked_token_from_the_previous_position():
    labels = torch.tensor(
        [[-100, 7, -100, 9], [3, -100, -100, -100]]
    )  # row 1's masked first token: no predecessor
    rows, columns, targets = mntp_positions(labels)
    assert rows.tolist() == [0, 0] and columns.tolist() == [0, 2] and targets.tolist() == [7, 9]


def test_mntp_loss_hand_value():
    assert masked_next_token_loss(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p(0) = 3/4 at the first position
    expected = -(math.log(0.75) + math.log(0.5)) / 2
    assert masked_next_token_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, abs=1e-6)


def test_mntp_loss_equals_the_shifted_causal_lm_loss_of_the_reference():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.full((2, 6), -100)
    labels[0, 2], labels[0, 5], labels[1, 1] = 4, 7, 10
    rows, columns, targets = mntp_positions(labels)
    ours = masked_next_token_loss(logits[rows, columns], targets)
    # the reference trains a *ForCausalLM with labels: cross-entropy of logits[:, :-1] against labels[:, 1:]
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_mntp_loss_refuses_a_batch_without_masked_tokens():
    with pytest.raises(ValueError, match="no masked token"):
        masked_next_token_loss(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))


def test_simcse_loss_hand_value_and_cosine_scale_invariance():
    views = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert simcse_loss(views, views, temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    # τ = 0.5: cos 1 vs cos 0 gives log(1 + e^-2); the inputs need not be normalised (cosine is taken)
    assert simcse_loss(3 * views, views, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)


def test_simcse_loss_is_one_directional_over_in_batch_candidates():
    first = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    second = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 1's positive is orthogonal to it
    expected = (math.log(1 + math.exp(-1)) + (math.log(math.e + 1) - 0.0)) / 2
    assert simcse_loss(first, second, 1.0).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        simcse_loss(first, second, 0.0)


def test_simcse_gradient_reaches_both_views():
    first = torch.randn(3, 4, requires_grad=True)
    second = torch.randn(3, 4, requires_grad=True)
    simcse_loss(first, second).backward()
    assert first.grad.abs().sum() > 0 and second.grad.abs().sum() > 0


def test_listwise_relevance_loss_is_the_softmax_cross_entropy_over_the_group():
    tie = torch.zeros(1, 2, 2)  # two documents, equal log-odds
    assert listwise_relevance_loss(tie, torch.tensor([[True, False]])).item() == pytest.approx(math.log(2))
    # log-odds 1 and 0 (logits [1, 0] and [0, 0]); the second document relevant: -log(1 / (e + 1))
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = math.log(math.e + 1)
    assert listwise_relevance_loss(logits, torch.tensor([[False, True]])).item() == pytest.approx(expected)


def test_listwise_loss_counts_every_positive_and_skips_groups_without_one():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], [[5.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[True, True, False], [False, False, False]])
    scores = [1.0, 0.0, -1.0]
    expected = -math.log((math.e + 1) / sum(math.exp(s) for s in scores))
    assert listwise_relevance_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="no group has a relevant document"):
        listwise_relevance_loss(logits, torch.zeros(2, 3, dtype=torch.bool))


def test_pointwise_and_listwise_differ_on_the_same_group():
    logits = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
    labels = torch.tensor([[True, False]])
    pointwise = relevance_classification_loss(logits.view(2, 2), labels.view(2))
    listwise = listwise_relevance_loss(logits, labels)
    expected_pointwise = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(1.0))).item() / 2
    assert pointwise.item() == pytest.approx(expected_pointwise, abs=1e-6)
    assert listwise.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
