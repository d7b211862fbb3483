"""A pairwise judge for the eval tests: prefers the response that states the reference answer.

Loaded by the judge stage's Ray actors as ``tests.rl.eval_judges:PreferRight``.
"""

from __future__ import annotations

from typing import ClassVar

from judges.base import JudgeResult
from judges.config import JudgeSettings


class PreferRightSettings(JudgeSettings):
    type: str
    mode: str = "pairwise"


class PreferRight:
    suffixes: ClassVar[tuple[str, ...]] = ("pref", "raw", "error")
    Settings = PreferRightSettings

    def __init__(self, name, settings):
        from judges.base import JudgeStats

        self.name, self.settings, self.stats = name, settings, JudgeStats()

    def judge(self, rows):
        out = []
        for r in rows:
            right = [f"is {r['reference']}." in (r[f"attempt{i}"] or "") for i in (1, 2)]
            out.append(JudgeResult(pref=0 if right[0] == right[1] else (1 if right[0] else 2)))
        return out

    def close(self):
        pass
