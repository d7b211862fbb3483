"""The maths of SCoRe's two-stage multi-turn RL, as pure functions.

SCoRe (Kumar et al. 2024, "Training Language Models to Self-Correct via Reinforcement Learning",
arXiv 2409.12917). An episode is a prompt x1, a first attempt y1 ~ pi(.|x1), the correction
instruction, and a second attempt y2 ~ pi(.|x2), x2 = x1 + y1 + instruction. Each attempt gets its
own reward (gamma = 0, Table 5), r(y) in [0, 1] from a judge (binary in the paper).

- Stage I (eq. 3): max E[r(y2)] - beta2 * KL(pi(.|x1) || pi_ref(.|x1)), with the usual small beta1 KL on
  attempt 2: attempt 1 earns no reward of its own and is held near the base model.
- Stage II (eq. 4): max E[r(y1) + r(y2)] - beta1 * KL on both attempts, with the shaping bonus
  alpha * (r(y2) - r(y1)) added to attempt 2's reward (Sec. 5.2), which pays for fixing a wrong
  first attempt and charges for breaking a right one.

Tensors here are per token, shape (sequences, tokens), with a 0/1 ``mask`` over each attempt's own
tokens; ``logp`` and ``ref_logp`` are the log-probabilities of the sampled tokens under the policy
and the reference.

Which KL terms have the gradient of the paper's KL(pi || pi_ref) of a whole attempt? With
d_t = logp_t - ref_logp_t and y ~ pi, grad KL = E[(sum_t d_t) grad log pi(y)]: the sequence's k1 sum
in its reward, baselined like the reward (``kl_in: reward``, ``kl_penalty``) is exact, whatever
estimator the logs show. In the loss, a token's estimate is differentiated as a function of the
sampled token alone: k2 gives E[sum_t d_t grad log pi_t], the KL of each token's distribution, which
leaves out how an early token changes the later tokens' KL; k3 (and low_var_kl) gives
-E_{pi_ref}[grad log pi] per token, the gradient of the reverse KL(pi_ref || pi); k1's expected
gradient is 0 (E[grad log pi] = 0), so k1 in the loss is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from datagen.registry import Registry

KL_CLAMP = 10.0


#: Stage II's attempt-2 reward by name (``train.score.shaping``): ``shape(r1, r2, *, alpha, seed_values, r_max)
#: -> R2``, or ``"package.module:Name"`` for your own.
SHAPING: Registry[Callable[..., list[float]]] = Registry("reward shaping")
#: The baseline an episode's reward is compared with (``train.score.baseline``): ``(rewards, groups) -> A``.
BASELINES: Registry[Callable[[Sequence[float], Sequence[str]], list[float]]] = Registry("baseline")
#: Per-token KL estimators (``train.score.kl_estimator``): ``(d = logp - ref_logp) -> tensor``.
KL_ESTIMATORS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("KL estimator")


def shaped_rewards(
    r1: Sequence[float],
    r2: Sequence[float],
    stage: int,
    alpha: float,
    shaping: str = "bonus",
    seed_values: tuple[float, float, float] = (1.0, 0.5, -1.0),
    r_max: float = 1.0,
) -> tuple[list[float], list[float]]:
    """The rewards (R1, R2) the policy gradient uses for attempts 1 and 2 of each episode.

    Stage I: R1 = 0, R2 = r(y2) (eq. 3: attempt 1 has only its KL term).
    Stage II: R1 = r(y1), R2 as the ``shaping`` named in ``SHAPING`` makes it.

    >>> shaped_rewards([0, 1], [1, 0], stage=2, alpha=10)
    ([0.0, 1.0], [11.0, -10.0])
    """
    if len(r1) != len(r2):
        raise ValueError("r1 and r2 must have one value per episode")
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {stage}")
    if stage == 1:
        return [0.0] * len(r1), [float(b) for b in r2]
    out1 = [float(a) for a in r1]
    shape = SHAPING.get(shaping)
    return out1, shape(out1, [float(b) for b in r2], alpha=alpha, seed_values=seed_values, r_max=r_max)


@SHAPING.register("bonus")
def bonus(r1: list[float], r2: list[float], *, alpha: float, **_: object) -> list[float]:
    """R2 = r(y2) + alpha * (r(y2) - r(y1)) (Sec. 5.2): pays for fixing a wrong attempt 1, charges for breaking a
    right one."""
    return [b + alpha * (b - a) for a, b in zip(r1, r2, strict=True)]


@SHAPING.register("none")
def no_shaping(r1: list[float], r2: list[float], **_: object) -> list[float]:
    """R2 = r(y2)."""
    return list(r2)


@SHAPING.register("seed")
def seed_shaping(
    r1: list[float], r2: list[float], *, seed_values: tuple[float, float, float], r_max: float = 1.0, **_: object
) -> list[float]:
    """The SCoRe seed's variant (``seed_values`` = (improved, partial, unchanged)): R2 = improved when
    r(y2) > r(y1) and r(y2) reaches ``r_max``; partial when r(y2) > r(y1) otherwise; unchanged when
    r(y2) <= r(y1) and r(y2) < r_max; 0 when both attempts are right (the seed penalises "incorrect or
    unchanged" answers; a right answer kept right is neither, and charging it would teach the model to
    change right answers)."""
    improved, partial, unchanged = seed_values
    out2 = []
    for a, b in zip(r1, r2, strict=True):
        if b > a:
            out2.append(improved if b >= r_max else partial)
        elif b >= r_max:
            out2.append(0.0)
        else:
            out2.append(unchanged)
    return out2


def rloo_advantages(rewards: Sequence[float], groups: Sequence[str], baseline: str = "rloo") -> list[float]:
    """Each episode's advantage under the ``baseline`` named in ``BASELINES``.

    >>> rloo_advantages([1.0, 0.0, 0.0, 0.0], ["a", "a", "b", "b"])
    [1.0, -1.0, 0.0, 0.0]
    """
    return BASELINES.get(baseline)(rewards, groups)


@BASELINES.register("rloo")
def rloo(rewards: Sequence[float], groups: Sequence[str]) -> list[float]:
    """A_i = R_i - mean of the other episodes' R of the same prompt (RLOO, Ahmadian et al. 2024).

    A prompt with a single episode gets A = R (no baseline to take).
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for r, g in zip(rewards, groups, strict=True):
        sums[g] = sums.get(g, 0.0) + float(r)
        counts[g] = counts.get(g, 0) + 1
    out = []
    for r, g in zip(rewards, groups, strict=True):
        k = counts[g]
        out.append(float(r) - (sums[g] - float(r)) / (k - 1) if k > 1 else float(r))
    return out


