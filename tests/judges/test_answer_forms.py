"""MATH- and GSM8K-style answers (tuples, intervals, sets, matrices, relations, words and letters,
several boxes, number forms, GSM8K's ``#### N``) in both modes of the verifier, against a person's
verdict and math-verify's own (the cases: tests/judges/math_form_cases.py)."""

from __future__ import annotations

import json

import pytest
from math_form_cases import CASES, KINDS, math_verify_verdict

from judges.answer_forms import same_answer
from judges.answers import EXPLICIT_RULES, extract, reference_answer
from judges.base import build
from judges.config import judge_settings
from judges.verifier import score_math


def _id(case) -> str:
    return f"{case.kind}-{CASES.index(case)}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_verdict_in_both_modes(case):
    score, found = score_math(case.text, case.reference, finish=case.finish)
    assert (score == 1.0) == case.right, found
    strict = case.right if case.strict is None else case.strict
    score, found = score_math(case.text, case.reference, finish=case.finish, explicit_only=True)
    assert (score == 1.0) == strict, found
    assert score == 0.0 or found.rule in EXPLICIT_RULES


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_each_difference_from_math_verify_is_explained(case):
    """Where math-verify's verdict differs from the person's (and so from ours), the case says why."""
    differs = math_verify_verdict(case.text, case.reference) != case.right
    assert differs == bool(case.why), "explain the difference" if differs else f"stale note: {case.why}"


def test_the_cases_hold_right_and_wrong_answers_of_each_kind_in_both_modes():
    for kind in KINDS:
        cases = [c for c in CASES if c.kind == kind]
        assert sum(c.right for c in cases) >= 5, kind
        assert sum(not c.right for c in cases) >= 5, kind
        assert any(c.strict is False and c.right for c in cases) or kind in ("words", "several_boxed"), kind
    assert len(CASES) >= 150


def test_the_judge_stage_path_scores_every_case():
    """The cases as rows, judged by ``build("verifier", ...)`` as the judge stage calls it (finish
    reasons in ``attempt1_finish``), in both modes; the raw output names what was read."""
    rows = [
        {"prompt_id": f"p{i}", "sample_idx": 0, "task": "math", "reference": c.reference, "metadata": "{}",
         "attempt1": c.text, "attempt1_finish": c.finish, "attempt2": None}
        for i, c in enumerate(CASES)
    ]
    for settings, want in (({}, [c.right for c in CASES]),
                           ({"explicit_answers_only": True}, [c.right if c.strict is None else c.strict
                                                              for c in CASES])):
        results = build("verifier", judge_settings("verifier", settings)).judge(rows)
        assert [r.score1 == 1.0 for r in results] == want
        assert all(r.error == "" for r in results)
    raw = json.loads(results[0].raw)
    assert raw["answer1"] is None and raw["rule1"].startswith("none: no explicit final answer")


# --- what is read: the answer string the raw output records ---------------------------------------


@pytest.mark.parametrize(
    "text,answer",
    [
        (r"The answer is $\left(2, -3\right)$.", "(2, -3)"),
        ("The answer is (2, -3) (the intersection).", "(2, -3)"),
        (r"So $x \in [0, 5)$.", r"x \in [0, 5)"),
        (r"\boxed{(-\infty, 3) \cup (3, \infty)}", r"(-\infty, 3) \cup (3, \infty)"),
        (r"The answer is 1, 2, and 3.", "1, 2, 3"),
        (r"The answer is 12, and Ben has 5.", "12"),
        (r"The solutions are $x = -2$ and $x = 2$.", "x = -2, x = 2"),
        (r"The roots are 3 and 5.", "3, 5"),
        (r"\boxed{\begin{pmatrix} 1 \\ -2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}"),
        ("The answer is x ≥ 3.", r"x \geq 3"),
        (r"The answer is $x^2 - 5x + 6 = 0$.", "x^2 - 5x + 6 = 0"),
        (r"The answer is $k = 4$.", "4"),
        ("N = 3 x 8 + 3 = 30 + 3 = 33, which is the answer.", "33"),
        ("The answer is (B).", "B"),
        ("The answer is A, B, C or D.", "A, B, C, D"),
        (r"\boxed{\text{Evelyn}}", "Evelyn"),
        ("The answer is neither even nor odd.", "neither even nor odd"),
        ("The answer is Evelyn, Briana and Carla.", "Evelyn, Briana, Carla"),
        (r"$x = \boxed{2}$ or $x = \boxed{3}$", "2, 3"),
        (r"\boxed{\sqrt{2}} then \boxed{7}", "7"),
        (r"Each friend gets \frac{3}{4} of a pizza.", r"\frac{3}{4}"),
        ("The answer is 3e5.", r"3 \times 10^{5}"),
        ("There are about 6.02 × 10^23 atoms.", r"6.02 \times 10^23"),
        ("The probability is .25.", ".25"),
        ("The side length is 2\\sqrt3.", "2\\sqrt 3"),
        (r"Thus $x\approx11$.", r"x\approx 11"),
        ("The solution is $x != 5$.", "x != 5"),
        (r"The answer is $10,\!000$.", "10000"),
        ("Natalia sold 72 clips.\n#### 72", "72"),
        ("The answer is infinity.", r"\infty"),
    ],
)
def test_answer_read_whole(text, answer):
    assert extract(text).answer == answer


