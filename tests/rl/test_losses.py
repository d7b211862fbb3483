"""The DPO maths against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rl.losses import LN2, dpo_loss, dpo_sft_loss, sequence_logps, sequence_nll, sft_loss, token_logps


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


def test_sft_terms_token_mean_and_sequence_mean():
    # row 0: tokens -1, -3 (mean NLL 2); row 1: token -4 (mean NLL 4); the 0s are masked out
    token = torch.tensor([[-1.0, -3.0, 0.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert sft_loss(token, mask).item() == pytest.approx(8.0 / 3)  # TRL: over the batch's 3 tokens
    assert sequence_nll(token, mask).tolist() == pytest.approx([2.0, 4.0])  # ms-swift: per sequence


def test_sft_beta_mix_at_policy_equal_reference():
    # policy == reference: L_dpo = ln 2 for both pairs; L = mean_b [0.9 ln 2 + 0.1 * L_sft[b]]
    token = torch.tensor([[-1.0, -3.0, 0.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    same = torch.tensor([-5.0, -7.0])
    mixed = dpo_sft_loss(same, same, same, same, token, mask, beta=0.1, sft_beta=0.1)
    assert mixed.item() == pytest.approx(0.9 * LN2 + 0.1 * (2.0 + 4.0) / 2)  # 0.6238... + 0.3
    assert dpo_sft_loss(same, same, same, same, token, mask, sft_beta=0.0).item() == pytest.approx(LN2)
    only_sft = dpo_sft_loss(same, same, same, same, token, mask, sft_beta=1.0)
    assert only_sft.item() == pytest.approx(3.0)


def test_sft_beta_mix_hand_computed():
    # one pair, beta 0.5: r_w = 0.5, r_l = -0.5 -> L_dpo = log(1 + e^-1) = 0.31326;
    # chosen tokens -0.5, -1.5 -> L_sft = 1.0; sft_beta 0.25 -> 0.75 * 0.31326 + 0.25 * 1.0 = 0.48495
    token = torch.tensor([[-0.5, -1.5]])
    mask = torch.ones(1, 2)
    loss = dpo_sft_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        token, mask, beta=0.5, sft_beta=0.25,
    )
    assert loss.item() == pytest.approx(0.75 * math.log(1 + math.exp(-1.0)) + 0.25, abs=1e-6)
    assert loss.item() == pytest.approx(0.48495, abs=1e-5)
