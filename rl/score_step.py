"""One SCoRe update, in named phases: shaping, then for each attempt in turn the KL in the reward (when
``kl_in: reward``) -> advantages -> each micro-batch's log-probs, KL and loss, backward; then the optimizer
step.

Every worker holds the whole batch and takes every ``world``-th episode; gradients and the step's sums are
added up over the workers before the one optimizer step, so W workers train exactly as one would. The
maths is ``rl.score_math``'s; the log-probabilities ``rl.logprobs``'.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from statistics import fmean
from typing import Any

import torch

from rl.config import ScoreConfig, TrainConfig
from rl.episodes import Attempt, Episode
from rl.logprobs import Sequence, token_logprobs
from rl.score_math import (
    kl_estimate,
    kl_penalty,
    policy_loss,
    rloo_advantages,
    shaped_rewards,
    truncated_importance_weights,
)


@dataclass
class Policy:
    """The trained model and pi_ref: LoRA's base (the adapter disabled) when ``ref`` is None, else the
    frozen copy ``ref``; ``pad_id`` pads a micro-batch."""

    model: Any
    ref: Any
    pad_id: int
    device: Any
    temperature: float = 1.0  # the engines': log-probs are of softmax(logits / temperature)
    autocast: torch.dtype | None = None  # the forward's dtype over float32 weights (full fine-tuning in bf16)

    def _cast(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast)

    def logprobs(self, seqs: list[Sequence], entropy: bool = False):
        with self._cast():
            return token_logprobs(self.model, seqs, self.pad_id, self.device, entropy, self.temperature)

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        if self.ref is not None:
            yield self.ref
            return
        with self.model.disable_adapter():
            yield self.model

    def ref_logprobs(self, seqs: list[Sequence]) -> torch.Tensor:
        return self.ref_forward(seqs)[0]

    def ref_forward(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """pi_ref's (logp, mask), without a gradient."""
        with torch.no_grad(), self.reference() as ref, self._cast():
            logp, mask, _ = token_logprobs(ref, seqs, self.pad_id, self.device, False, self.temperature)
        return logp, mask

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


@dataclass(frozen=True)
class Workers:
    """This worker's place among the Ray Train workers, and the sums over all of them."""

    rank: int = 0
    world: int = 1

    def share(self, count: int) -> list[int]:
        return list(range(self.rank, count, self.world))

    def sum(self, values: torch.Tensor, device: Any) -> torch.Tensor:
        if self.world == 1:
            return values
        import torch.distributed as dist

        out = values.to(device)
        dist.all_reduce(out)
        return out.cpu()

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)


