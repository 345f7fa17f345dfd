import math

import torch

from lightning_modules.losses.contrastive import info_nce_loss, other_positive_mask


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce_loss(q, d, torch.tensor([0]), temperature=1.0)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_info_nce_temperature_and_two_queries():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    tau = 0.5
    loss = info_nce_loss(q, d, torch.tensor([2, 1]), temperature=tau)
    s0 = [0.6 / tau, 0.0, 1.0 / tau]
    s1 = [0.8 / tau, 1.0 / tau, 0.0]
    ref0 = -(s0[2] - math.log(sum(math.exp(x) for x in s0)))
    ref1 = -(s1[1] - math.log(sum(math.exp(x) for x in s1)))
    assert math.isclose(loss.item(), (ref0 + ref1) / 2, rel_tol=1e-6)


def test_other_positives_leave_the_denominator_but_the_target_stays():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    positive_ids = torch.tensor([[10, 11]])
    document_ids = torch.tensor([10, 11, 12])
    exclude = other_positive_mask(positive_ids, document_ids)
    assert exclude.tolist() == [[True, True, False]]
    loss = info_nce_loss(q, d, torch.tensor([0]), exclude=exclude, temperature=1.0)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)  # doc 11 masked out


def test_padding_ids_never_match():
    mask = other_positive_mask(torch.tensor([[5, -1]]), torch.tensor([-1, 5]))
    assert mask.tolist() == [[False, True]]


def test_multi_positive_info_nce_matches_hand_computation():
    from lightning_modules.losses.contrastive import multi_positive_info_nce_loss

    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    loss = multi_positive_info_nce_loss(q, d, mask, temperature=1.0)
    e = math.e
    assert math.isclose(loss.item(), -math.log((e + 1) / (e + 1 + 1 / e)), rel_tol=1e-6)


def test_multi_positive_with_one_positive_equals_info_nce():
    from lightning_modules.losses.contrastive import multi_positive_info_nce_loss

    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    targets = torch.tensor([0, 2, 4])
    mask = torch.nn.functional.one_hot(targets, 6).bool()
    torch.testing.assert_close(
        multi_positive_info_nce_loss(q, d, mask, 0.1), info_nce_loss(q, d, targets, temperature=0.1)
    )
