"""Hand-computed checks of the LLM-Embedder distillation losses (lightning_modules/losses/distillation.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses.distillation import (
    contiguous_candidate_columns,
    graded_distillation_loss,
    graded_order,
    kl_distillation_loss,
)


def test_kl_matches_hand_computation():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_distillation_loss(student, teacher).item() == pytest.approx(expected, abs=1e-6)


def test_kl_teacher_temperature_sharpens_target():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.2, 0.1]])
    # τ_t = 0.1: target softmax([2, 1]) = (e/(e+1), 1/(e+1)); the student is softmax([1, 0]): the same -> KL 0
    assert kl_distillation_loss(student, teacher, teacher_temperature=0.1).item() == pytest.approx(
        0.0, abs=1e-6
    )
    assert kl_distillation_loss(student, teacher, teacher_temperature=1.0).item() > 1e-3


def test_kl_mask_drops_padding_candidates():
    student = torch.tensor([[0.0, 0.0, 5.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_distillation_loss(student, teacher, mask=mask).item() == pytest.approx(expected, abs=1e-6)


def test_graded_single_query_docstring_example():
    loss = graded_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), contiguous_candidate_columns(1, 2))
    assert loss.item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_graded_shrinking_denominators_with_in_batch_keys():
    # two queries, two own keys each; query 0 sees all four keys
    logits = torch.tensor([[1.0, 2.0, 0.5, 0.0], [0.0, 1.0, 3.0, 1.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    columns = contiguous_candidate_columns(2, 2)
    # query 0: teacher order is key1 (r=1) then key0 (r=0); w = softmax([1, 0])
    w0 = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    e = [math.exp(x) for x in (1.0, 2.0, 0.5, 0.0)]
    q0 = w0[0] * -math.log(e[1] / sum(e)) + w0[1] * -math.log(e[0] / (e[0] + e[2] + e[3]))
    # query 1: a tie keeps the original order (key2 then key3), w = (1/2, 1/2)
    f = [math.exp(x) for x in (0.0, 1.0, 3.0, 1.0)]
    q1 = 0.5 * -math.log(f[2] / sum(f)) + 0.5 * -math.log(f[3] / (f[0] + f[1] + f[3]))
    loss = graded_distillation_loss(logits, teacher, columns)
    assert loss.item() == pytest.approx(float(q0 + q1) / 2, abs=1e-5)


def test_graded_weight_temperature_and_positive_first():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.3, 0.1]])
    columns = contiguous_candidate_columns(1, 3)
    assert graded_order(teacher).tolist() == [[1, 2, 0]]
    assert graded_order(teacher, "positive_first", torch.tensor([0])).tolist() == [[0, 1, 2]]
    # positive_first: order 0,1,2 with weights softmax(r_sorted / 0.1) = softmax([0, 3, 1])
    w = torch.softmax(torch.tensor([0.0, 3.0, 1.0]), 0)
    e = [math.exp(x) for x in (0.0, 1.0, 2.0)]
    expected = w[0] * -math.log(e[0] / sum(e)) + w[1] * -math.log(e[1] / (e[1] + e[2])) + w[2] * 0.0
    loss = graded_distillation_loss(logits, teacher, columns, 0.1, "positive_first", torch.tensor([0]))
    assert loss.item() == pytest.approx(float(expected), abs=1e-5)


def test_graded_gradient_prefers_teacher_favourite():
    logits = torch.zeros(1, 3, requires_grad=True)
    graded_distillation_loss(
        logits, torch.tensor([[0.0, 5.0, 0.0]]), contiguous_candidate_columns(1, 3)
    ).backward()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # descending the loss raises the favourite's logit


def test_bad_shapes_and_options_raise():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        kl_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="positive_index"):
        graded_order(torch.zeros(1, 2), "positive_first")
    with pytest.raises(ValueError, match="order"):
        graded_order(torch.zeros(1, 2), "random")
    with pytest.raises(ValueError, match="teacher_temperature"):
        kl_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), teacher_temperature=0.0)
