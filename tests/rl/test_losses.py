"""The DPO maths against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import LN2, dpo_loss, dpo_sft_loss, sequence_logps, sft_loss, token_logps


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-12.5, -3.0])
    losses, chosen, rejected = dpo_loss(logps, logps - 4.0, logps, logps - 4.0, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), LN2))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_dpo_loss_hand_computed():
    # r_w = 0.5 * (-1 - -2) = 0.5 ; r_l = 0.5 * (-3 - -2) = -0.5 ; L = -log sigmoid(1) = log(1 + e^-1)
    losses, chosen, rejected = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-7)
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)


def test_token_logps_uniform_logits_and_mask():
    # uniform logits over V=4: every predicted token has log-prob -log 4; prompt positions masked out
    logits = torch.zeros(1, 4, 4)
    labels = torch.tensor([[-100, -100, 2, 3]])
    per_token = token_logps(logits, labels)
    assert per_token.shape == (1, 3)
    assert torch.allclose(per_token, torch.tensor([[0.0, -math.log(4), -math.log(4)]]))
    assert sequence_logps(logits, labels).item() == pytest.approx(-2 * math.log(4))


def test_token_logps_picks_the_label():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # p(1) = 3/4 at position 0
    labels = torch.tensor([[0, 1]])
    assert token_logps(logits, labels).item() == pytest.approx(math.log(0.75))


def test_sft_and_mixed_loss():
    token = torch.tensor([[-1.0, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert sft_loss(token, mask).item() == pytest.approx(2.0)
    same = torch.tensor([-5.0])
    mixed = dpo_sft_loss(same, same, same, same, token, mask, beta=0.1, sft_weight=0.1)
    assert mixed.item() == pytest.approx(LN2 + 0.2)
