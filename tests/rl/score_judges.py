"""A judge for the SCoRe tests, loaded as ``tests.rl.score_judges:TextParity``.

A tiny random model never solves a problem, so the verifier would give every episode reward 0 and
the policy would never move. This judge scores an attempt by the parity of its characters' code
points: a deterministic function of the text that a random model earns about half the time, so
advantages are non-zero and the weights change. One attempt in about seven gets NaN, which the
trainer must flag and leave out.
"""

from __future__ import annotations

import math

from judges.base import BaseJudge, JudgeResult


def parity_score(text: str | None) -> float | None:
    if text is None:
        return None
    total = sum(map(ord, text))
    if total % 7 == 3:
        return math.nan
    return float(total % 2)


class TextParity(BaseJudge):
    def judge(self, rows):
        return self._account([JudgeResult(score1=parity_score(r["attempt1"]), score2=parity_score(r["attempt2"]))
                              for r in rows])  # fmt: skip