@BASELINES.register("none")
def no_baseline(rewards: Sequence[float], groups: Sequence[str]) -> list[float]:
    """A = R."""
    return [float(r) for r in rewards]


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimates of KL(pi || pi_ref) at tokens sampled from pi (Schulman 2020, "Approximating KL"),
    by the ``estimator`` named in ``KL_ESTIMATORS``, of d = logp - ref_logp."""
    return KL_ESTIMATORS.get(estimator)(logp - ref_logp)


@KL_ESTIMATORS.register("k1")
def k1(d: torch.Tensor) -> torch.Tensor:
    """k1 = d."""
    return d


@KL_ESTIMATORS.register("k2")
def k2(d: torch.Tensor) -> torch.Tensor:
    """k2 = d^2 / 2."""
    return 0.5 * d * d


@KL_ESTIMATORS.register("k3")
def k3(d: torch.Tensor) -> torch.Tensor:
    """k3 = exp(-d) - 1 + d (unbiased, never negative)."""
    return torch.exp(-d) - 1 + d


@KL_ESTIMATORS.register("low_var_kl")
def low_var_kl(d: torch.Tensor) -> torch.Tensor:
    """k3 clamped to [-10, 10] (as veRL)."""
    return k3(d).clamp(-KL_CLAMP, KL_CLAMP)


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: str, denominator: float) -> torch.Tensor:
    """Token terms of one attempt -> a scalar, as part of a batch of ``denominator`` tokens or sequences.

    token_mean: sum over every token / ``denominator`` (the batch's token count); seq_mean_token_sum:
    sum over each sequence's tokens, / ``denominator`` (the batch's sequence count); seq_mean_token_mean:
    each sequence's token mean, summed, / ``denominator`` (sequences). Passing the whole batch's
    denominator lets micro-batches (and workers) add up to the batch's loss.
    """
    masked = values * mask
    if agg == "token_mean" or agg == "seq_mean_token_sum":
        return masked.sum() / denominator
    if agg == "seq_mean_token_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / denominator
    raise ValueError(f"unknown loss aggregation {agg!r}")


def policy_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    beta: float,
    *,
    estimator: str = "k3",
    kl_in_loss: bool = True,
    agg: str = "token_mean",
    denominator: float = 1.0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """REINFORCE with a per-attempt reward (gamma = 0) and a KL term: (loss, pg part, KL part).

    loss = agg(-w_it * A_i * logp_it) + beta * agg(w_it * KL_it)   with the KL term only when ``kl_in_loss``
    (otherwise the KL is already in the reward, see ``kl_penalty``). ``advantages`` has one value per
    sequence. The gradient of -A * logp is the score-function estimator of -E[A]; ``weights`` w (no
    gradient; 1 when None) are importance weights of tokens sampled by another policy
    (``truncated_importance_weights``).
    """
    w = torch.ones_like(logp) if weights is None else weights.detach()
    pg = aggregate(-advantages[:, None] * logp * w, mask, agg, denominator)
    kl = aggregate(kl_estimate(logp, ref_logp, estimator) * w, mask, agg, denominator)
    loss = pg + beta * kl if kl_in_loss and beta else pg
    return loss, pg, kl


def truncated_importance_weights(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token truncated importance weights w_t = min(pi(y_t) / mu(y_t), cap), without a gradient.

    ``behaviour_logp`` are the log-probabilities under the policy mu that sampled the tokens (the
    engine's: the weights of an update ago with ``overlap``, another dtype or kernel always); NaN where
    unknown, which gets weight 1. Weighting each token's policy-gradient term by w keeps the update
    on-policy in expectation (truncated importance sampling, TIS: Yao et al. 2025, "Your Efficient RL
    Framework Secretly Brings You Off-Policy RL Training"; veRL's and OpenRLHF's ``tis_imp_ratio_cap``);
    the cap bounds the variance a rare token could add.

    >>> truncated_importance_weights(torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, float("nan")]]),
    ...                              torch.ones(1, 2), cap=2.0).tolist()
    [[2.0, 1.0]]
    """
    with torch.no_grad():
        known = ~torch.isnan(behaviour_logp)
        ratio = torch.exp(logp.detach() - torch.where(known, behaviour_logp, logp.detach()))
        return torch.where(known & (mask > 0), ratio.clamp(max=cap), torch.ones_like(ratio))


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of k1 = logp - ref_logp: the KL that ``kl_in: reward`` subtracts, times beta,
    from each attempt's reward (the usual RLHF reward penalty)."""
    return ((logp - ref_logp) * mask).sum(-1)