@dataclass
class StepStats:
    """What one update reports: per attempt t1/t2 the mean KL estimate and entropy per token, and the mean
    shaped reward; the summed policy-gradient loss; the gradient norm before clipping; the learning rate of the
    step; with ``kl_in: reward`` the mean per-sequence KL penalty (before beta) and the share of attempts
    whose penalty took the policy's log-probs from the engine (``kl_logprobs``)."""

    pg_loss: float
    kl_t1: float
    kl_t2: float
    entropy_t1: float
    entropy_t2: float
    grad_norm: float
    shaped_t1: float
    shaped_t2: float
    learning_rate: float = 0.0  # the rate the optimizer step used
    kl_penalty_t1: float | None = None
    kl_penalty_t2: float | None = None
    kl_from_engine: float | None = None  # the share of attempts whose penalty took the engine's log-probs

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def micro_batches(seqs: list[Sequence], workers: Workers, size: int) -> list[list[int]]:
    """This worker's share of ``seqs`` in micro-batches of ``size``, longest first: sequences of like length
    together pad the least (a forward costs the longest one's length times the batch).

    >>> micro_batches([([1], [2]), ([1, 2, 3], [4]), ([1], [2, 3])], Workers(), 2)
    [[1, 2], [0]]
    """
    mine = sorted(workers.share(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def betas(s: ScoreConfig, stage: int) -> dict[int, float]:
    """The KL weight of each attempt: stage I holds attempt 1 with beta2, everything else beta1."""
    return {1: s.beta2 if stage == 1 else s.beta1, 2: s.beta1}


def shape(episodes: list[Episode], stage: int, s: ScoreConfig) -> dict[int, list[float]]:
    """Phase 1: each attempt's reward for the policy gradient (``score_math.shaped_rewards``)."""
    seeds = (s.seed_values.improved, s.seed_values.partial, s.seed_values.unchanged)
    r1, r2 = shaped_rewards(
        [e.first.reward for e in episodes], [e.second.reward for e in episodes], stage, s.alpha, s.shaping, seeds
    )  # type: ignore[arg-type]
    return {1: r1, 2: r2}


def prompts_with_signal(episodes: list[Episode], stage: int, s: ScoreConfig) -> list[str]:
    """The prompts (in order of appearance) whose valid episodes get an advantage other than 0 on some
    attempt from the shaped rewards (``shape``, then the baseline): under RLOO a prompt whose episodes all
    get the same rewards carries no policy gradient (DAPO's dynamic sampling drops such prompts)."""
    valid = [e for e in episodes if not e.flagged]
    rewards = shape(valid, stage, s)
    groups = [e.prompt_id for e in valid]
    advantages = [rloo_advantages(rewards[j], groups, s.baseline) for j in (1, 2)]
    out: dict[str, None] = {}
    for i, e in enumerate(valid):
        if any(abs(a[i]) > 1e-12 for a in advantages):
            out[e.prompt_id] = None
    return list(out)


# a micro-batch's (logp, mask, entropy, ref_logp); the first three None where only the reference's is kept
Forward = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor]


def kl_in_reward(
    policy: Policy, seqs: list[Sequence], batches: list[list[int]], workers: Workers,
    sampled: list[Attempt] | None = None,
) -> tuple[list[float], dict[int, Forward], int]:  # fmt: skip
    """Phase 2 (``kl_in: reward``), for one attempt: each sequence's KL penalty sum_t (logp - ref_logp),
    before beta, each micro-batch's forward (by its first index), which the loss phase reuses, and how many
    of this worker's sequences took logp from the engine.

    Where this worker's share is one micro-batch, the policy's forward is taken with its gradient and the
    loss phase backpropagates through it: one policy forward an attempt instead of two (the penalty only
    needs its values). Otherwise the forwards are taken without a gradient and only the reference's is kept,
    so no more than one micro-batch's activations are ever held. ``sampled``, the attempts as the engine
    sampled them on the trainer's own weights (``rl.score_recipe.use_engine_logprobs``), gives logp from the
    engine's log-probs instead of that gradient-free forward; a micro-batch missing any of them (or with one
    that is not finite) takes the forward.
    """
    pen = [0.0] * len(seqs)
    keep = len(batches) == 1
    forwards: dict[int, Forward] = {}
    from_engine = 0
    for idx in batches:
        part = [seqs[i] for i in idx]
        logp = ref_logp = None
        if sampled is not None and not keep:
            ref_logp, mask = policy.ref_forward(part)
            engine = engine_logprobs([sampled[i] for i in idx], mask)
            if torch.isfinite(engine[mask > 0]).all():
                logp = torch.where(mask > 0, engine, torch.zeros_like(engine))
                from_engine += len(idx)
        if logp is None:
            with contextlib.nullcontext() if keep else torch.no_grad():
                logp, mask, ent = policy.logprobs(part, entropy=keep)
        if ref_logp is None:  # taken above where the engine's log-probs were tried
            ref_logp = policy.ref_logprobs(part)
        forwards[idx[0]] = (logp, mask, ent, ref_logp) if keep else (None, None, None, ref_logp)
        for i, v in zip(idx, kl_penalty(logp.detach(), ref_logp, mask).tolist(), strict=True):
            pen[i] = v
    if workers.world > 1:
        pen = workers.sum(torch.tensor(pen), policy.device).tolist()
    return pen, forwards, from_engine


def engine_logprobs(attempts: list[Attempt], mask: torch.Tensor) -> torch.Tensor:
    """The engine's log-probability of each token, laid out as ``mask`` (B, L-1); NaN where it gave none."""
    out = torch.full(mask.shape, float("nan"), dtype=torch.float32)
    for i, a in enumerate(attempts):
        where = mask[i].nonzero().squeeze(-1).cpu()
        n = min(len(where), len(a.logp))
        if n:
            out[i, where[:n]] = torch.tensor(a.logp[:n], dtype=torch.float32)
    return out.to(mask.device)


def backward(
    policy: Policy, attempts: list[Attempt], batches: list[list[int]], advantages: list[float], beta: float,
    s: ScoreConfig, forwards: dict[int, Forward] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Phase 4, for one attempt: each micro-batch's log-probs (or the forward ``kl_in_reward`` kept), KL and
    loss (each token weighted by its truncated importance weight with ``importance: tis``), backward; returns
    this worker's sums, float64: (policy-gradient loss, KL estimate, entropy, tokens)."""
    sums = torch.zeros(4, dtype=torch.float64)
    tokens = sum(len(a.tokens) for a in attempts)
    denom = float(max(1, tokens if s.loss_agg == "token_mean" else len(attempts)))
    for idx in batches:
        part = [attempts[i] for i in idx]
        if not any(a.tokens for a in part):
            continue
        seqs = [a.sequence for a in part]
        logp, mask, ent, ref_logp = (forwards or {}).get(idx[0], (None, None, None, None))
        if logp is None:
            logp, mask, ent = policy.logprobs(seqs, entropy=True)
        if ref_logp is None:
            ref_logp = policy.ref_logprobs(seqs)
        weights = None
        if s.importance == "tis":
            weights = truncated_importance_weights(logp, engine_logprobs(part, mask), mask, s.tis_cap)
        adv = torch.tensor([advantages[i] for i in idx], dtype=torch.float32, device=policy.device)
        loss, pg, _ = policy_loss(
            logp, ref_logp, mask, adv, beta, estimator=s.kl_estimator, kl_in_loss=s.kl_in == "loss",
            agg=s.loss_agg, denominator=denom, weights=weights,
        )  # fmt: skip
        loss.backward()
        with torch.no_grad():
            sums[0] += float(pg)
            sums[1] += float((kl_estimate(logp, ref_logp, s.kl_estimator) * mask).sum())
            sums[2] += float((ent * mask).sum())
            sums[3] += float(mask.sum())
    return sums


def update(policy: Policy, optimizer: Any, max_grad_norm: float, workers: Workers) -> float:
    """Phase 5: gradients summed over the workers, clipped, one optimizer step; the norm before clipping."""
    params = policy.trainable()
    workers.sum_grads(params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@contextlib.contextmanager
def _timed(timing: dict[str, float] | None, phase: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    if timing is not None:
        timing[phase] = timing.get(phase, 0.0) + time.perf_counter() - started


def attempt_update(
    policy: Policy, attempts: list[Attempt], rewards: list[float], groups: list[str], beta: float, s: ScoreConfig,
    workers: Workers, timing: dict[str, float] | None = None, engine_logp: bool = False,
) -> tuple[torch.Tensor, list[float] | None, list[float]]:  # fmt: skip
    """Phases 2-4 for one attempt: the KL penalty in the reward (``kl_in: reward``; the policy's log-probs
    from the engine with ``engine_logp``), RLOO advantages, the loss and its backward. Returns this worker's
    sums (``backward``'s, then how many sequences' penalties took the engine's log-probs), the penalties
    (None with the KL in the loss) and the rewards less the penalty. ``timing`` adds up the seconds of the
    phases ``kl_in_reward`` and ``loss_backward``."""
    seqs = [a.sequence for a in attempts]
    batches = micro_batches(seqs, workers, s.micro_batch)
    penalties, forwards, from_engine = None, None, 0
    with _timed(timing, "kl_in_reward"):
        if s.kl_in == "reward":  # R_j -= beta_j * sum_t (logp - ref_logp)
            sampled = attempts if engine_logp else None
            penalties, forwards, from_engine = kl_in_reward(policy, seqs, batches, workers, sampled)
            rewards = [r - beta * p for r, p in zip(rewards, penalties, strict=True)]
    with _timed(timing, "loss_backward"):
        advantages = rloo_advantages(rewards, groups, s.baseline)
        sums = backward(policy, attempts, batches, advantages, beta, s, forwards)
    return torch.cat([sums, torch.tensor([from_engine], dtype=torch.float64)]), penalties, rewards


def train_step(
    policy: Policy, optimizer: Any, batch: list[Episode], stage: int, t: TrainConfig, workers: Workers = Workers(),
    engine_logp: bool = False,
) -> StepStats:
    """One SCoRe update on the judged, unflagged episodes of ``batch`` (every worker holds the whole batch).
    ``engine_logp``: the engines sampled ``batch`` with these very weights, and the KL penalty in the reward
    may take the policy's log-probs from them (``rl.score_recipe.use_engine_logprobs``).

    An attempt's advantages depend on its own rewards only, so each attempt goes through the phases in turn
    and its activations are freed before the next one's forward."""
    s = t.score
    episodes = [e for e in batch if not e.flagged]
    beta = betas(s, stage)
    rewards = shape(episodes, stage, s)
    groups = [e.prompt_id for e in episodes]
    penalties: dict[int, list[float]] = {}
    parts = []
    policy.model.train()
    for j in (1, 2):
        attempts = [e.attempt(j) for e in episodes]
        sums, penalty, rewards[j] = attempt_update(
            policy, attempts, rewards[j], groups, beta[j], s, workers, engine_logp=engine_logp
        )
        parts.append(sums)
        if penalty is not None:
            penalties[j] = penalty
    sums = workers.sum(torch.cat(parts), policy.device)
    learning_rate = float(optimizer.param_groups[0]["lr"])
    grad_norm = update(policy, optimizer, t.max_grad_norm, workers)
    pg1, kl1, ent1, tok1, eng1, pg2, kl2, ent2, tok2, eng2 = sums.tolist()
    return StepStats(
        pg_loss=pg1 + pg2,
        kl_t1=kl1 / max(tok1, 1),
        kl_t2=kl2 / max(tok2, 1),
        entropy_t1=ent1 / max(tok1, 1),
        entropy_t2=ent2 / max(tok2, 1),
        grad_norm=grad_norm,
        shaped_t1=fmean(rewards[1]) if episodes else 0.0,
        shaped_t2=fmean(rewards[2]) if episodes else 0.0,
        learning_rate=learning_rate,
        kl_penalty_t1=fmean(penalties[1]) if penalties and penalties[1] else (0.0 if penalties else None),
        kl_penalty_t2=fmean(penalties[2]) if penalties and penalties[2] else (0.0 if penalties else None),
        kl_from_engine=(eng1 + eng2) / max(1, 2 * len(episodes)) if penalties else None,
    )
