"""Rank 0's supply of SCoRe's batches: which prompts each step draws (and draws again, with dynamic sampling),
the rollout engines that sample them, the judge that scores both attempts, and the check that the engines
hold the trainer's weights."""

from __future__ import annotations

import math
import random
import time
from statistics import fmean
from typing import Any

import torch

from datagen.records import Prompt, judge_column
from judges.base import score_scale
from judges.config import JudgeSettings
from rl.config import TrainConfig
from rl.episodes import EpisodeBatch, flag
from rl.score_step import Policy, prompts_with_signal


def step_prompts(num_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step``: consecutive slices of per-epoch shuffles (seed, epoch), so a
    resumed run samples exactly the prompts the uninterrupted one would.

    >>> step_prompts(4, 2, 0, 0) + step_prompts(4, 2, 1, 0) == sorted(step_prompts(4, 4, 0, 0))
    False
    """
    out: list[int] = []
    start = step * per_step
    while len(out) < per_step:
        epoch, pos = divmod(start + len(out), num_prompts)
        order = list(range(num_prompts))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(per_step - len(out), num_prompts - pos)
        out.extend(order[pos : pos + take])
    return out


def extra_prompts(num_prompts: int, per_step: int, step: int, round: int, seed: int, drawn: set[int]) -> list[int]:
    """Indices of the prompts of round ``round`` >= 1 of ``step`` (dynamic sampling): the first ``per_step`` of a
    shuffle seeded by (seed, step, round) that this step has not drawn yet; a resumed run draws the same.

    >>> extra_prompts(6, 2, 0, 1, 0, {0, 1}) == extra_prompts(6, 2, 0, 1, 0, {0, 1})
    True
    >>> set(extra_prompts(4, 4, 0, 1, 0, {0, 1}))
    {2, 3}
    """
    order = list(range(num_prompts))
    random.Random(f"{seed}/{step}/{round}").shuffle(order)
    return [i for i in order if i not in drawn][:per_step]


class EpisodeSource:
    """Rank 0's supply of judged batches: the step's prompts, the rollout engines, the judge."""

    def __init__(self, prompts: list[Prompt], train: TrainConfig, judge: JudgeSettings, client: Any):
        """``client``: the rollout engines' ``rl.rollout.RolloutClient``; ``judge``: train.score.judge's settings."""
        from datagen.judging import JudgeWorker

        self.prompts, self.seed, self.s = prompts, train.seed, train.score
        self.client = client
        self.judge = JudgeWorker({self.s.judge: judge.model_dump()})
        self.scale = score_scale(judge)

    def submit(self, step: int, version: int, indices: list[int] | None = None, round: int = 0) -> None:
        """Start sampling round ``round`` of ``step``: the step's prompts (``step_prompts``) or ``indices``."""
        s = self.s
        if indices is None:
            indices = step_prompts(len(self.prompts), s.prompts_per_step, step, self.seed)
        rows = [self.prompts[i].to_row() for i in indices]
        self.client.submit(step, rows, version, s.n, s.temperature, s.review_prompt, round=round)

    def collect(self, step: int, model: Any, version: int, round: int = 0) -> EpisodeBatch:
        """The batch of ``step`` as the engines sampled it (an engine that lost the weights gets ``model``'s)."""
        return self.client.collect(step, model, version, round=round)

    def fill(self, batch: EpisodeBatch, step: int, stage: int, model: Any, version: int) -> None:
        """Dynamic sampling: while fewer than ``prompts_per_step`` of the prompts drawn carry a gradient, sample
        and judge ``prompts_per_step`` more (at most ``max_rounds`` times); the update trains on the first
        ``prompts_per_step`` that do. Disabled, it only counts them."""
        s = self.s
        ds = s.dynamic_sampling
        index = {p.prompt_id: i for i, p in enumerate(self.prompts)}
        drawn = {index[e.prompt_id] for e in batch.episodes}
        signal = prompts_with_signal(batch.episodes, stage, s)
        first = len(signal) / len(drawn) if drawn else 0.0
        rounds = 0
        while ds.enabled and len(signal) < s.prompts_per_step and rounds < ds.max_rounds:
            more = extra_prompts(len(self.prompts), s.prompts_per_step, step, rounds + 1, self.seed, drawn)
            if not more:
                break
            rounds += 1
            self.submit(step, version, more, round=rounds)
            extra = self.collect(step, model, version, round=rounds)
            self.score(extra)
            batch.extend(extra)
            drawn |= set(more)
            signal = prompts_with_signal(batch.episodes, stage, s)
        keep = signal[: s.prompts_per_step]
        if ds.enabled:
            batch.no_gradient = {e.prompt_id for e in batch.episodes} - set(keep)
        batch.sampling = {
            "prompts_drawn": len(drawn), "prompts_with_gradient": len(signal),
            "prompts_trained": len(keep) if ds.enabled else len(drawn), "sampling_rounds": rounds,
            "gradient_fraction_first_round": first, "gradient_fraction": len(signal) / len(drawn) if drawn else 0.0,
            "batch_has_gradient": float(bool(signal)),
        }  # fmt: skip

    def score(self, batch: EpisodeBatch) -> None:
        """Both attempts of every episode scored by the judge stage's worker, as the judge stage scores
        generate rows; rewards set, flagged episodes counted by reason."""
        import pyarrow as pa

        from datagen.records import SAMPLE_SCHEMA

        started = time.perf_counter()
        judged, _ = self.judge.judge_table(pa.Table.from_pylist([e.row for e in batch.episodes], schema=SAMPLE_SCHEMA))
        name = self.s.judge
        columns = (judged[judge_column(name, s)].to_pylist() for s in ("score1", "score2", "error"))
        for e, a, b, err in zip(batch.episodes, *columns, strict=True):
            reason = flag(e, a, b, err, self.scale)
            if reason:
                batch.flags[reason] = batch.flags.get(reason, 0) + 1
        batch.rollout.judge_seconds = time.perf_counter() - started


def logp_mismatch(batch: EpisodeBatch, policy: Policy, limit: int = 4) -> float:
    """Mean |trainer log-prob - engine log-prob| over a few episodes' attempt-1 tokens: near 0 when the
    engine holds the trainer's weights (a health check of the weight sync)."""
    sample = [e for e in batch.episodes if e.first.tokens and e.first.logp][:limit]
    if not sample:
        return float("nan")
    with torch.no_grad():
        logp, mask, _ = policy.logprobs([e.first.sequence for e in sample])
    diffs = []
    for i, e in enumerate(sample):
        ours = logp[i][mask[i] > 0].tolist()
        diffs += [abs(a - b) for a, b in zip(ours, e.first.logp, strict=False) if not math.isnan(b)]
    return fmean(diffs) if diffs else float("nan")
