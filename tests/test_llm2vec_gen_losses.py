"""LLM2Vec-Gen's pure losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses.llm2vec_gen import alignment_loss, reconstruction_loss


def test_reconstruction_loss_is_the_mean_token_nll():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    targets = torch.tensor([[0, 1]])
    mask = torch.tensor([[True, True]])
    # token 1: -log(1/2); token 2: -log(1/(3+1))
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert reconstruction_loss(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_averages_over_tokens_and_ignores_padding():
    logits = torch.zeros(2, 3, 4)
    logits[1, 0] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    logits[0, 2] = torch.tensor([100.0, -100.0, 5.0, 7.0])  # a padded position: must not count
    targets = torch.tensor([[1, 2, -100], [0, 3, 3]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    uniform = math.log(4.0)
    favoured = -math.log(math.exp(2.0) / (math.exp(2.0) + 3))
    expected = (uniform + uniform + favoured + uniform) / 4
    assert reconstruction_loss(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)


def test_reconstruction_loss_gradient_reaches_the_logits():
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    reconstruction_loss(logits, torch.tensor([[2]]), torch.tensor([[True]])).backward()
    # d(-log softmax_2)/d logits = softmax - onehot = [1/3, 1/3, -2/3]
    assert torch.allclose(logits.grad, torch.tensor([[[1 / 3, 1 / 3, -2 / 3]]]))


def test_reconstruction_loss_rejects_bad_shapes_and_empty_masks():
    with pytest.raises(ValueError, match=r"logits \[B, T, V\]"):
        reconstruction_loss(
            torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="no response token"):
        reconstruction_loss(
            torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.bool)
        )


def test_alignment_loss_is_mse_and_never_trains_the_teacher():
    student = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = alignment_loss(student, teacher)
    assert loss.item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    loss.backward()
    assert torch.allclose(student.grad, torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    assert teacher.grad is None
    with pytest.raises(ValueError, match="differ"):
        alignment_loss(torch.zeros(2, 3), torch.zeros(2, 4))
