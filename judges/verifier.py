"""Ground-truth verifier: the 0/1 reward of SCoRe and the correctness flip of SCL.

Math rows: the final answer is extracted from the response (``judges.answers``: the last explicit
final statement, else the closing sentence; a response cut off by the token limit, or any response
with ``explicit_answers_only`` (for RL rewards), only by an explicit statement), read whole
(``judges.answer_forms``: tuples, intervals, sets, matrices, relations, words and letters) and
compared with the reference, read the same way, by ``math-verify``. The raw output records the
answer, the rule that found it and the finish reason, so a score can be audited. Code rows: the
HumanEval-style tests run in a sandboxed process (``judges.code_sandbox``). A response with no final
answer scores 0.0 (the model failed); a row the verifier cannot judge (no reference, no tests, an
unknown task) gets no score and an error.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from datagen.records import CODE_ENTRY_POINT, CODE_PROMPT, CODE_TEST
from judges.answer_forms import same_answer
from judges.answers import Extraction, extract, reference_answer
from judges.base import BaseJudge, JudgeResult, dumps, register
from judges.code_sandbox import SandboxLimits, isolation, run_humaneval

log = logging.getLogger(__name__)


def extract_answer(text: str | None, finish: str | None = None) -> str | None:
    """The final answer a response commits to, or None (``judges.answers.extract`` names the rule).

    >>> extract_answer("12*7 = 84. The answer is 84 apples.")
    '84'
    """
    return extract(text, finish).answer


def answers_match(answer: str, reference: str, timeout_s: int | None = 5) -> bool:
    """Whether two answers are equal (``judges.answer_forms.same_answer``: words as words, the rest
    through ``math-verify``: integers, decimals, fractions, LaTeX, tuples, intervals, sets, matrices,
    relations)."""
    return same_answer(answer, reference, timeout_s)


def score_math(
    response: str | None,
    reference: str,
    timeout_s: int | None = 5,
    finish: str | None = None,
    explicit_only: bool = False,
) -> tuple[float, Extraction]:
    """Score a math response against the reference: (1.0 or 0.0, what was extracted and by which rule).

    ``finish`` is the response's finish reason (``attempt1_finish``/``attempt2_finish``);
    ``explicit_only`` credits only an explicit final statement (``judges.answers``). The reference
    is read as an answer too (``judges.answers.reference_answer``: "\\$18", ``\\text{(B)}``, a
    GSM8K solution ending in ``#### 72``).
    """
    found = extract(response, finish, explicit_only)
    if found.answer is None:
        return 0.0, found
    return (1.0 if answers_match(found.answer, reference_answer(reference), timeout_s) else 0.0), found


def check_math(
    response: str | None, reference: str, timeout_s: int | None = 5, finish: str | None = None
) -> tuple[float, str | None]:
    """Score a math response against the reference: (1.0 or 0.0, the extracted answer)."""
    score, found = score_math(response, reference, timeout_s, finish)
    return score, found.answer


@register("verifier")
class Verifier(BaseJudge):
    """Scores attempt 1 and attempt 2 of math and code rows against their ground truth."""

    # 2: the final-answer extractor of judges.answers, finish reasons, the namespaced code sandbox;
    # 3: answers and references read in every MATH/GSM8K form (judges.answer_forms), #### N explicit
    version = "3"

    def __init__(self, name: str, settings: Any):
        super().__init__(name, settings)
        self.limits = SandboxLimits(
            timeout_s=settings.code_timeout_s,
            memory_mb=settings.code_memory_mb,
            max_procs=settings.code_max_procs,
            python=settings.code_python,
            tmpfs_mb=settings.code_tmpfs_mb,
            allow_unsafe=settings.unsafe_code,
        )
        self._refusal: str | None = None  # why code rows cannot run here ("" when they can); probed once
        self._probe_lock = threading.Lock()

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        results = [JudgeResult() for _ in rows]
        code_jobs = []
        for row, res in zip(rows, results, strict=True):
            task = row.get("task")
            if task == "math":
                self._math(row, res)
            elif task == "code":
                code_jobs.append((row, res))
            else:
                res.flag(f"no verifier for task {task!r}")
        if code_jobs:
            with ThreadPoolExecutor(self.settings.code_workers) as pool:
                list(pool.map(lambda job: self._code(*job), code_jobs))
        return self._account(results)

    def _math(self, row: dict[str, Any], res: JudgeResult) -> None:
        reference = row.get("reference")
        if not reference:
            res.flag("no reference answer")
            return
        raw: dict[str, Any] = {"reference": reference}
        for slot in ("1", "2"):
            text = row.get(f"attempt{slot}")
            if text is None:
                continue
            finish = row.get(f"attempt{slot}_finish")
            try:
                score, found = score_math(
                    text, reference, self.settings.math_timeout_s, finish, self.settings.explicit_answers_only
                )
            except Exception as e:  # sympy can fail on odd input; the row is flagged, not lost
                res.flag(f"attempt{slot}: cannot compare answers: {type(e).__name__}: {e}")
                continue
            setattr(res, f"score{slot}", score)
            raw.update({f"answer{slot}": found.answer, f"rule{slot}": found.rule, f"finish{slot}": finish})
        res.raw = dumps(raw)

    def _code(self, row: dict[str, Any], res: JudgeResult) -> None:
        try:
            meta = json.loads(row.get("metadata") or "{}")
        except json.JSONDecodeError:
            meta = {}
        test, entry = meta.get(CODE_TEST), meta.get(CODE_ENTRY_POINT)
        if not test or not entry:
            res.flag(f"code row has no {CODE_TEST}/{CODE_ENTRY_POINT} in metadata")
            return
        refusal = self._code_refusal()
        if refusal:
            res.flag(refusal)
            return
        prompt = meta.get(CODE_PROMPT, "")
        raw = {}
        for slot in ("1", "2"):
            text = row.get(f"attempt{slot}")
            if text is None:
                continue
            outcome = run_humaneval(prompt, text, test, entry, self.limits)
            raw[f"attempt{slot}"] = outcome.summary()
            if outcome.error:  # the host could not build the sandbox this time: no verdict on the code
                res.flag(f"attempt{slot}: sandbox setup failed: {outcome.error}")
                continue
            setattr(res, f"score{slot}", 1.0 if outcome.passed else 0.0)
        res.raw = dumps(raw)

    def _code_refusal(self) -> str:
        """Why code cannot run on this host ("" when it can); probed and logged once per judge."""
        with self._probe_lock:
            if self._refusal is None:
                mode, why = isolation(self.limits.python)
                if mode != "none":  # a warning, so that it shows in actor logs without any logging set-up
                    log.warning("judge %s: generated code runs sandboxed (%s namespaces)", self.name, mode)
                    self._refusal = ""
                elif self.settings.unsafe_code:
                    log.warning(
                        "judge %s: generated code runs WITHOUT isolation (unsafe_code is on): %s", self.name, why
                    )
                    self._refusal = ""
                else:
                    self._refusal = (
                        f"code not run: no sandbox isolation on this host ({why}); "
                        "set judges.verifier.unsafe_code=true to run it with only resource limits"
                    )
                    log.error("judge %s: %s", self.name, self._refusal)
        return self._refusal
