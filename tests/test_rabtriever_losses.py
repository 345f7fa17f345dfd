"""Rabtriever's pure losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses.rabtriever import (
    normalized_state_mse,
    rabtriever_loss,
    relevance_log_odds,
    reverse_kl_divergence,
)


def test_reverse_kl_matches_hand_computed_value_and_direction():
    student = torch.tensor([[0.0, 0.0]])  # p_S = (1/2, 1/2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p_T = (3/4, 1/4)
    expected_reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = ½ log(4/3)
    expected_forward = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert reverse_kl_divergence(student, teacher).item() == pytest.approx(expected_reverse, abs=1e-6)
    assert expected_reverse != pytest.approx(expected_forward, abs=1e-3)  # the direction matters
    assert reverse_kl_divergence(teacher, student).item() == pytest.approx(expected_forward, abs=1e-6)


def test_reverse_kl_averages_over_pairs_and_is_zero_for_equal_distributions():
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    assert reverse_kl_divergence(student, teacher).item() == pytest.approx(
        0.5 * 0.5 * math.log(4 / 3), abs=1e-6
    )
    assert reverse_kl_divergence(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_reverse_kl_gradient_reaches_the_student_only():
    student = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    reverse_kl_divergence(student, teacher.detach()).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_normalized_state_mse_hand_value_and_shape_check():
    assert normalized_state_mse(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    ).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        normalized_state_mse(torch.zeros(2, 3), torch.zeros(2, 4))


def test_rabtriever_loss_weights_the_kl_term():
    states_a, states_b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])  # mse 2
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    out = rabtriever_loss(states_a, states_b, student, teacher, kl_weight=3.0)
    assert out["state_mse"].item() == pytest.approx(2.0)
    assert out["reverse_kl"].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert out["loss"].item() == pytest.approx(2.0 + 3.0 * 0.5 * math.log(4 / 3), abs=1e-6)


def test_relevance_log_odds_is_the_log_odds_of_the_first_token():
    logits = torch.tensor([[2.0, 0.0], [0.0, math.log(3.0)]])
    p_first = torch.softmax(logits, dim=-1)[:, 0]
    assert torch.allclose(relevance_log_odds(logits), torch.log(p_first / (1 - p_first)), atol=1e-6)
    three = torch.tensor([0.0, 0.0, 0.0])  # p(first) = 1/3 against the other two together
    assert relevance_log_odds(three).item() == pytest.approx(math.log(0.5), abs=1e-6)
    with pytest.raises(ValueError, match="two relevance tokens"):
        relevance_log_odds(torch.zeros(3, 1))


def test_relevance_classification_loss_is_the_answer_token_cross_entropy():
    from lightning_modules.losses.rabtriever import relevance_classification_loss

    assert relevance_classification_loss(
        torch.tensor([[0.0, 0.0]]), torch.tensor([True])
    ).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5]])
    labels = torch.tensor([True, False])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert relevance_classification_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        relevance_classification_loss(logits, torch.tensor([True]))


def test_cost_benchmark_fits_growth_exponents():
    from bench.rabtriever_cost import growth_exponent

    sizes = [64, 128, 256, 512, 1024]
    assert growth_exponent(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0, abs=1e-6)
    assert growth_exponent(sizes, [0.5 + 0 * n for n in sizes]) == pytest.approx(0.0, abs=1e-6)
    assert growth_exponent(sizes, [0.01 * n for n in sizes]) == pytest.approx(1.0, abs=1e-6)