@pytest.mark.parametrize(
    "text",
    [
        "The answer is (2, -3",  # cut off inside the tuple: reading "(2" would pay the reference 2
        "The answer is N.",
        "The answer is N because it required one item.",
        "The answer is that she had some left.",
        "The answer is given below.",
        r"\boxed{x}",
        r"\boxed{2} and \boxed{N}",
    ],
)
def test_no_answer_where_none_is_stated_whole(text):
    assert extract(text, explicit_only=True).answer is None


@pytest.mark.parametrize(
    "text",
    [
        "The answer is odd. Checking f(-x) once more, the answer is not odd.",
        "The answer is 12.\nThe answer is incorrect.",
        "The answer is 12. Hmm, the answer is not 12.",
        "The answer is 3, or possibly 5.",
        "The answer is 3 apples or 5 pears.",
    ],
)
def test_an_answer_taken_back_or_hedged_leaves_none_standing(text):
    for explicit_only in (False, True):
        found = extract(text, explicit_only=explicit_only)
        assert found.answer is None and "takes the answer back" in found.rule, found


def test_a_truncated_list_of_boxes_is_no_answer():
    assert extract(r"The roots are \boxed{2} and \boxed{3", finish="length").answer is None
    assert extract(r"The roots are \boxed{2} and \boxed{3}", finish="length").answer == "2, 3"


def test_gsm8k_marker_is_explicit_but_a_heading_is_not():
    assert extract("48 + 24 = 72\n#### 72", explicit_only=True) == extract("#### 72", explicit_only=True)
    assert extract("#### 72", explicit_only=True).rule == "gsm8k_hashes"
    for heading in ("#### Step 1: add\n5 + 7 = 12", "#### 1. Add them\n5 + 7 = 12", "#### N"):
        assert extract(heading, explicit_only=True).answer is None, heading
    assert extract("#### Step 1: add\n5 + 7 = 12").answer == "12"  # the heading is read as prose


# --- references in every form -------------------------------------------------------------------

REFERENCES = [
    # (reference, what it reads as, a right answer, the closest wrong one)
    ("84", "84", "The answer is 84.", "The answer is 48."),
    ("-2.5", "-2.5", r"\boxed{-\frac{5}{2}}", r"\boxed{2.5}"),
    (r"\frac{3}{4}", r"\frac{3}{4}", "The answer is 0.75.", "The answer is 4."),
    (r"\$18", "18", "The answer is \\$18.", "The answer is \\$81."),
    (r"\$1{,}200", "1200", "The answer is 1,200 dollars.", "The answer is 120 dollars."),
    (r"10,\!000", "10000", "The answer is 10000.", "The answer is 10."),
    ("25\\%", "25%", "The answer is 25%.", "The answer is 0.25%."),
    ("(1, 2)", "(1, 2)", "The answer is $(1,2)$.", "The answer is $(2, 1)$."),
    ("[0, 5)", "[0, 5)", r"The answer is $[0, 5)$.", r"The answer is $[0, 5]$."),
    (r"\{1, 2\}", r"\{1, 2\}", r"\boxed{\{2, 1\}}", r"\boxed{\{1\}}"),
    ("1, 2", "1, 2", r"$x = \boxed{1}$ or $x = \boxed{2}$", r"\boxed{1}"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
     r"\boxed{\begin{bmatrix} 1 \\ 2 \end{bmatrix}}", r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}"),
    (r"x \geq 3", r"x \geq 3", r"\boxed{3 \le x}", r"\boxed{x \le 3}"),
    ("y = 2x + 3", "y = 2x + 3", r"The answer is $y = 3 + 2x$.", r"The answer is $y = 2x - 3$."),
    (r"\text{(C)}", "C", "The answer is (C).", "The answer is (D)."),
    ("C", "C", r"\boxed{\text{C}}", r"\boxed{A}"),
    (r"\text{odd}", "odd", "The answer is odd.", "The answer is even."),
    ("Evelyn", "Evelyn", r"\boxed{\text{Evelyn}}", r"\boxed{\text{Evelyn and Carla}}"),
    (r"3 \times 10^{5}", r"3 \times 10^{5}", "The answer is 300,000.", "The answer is 3."),
    ("3e5", r"3 \times 10^{5}", "The answer is 300000.", "The answer is 3."),
    (".5", ".5", r"\boxed{\frac12}", r"\boxed{5}"),
    (r"2\sqrt3", r"2\sqrt 3", r"\boxed{\sqrt{12}}", r"\boxed{2\sqrt{2}}"),
    ("She sold 48 + 24 = <<48+24=72>>72 clips.\n#### 72", "72", "#### 72", "#### 48"),
    (r"So the area is $\boxed{12\pi}$.", r"12\pi", r"The answer is $12\pi$.", "The answer is 12."),
]


@pytest.mark.parametrize("reference,reads,right,wrong", REFERENCES)
def test_reference_in_each_form(reference, reads, right, wrong):
    assert reference_answer(reference) == reads
    for explicit_only in (False, True):
        assert score_math(right, reference, explicit_only=explicit_only)[0] == 1.0, right
        assert score_math(wrong, reference, explicit_only=explicit_only)[0] == 0.0, wrong


def test_words_compare_as_words():
    assert same_answer("B", "(B)") and same_answer("Odd", "odd") and same_answer("B", r"\text{(B)}")
    assert not same_answer("not odd", "odd") and not same_answer("A, B", "A") and not same_answer("five", "5")
    assert not same_answer(".5", "5")  # text that math-verify parses differently is not compared as text


def test_docstring_examples():
    import doctest

    import judges.answer_forms

    failed, tried = doctest.testmod(judges.answer_forms)
    assert failed == 0 and tried >= 6
