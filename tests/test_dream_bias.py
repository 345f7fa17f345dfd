"""DREAM's bias: b_j = log(k · softmax_j(c_j / τ_attn)) on document j's key block, 0 elsewhere."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.losses.dream import document_bias, key_position_bias


def test_document_bias_matches_hand_computed_values():
    cosines = torch.tensor([[0.2, 0.5, -0.1]])
    tau = 0.1
    exps = [math.exp(c / tau) for c in (0.2, 0.5, -0.1)]
    expected = [math.log(3 * e / sum(exps)) for e in exps]
    assert torch.allclose(document_bias(cosines, tau), torch.tensor([expected]), atol=1e-6)


def test_equal_scores_give_zero_bias():
    assert torch.equal(document_bias(torch.full((2, 5), 0.37), 0.1), torch.zeros(2, 5))


def test_invalid_candidates_are_left_out_and_get_zero_bias():
    cosines = torch.tensor([[0.3, 0.1, 0.9]])
    valid = torch.tensor([[True, True, False]])
    bias = document_bias(cosines, 0.5, valid)
    assert bias[0, 2] == 0
    assert torch.allclose(bias[0, :2], document_bias(cosines[:, :2], 0.5)[0], atol=1e-6)


def test_bias_is_differentiable_in_the_cosines():
    cosines = torch.tensor([[0.1, 0.4]], requires_grad=True)
    document_bias(cosines, 0.1)[0, 1].backward()
    # d/dc_1 of log softmax_1 = (1 - p_1)/τ, d/dc_0 = -p_0/τ
    p = torch.softmax(torch.tensor([0.1, 0.4]) / 0.1, 0)
    assert torch.allclose(cosines.grad, torch.tensor([[-p[0] / 0.1, (1 - p[1]) / 0.1]]), atol=1e-5)


def test_key_position_bias_fills_each_document_block_and_zero_elsewhere():
    bias = torch.tensor([[1.5, -2.0], [0.25, 0.75]])
    index = torch.tensor([[-1, 0, 0, 1, -1], [0, 1, 1, 1, -1]])
    expected = torch.tensor([[0.0, 1.5, 1.5, -2.0, 0.0], [0.25, 0.75, 0.75, 0.75, 0.0]])
    assert torch.equal(key_position_bias(bias, index), expected)


@pytest.mark.parametrize(
    ("cosines", "tau", "message"), [(torch.zeros(3), 0.1, r"\[B, k\]"), (torch.zeros(1, 3), 0.0, "tau_attn")]
)
def test_bad_input_is_rejected(cosines, tau, message):
    with pytest.raises(ValueError, match=message):
        document_bias(cosines, tau)
