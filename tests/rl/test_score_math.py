"""SCoRe's maths against numbers worked out by hand: 2 prompts x 2 episodes through stage I and II."""

from __future__ import annotations

import math

import pytest
import torch

from rl.score_math import (
    StaleBatchError,
    check_lag,
    kl_estimate,
    kl_penalty,
    policy_loss,
    reward_from_score,
    rloo_advantages,
    shaped_rewards,
)

# prompt a: wrong -> right, right -> right; prompt b: wrong -> wrong, right -> wrong
R1 = [0.0, 1.0, 0.0, 1.0]
R2 = [1.0, 1.0, 0.0, 0.0]
GROUPS = ["a", "a", "b", "b"]


def test_stage_one_rewards_only_the_second_attempt():
    s1, s2 = shaped_rewards(R1, R2, stage=1, alpha=10)
    assert s1 == [0.0, 0.0, 0.0, 0.0]
    assert s2 == R2
    # RLOO: prompt a's two second attempts are both right (no signal); b's both wrong
    assert rloo_advantages(s2, GROUPS) == [0.0, 0.0, 0.0, 0.0]
    assert rloo_advantages(s1, GROUPS) == [0.0, 0.0, 0.0, 0.0]


def test_stage_two_bonus_and_rloo_by_hand():
    s1, s2 = shaped_rewards(R1, R2, stage=2, alpha=10)
    assert s1 == [0.0, 1.0, 0.0, 1.0]
    # r2 + 10 (r2 - r1): 1 + 10, 1 + 0, 0 + 0, 0 - 10
    assert s2 == [11.0, 1.0, 0.0, -10.0]
    # A_i = R_i - R_other (two episodes per prompt)
    assert rloo_advantages(s1, GROUPS) == [-1.0, 1.0, -1.0, 1.0]
    assert rloo_advantages(s2, GROUPS) == [10.0, -10.0, 10.0, -10.0]
    assert rloo_advantages(s2, GROUPS, baseline="none") == s2


def test_rloo_with_three_episodes_and_a_single_one():
    # mean of the other two: 1 - (0 + 0.5) / 2 = 0.75; 0 - 0.75 = -0.75; 0.5 - 0.5 = 0; alone: A = R
    assert rloo_advantages([1.0, 0.0, 0.5, 2.0], ["a", "a", "a", "z"]) == [0.75, -0.75, 0.0, 2.0]


def test_seed_shaping():
    _, s2 = shaped_rewards(R1, R2, stage=2, alpha=10, shaping="seed")
    # improved -> 1; right kept right -> 0; wrong kept wrong -> -1; right made wrong -> -1
    assert s2 == [1.0, 0.0, -1.0, -1.0]
    _, partial = shaped_rewards([0.2], [0.6], stage=2, alpha=10, shaping="seed")
    assert partial == [0.5]
    _, none = shaped_rewards(R1, R2, stage=2, alpha=10, shaping="none")
    assert none == R2


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    d = math.log(2)
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(d * d / 2)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + d)  # exp(-d) - 1 + d
    assert kl_estimate(logp, logp, "k3").item() == 0.0
    far = kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "low_var_kl")
    assert far.item() == 10.0  # exp(30) clamped
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k9")


LOGP = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def test_policy_loss_by_hand():
    # -A * logp per token: 1, 2 | -1 (the masked -9 does not count): sum 2
    loss, pg, kl = policy_loss(LOGP, LOGP, MASK, ADV, 0.1, denominator=3)
    assert pg.item() == pytest.approx(2 / 3)
    assert kl.item() == 0.0 and loss.item() == pytest.approx(2 / 3)
    _, pg_sum, _ = policy_loss(LOGP, LOGP, MASK, ADV, 0.1, agg="seq_mean_token_sum", denominator=2)
    assert pg_sum.item() == pytest.approx(1.0)
    _, pg_mean, _ = policy_loss(LOGP, LOGP, MASK, ADV, 0.1, agg="seq_mean_token_mean", denominator=2)
    assert pg_mean.item() == pytest.approx((1.5 - 1.0) / 2)
    # reference half as likely on every token: k3 = 0.193147 per token, beta 0.1
    ref = LOGP - math.log(2)
    loss, pg, kl = policy_loss(LOGP, ref, MASK, ADV, 0.1, denominator=3)
    assert kl.item() == pytest.approx(0.5 - 1 + math.log(2))
    assert loss.item() == pytest.approx(2 / 3 + 0.1 * (0.5 - 1 + math.log(2)))
    # KL in the reward instead: the loss is the policy gradient alone
    loss, _, _ = policy_loss(LOGP, ref, MASK, ADV, 0.1, kl_in_loss=False, denominator=3)
    assert loss.item() == pytest.approx(2 / 3)
    assert kl_penalty(LOGP, ref, MASK).tolist() == pytest.approx([2 * math.log(2), math.log(2)])


def test_policy_gradient_direction():
    """A positive advantage raises the log-probability of its tokens; the KL term pulls toward the reference."""
    logits = torch.zeros(1, 2, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[:, :1]  # the sampled token is 0
    loss, _, _ = policy_loss(logp, logp.detach(), torch.ones(1, 1), torch.tensor([1.0]), 0.0)
    loss.backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # descending raises token 0


def test_lag_check_refuses_stale_and_future_batches():
    assert check_lag(3, 3, 0) == 0
    assert check_lag(2, 3, 1) == 1
    with pytest.raises(StaleBatchError, match="lag 2"):
        check_lag(1, 3, 1)
    with pytest.raises(StaleBatchError):
        check_lag(4, 3, 1)


@pytest.mark.parametrize(
    ("score", "scale", "reward"),
    [
        (1.0, (0.0, 1.0), 1.0),
        (0.0, (0.0, 1.0), 0.0),
        (8.0, (1.0, 10.0), 7 / 9),
        (float("nan"), (0.0, 1.0), None),
        (None, (0.0, 1.0), None),
        (1.5, (0.0, 1.0), None),  # outside the judge's range: left out, never trained on
        (-3.2, None, -3.2),  # a reward model's raw scalar
        (float("inf"), None, None),
    ],
)
def test_reward_from_score(score, scale, reward):
    got = reward_from_score(score, scale)
    assert got == (pytest.approx(reward) if reward is not None else None)


def test_kept_candidate_needs_a_full_window_and_moved_weights():
    from rl.score_math import kept_candidate

    assert kept_candidate([0.9], 1, 0, None) is None  # the starting weights are never "trained"
    assert kept_candidate([0.9, 0.1], 3, 2, None) is None  # window not full yet
    assert kept_candidate([0.1, 0.2, 0.3], 3, 3, None) == pytest.approx(0.2)
    assert kept_candidate([0.1, 0.2, 0.3], 3, 3, 0.25) is None  # not better than the kept 0.25
    assert kept_candidate([0.4, 0.2, 0.3], 3, 4, 0.2) == pytest.approx(0.3)
