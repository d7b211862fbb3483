"""SCoRe's data: an episode (attempt 1, the correction instruction, attempt 2, as an engine sampled them)
and a step's batch of episodes, with what the judge and the trainer add to them.

An episode's ``row`` is the sample row of the data contract (``datagen.records.SAMPLE_SCHEMA``) that the
turn logic (``datagen.turns.two_attempts``) made for it, the same row the generate stage writes: the
judge scores it as the judge stage would. The token ids and the engine's log-probabilities beside it
are what the trainer needs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from rl.score_math import reward_from_score


@dataclass
class Attempt:
    """One attempt: the token ids it was sampled after (``prompt``), its own, their engine log-probs."""

    prompt: list[int]
    tokens: list[int]
    logp: list[float]
    text: str
    finish: str  # stop, length; context: no room was left for it (never trained on)
    score: float | None = None  # the judge's, in its own units
    reward: float | None = None  # the score mapped onto [0, 1]

    @property
    def sequence(self) -> tuple[list[int], list[int]]:
        return self.prompt, self.tokens


@dataclass
class Episode:
    prompt_id: str
    sample_idx: int
    version: int  # the weights version that sampled it
    first: Attempt
    second: Attempt
    row: dict[str, Any] = field(default_factory=dict)
    flagged: str = ""  # why it is left out of the update ("" when it is not)

    def attempt(self, j: int) -> Attempt:
        return self.first if j == 1 else self.second

    @classmethod
    def from_turns(cls, turns: Any, version: int) -> Episode:
        """An episode from ``datagen.turns.TwoAttempts``: the row and the engine's two completions."""

        def attempt(c: Any) -> Attempt:
            return Attempt(list(c.prompt_ids), list(c.token_ids), list(c.logprobs), c.text, c.finish)

        row = turns.row
        return cls(row["prompt_id"], row["sample_idx"], version, attempt(turns.first), attempt(turns.second), row)


#: Why an episode is left out of the update (``Episode.flagged``), in the order they are checked.
FLAGS = ("no_room_for_attempt2", "judge_error", "bad_score")


def flag(episode: Episode, score1: Any, score2: Any, error: str | None, scale: tuple[float, float] | None) -> str:
    """Record the judge's scores and rewards on ``episode``; return (and set) why it cannot be trained on.

    No room for attempt 2, a judge error, or a missing/NaN score or one outside the judge's scale
    (``reward_from_score`` gives None) flag the episode: left out of the update, counted by reason.
    """
    a, b = episode.first, episode.second
    a.score, b.score = score1, score2
    a.reward, b.reward = reward_from_score(score1, scale), reward_from_score(score2, scale)
    if b.finish == "context":
        episode.flagged = "no_room_for_attempt2"
    elif error:
        episode.flagged = "judge_error"
    elif a.reward is None or b.reward is None:
        episode.flagged = "bad_score"
    else:
        episode.flagged = ""
    return episode.flagged


@dataclass
class RolloutStats:
    """How a batch was made: engine seconds and tokens, batches redone after an engine died, judge seconds,
    and the trainer-vs-engine log-prob mismatch (NaN when not measured)."""

    seconds: float = 0.0
    tokens: int = 0
    redone: int = 0
    judge_seconds: float = 0.0
    mismatch: float = float("nan")


@dataclass
class EpisodeBatch:
    """One step's episodes, judged; ``lag``: how many updates older the weights that sampled them (``version``)
    are than the trainer's when it trains on them."""

    episodes: list[Episode]
    lag: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    rollout: RolloutStats = field(default_factory=RolloutStats)
    no_gradient: set[str] = field(default_factory=set)  # prompts left out of the update by dynamic sampling
    sampling: dict[str, float] = field(default_factory=dict)  # what dynamic sampling drew, for the metrics
    engine_logp: bool = False  # its KL penalty may take the policy's log-probs from the engines (kl_logprobs)

    def extend(self, other: EpisodeBatch) -> None:
        """Add another round's episodes (dynamic sampling), its flags and its costs."""
        self.episodes += other.episodes
        for k, v in other.flags.items():
            self.flags[k] = self.flags.get(k, 0) + v
        a, b = self.rollout, other.rollout
        a.seconds, a.tokens, a.redone = a.seconds + b.seconds, a.tokens + b.tokens, a.redone + b.redone
        a.judge_seconds += b.judge_seconds

    @property
    def version(self) -> int:
        """The oldest weights version among its episodes (an engine restarted mid-batch samples the rest with
        newer ones): the lag is counted from it."""
        return min((e.version for e in self.episodes), default=0)

    @property
    def valid(self) -> list[Episode]:
        return [e for e in self.episodes if not e.flagged]

    @property
    def trained(self) -> list[Episode]:
        """The episodes the update trains on: valid, of prompts that carry a gradient."""
        return [e for e in self.episodes if not e.flagged and e.prompt_id not in self.no_gradient]

    def accuracy(self, j: int) -> float:
        """Mean reward of attempt ``j`` over the valid episodes (NaN when there are none)."""
        valid = self.valid
        return fmean(e.attempt(j).reward for e in valid) if valid else float("nan")  # type: ignore[misc]

    def to_parquet(self, step: int, stage: int) -> bytes:
        """The rollouts file of a step: one row per episode (texts, finish reasons, scores, rewards, flags)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [
            {
                "step": step, "stage": stage, "policy_lag": self.lag, "prompt_id": e.prompt_id,
                "sample_idx": e.sample_idx, "version": e.version, "y1_text": e.first.text,
                "y1_finish": e.first.finish, "y2_text": e.second.text, "y2_finish": e.second.finish,
                "score1": e.first.score, "score2": e.second.score, "reward1": e.first.reward,
                "reward2": e.second.reward, "flagged": e.flagged, "no_gradient": e.prompt_id in self.no_gradient,
                "tokens1": len(e.first.tokens), "tokens2": len(e.second.tokens),
            }  # fmt: skip
            for e in self.episodes
        ]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        return buf.getvalue()