def check_lag(batch_version: int, trainer_version: int, max_lag: int) -> int:
    """The policy lag of a batch: how many updates older its weights are than the trainer's.

    Raises ``StaleBatchError`` when over ``max_lag`` (or from the future, which means a mix-up).
    """
    lag = trainer_version - batch_version
    if lag < 0 or lag > max_lag:
        raise StaleBatchError(
            f"a rollout batch made with weights version {batch_version} reached the trainer at version "
            f"{trainer_version}: lag {lag}, allowed 0..{max_lag} (train.score.max_policy_lag)"
        )
    return lag


class StaleBatchError(RuntimeError):
    pass


def kept_candidate(window: Sequence[float], size: int, version: int, best: float | None) -> float | None:
    """The training reward (mean over the last ``size`` steps) if the current weights beat ``best``, else None.

    SCoRe keeps the checkpoint with the highest training reward (Kumar et al. 2024, Sec. 6). Only a
    full window counts, and never the starting weights (version 0): one lucky batch is not a result.

    >>> kept_candidate([0.5], 3, 1, None), kept_candidate([0.25, 0.5, 0.75], 3, 2, 0.1)
    (None, 0.5)
    """
    if len(window) < size or version == 0:
        return None
    mean = sum(window[-size:]) / size
    return mean if best is None or mean > best else None


def reward_from_score(score: float | None, scale: tuple[float, float] | None) -> float | None:
    """A judge's score as a reward in [0, 1] (its known scale mapped linearly), or None when unusable.

    NaN, a missing score or one outside the judge's scale gives None: the episode is left out of the
    update and counted, never trained on.
    """
    if score is None or not isinstance(score, (int, float)) or math.isnan(score) or math.isinf(score):
        return None
    if scale is None:
        return float(score)
    low, high = scale
    if not low <= score <= high:
        return None
    return (float(score) - low) / (high - low)
