"""Final-answer extraction on the phrasings models and people write, and agreement with hand labels.

The ``# real`` rows are outputs of the default model (SmolLM2-135M-Instruct) on the built-in
arithmetic prompts, copied as generated (some shortened with "..."); the rest are written the way
larger models and people write answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judges.answers import EXPLICIT_RULES, extract
from judges.verifier import score_math

STOP, CUT = "stop", "length"

# (response, finish reason, reference, extracted answer, score)
TABLE = [
    # units and trailing words
    ("The answer is 12 marbles.", STOP, "12", "12", 1.0),
    ("The answer is 12 apples in total.", STOP, "12", "12", 1.0),
    ("So each jug holds 17/2 litres. The answer is 17/2 litres.", STOP, "17/2", "17/2", 1.0),
    ("The answer is 8.5 litres per jug.", STOP, "17/2", "8.5", 1.0),
    ("The correct answer should be 5 litres / 2 = 2.5 litres per jug.", STOP, "5/2", "2.5", 1.0),
    ("Answer: 12 m", STOP, "12", "12", 1.0),
    # Markdown
    ("The answer is **12**.", STOP, "12", "12", 1.0),
    ("**The answer is 12.**", STOP, "12", "12", 1.0),
    ("The answer is *12*.", STOP, "12", "12", 1.0),
    ("The answer is __12__.", STOP, "12", "12", 1.0),
    ("### Final Answer\n12", STOP, "12", "12", 1.0),
    ("## Final answer: 7", STOP, "7", "7", 1.0),
    ("**Final Answer:** 9 stickers", STOP, "9", "9", 1.0),
    ("2**3 = 8, so the answer is 8.", STOP, "8", "8", 1.0),
    # LaTeX
    ("So $x = \\boxed{\\frac{1}{2}}$", STOP, "0.5", "\\frac{1}{2}", 1.0),
    ("\\fbox{42}", STOP, "42", "42", 1.0),
    ("The final answer is $\\boxed{12}$.", STOP, "12", "12", 1.0),
    ("The answer is $12$.", STOP, "12", "12", 1.0),
    ("The answer is \\(12\\).", STOP, "12", "12", 1.0),
    ("Each jug holds $\\frac{49}{2}$ litres.", STOP, "49/2", "\\frac{49}{2}", 1.0),
    ("The answer is $12\\text{ marbles}$.", STOP, "12", "12", 1.0),
    ("The answer is \\boxed{12 \\text{ apples}}.", STOP, "12", "12", 1.0),
    ("It costs \\$5 in all, so the answer is \\$5.", STOP, "5", "5", 1.0),
    ("The answer is $\\dfrac{3}{4}$ of a litre.", STOP, "3/4", "\\dfrac{3}{4}", 1.0),
    # thousands separators, currency, percent
    ("The answer is 1,000 coins.", STOP, "1000", "1000", 1.0),
    ("The answer is 1 000 coins.", STOP, "1000", "1000", 1.0),
    ("The answer is $1,250.", STOP, "1250", "1250", 1.0),
    ("Final answer: €30", STOP, "30", "30", 1.0),
    ("The answer is 25%.", STOP, "25", "25%", 1.0),
    ("The answer is 25 percent.", STOP, "25", "25", 1.0),
    ("In total she has 12,345 stickers.", STOP, "12345", "12345", 1.0),
    # negative numbers, fractions, decimals
    ("The answer is -3.", STOP, "-3", "-3", 1.0),
    ("It is -2.5 degrees", STOP, "-2.5", "-2.5", 1.0),
    ("7-3 = 4", STOP, "4", "4", 1.0),
    ("The answer is 3/4.", STOP, "\\frac{3}{4}", "3/4", 1.0),
    ("The answer is 0.75", STOP, "3/4", "0.75", 1.0),
    ("The answer is 2.", STOP, "\\boxed{3}", "2", 0.0),
    # prefixes with no answer after them: look elsewhere
    ("Answer:\n\nFirst we add 5 and 7 to get 12.", STOP, "12", "12", 1.0),
    ("The answer is N.", STOP, "12", None, 0.0),
    ("Looking at my previous answer: I added wrongly. 5 + 3 = 8, plus 1 is 9. The correct total is 9.", STOP, "9",
     "9", 1.0),
    ("The answer is that she has 4 + 8 = 12 marbles.", STOP, "12", "12", 1.0),
    # SCL's ## A ## only when it holds an answer
    ("Work... ## 42 ##", STOP, "42", "42", 1.0),
    ("## Step 1 ##\nAdd 5 and 7 to get 12.", STOP, "12", "12", 1.0),
    ("## Step 1 ##\n5 + 7 = 12\n## Step 2 ##\n12 - 3 = 9\n## 9 ##", STOP, "9", "9", 1.0),
    ("## Answer: 15 ##", STOP, "15", "15", 1.0),
    # self-talk and restatements: the last explicit statement wins
    ("The answer is 12. Wait, 7+6 is 13, so the answer is 13.", STOP, "13", "13", 1.0),
    ("My previous answer is 12, which was wrong. The correct answer is 13.", STOP, "13", "13", 1.0),
    ("The correct answer is 13. My previous answer is 12.", STOP, "13", "13", 1.0),
    ("The correct total is 9 marbles.", STOP, "9", "9", 1.0),
    ("The correct number of apples is 14.", STOP, "14", "14", 1.0),
    ("Ava has 5 apples and Ben gives her 7 more. The answer is 12. Ava had 5 and got 7.", STOP, "12", "12", 1.0),
    ("= 33, which is the answer.", STOP, "33", "33", 1.0),
    ("\\boxed{\\sqrt{2}} then \\boxed{7}", STOP, "7", "7", 1.0),
    # no explicit statement: the closing sentence
    ("5 + 7 = 12", STOP, "12", "12", 1.0),
    ("Therefore, Ava has 12 apples after Ben gives her 5.", STOP, "12", "12", 1.0),
    ("5 + 7 = 12. Wait, 5 + 8 = 13.", STOP, "13", "13", 1.0),
    ("$x + 1$ gives 7", STOP, "7", "7", 1.0),
    ("no numbers here", STOP, "3", None, 0.0),
    ("", STOP, "3", None, 0.0),
    # truncated: only an explicit statement made before the cut counts
    ("Ava has 5 marbles. 5 + 7 = 12, and then we need to", CUT, "12", None, 0.0),
    ("The answer is 1", CUT, "12", None, 0.0),  # "12" cut in half
    ("The answer is 12. Let me double-check: 12 - 5 = 7 and", CUT, "12", "12", 1.0),
    ("\\boxed{12}", CUT, "12", "12", 1.0),
    ("Each friend gets 8 stickers", CUT, "8", None, 0.0),
    # real
    ("16: 16x = 2x = 2*2 = 4\nSo there is a total of 4 stickers that Ava gets out of her group.\n\nTo find how many "
     "stickers each friend gets, we divide the answer by their share: 16/2 = 4.\n\nSo the final answer is 4.", STOP,
     "8", "4", 0.0),
    ("Kemi buys 6 boxes of 3 pencils each. To find out how many pencils Kemi buys, we need to multiply the number of "
     "boxes by the amount of each box.\n\n6 * 3 = 18 pencils. So, the answer is 18.", STOP, "18", "18", 1.0),
    ("To solve it step by step, you can start by listing out Ben's books, one on each of them. You have 3 + 1 + 3 = 6 "
     "books. ... There are 5 books left. The final answer is 3 + 1 = 4 books left.", STOP, "2", "4", 0.0),
    ("Ava has 4 coins and Goran gives her 1 more coin than the previous 4 coins, ...\n\nSo the answer is 1 + 6 = 7."
     "\n\nResult: So the final answer is 10.", STOP, "10", "10", 1.0),
    ("Here are the final equations to get the answer correct:\n1. The answer is 10. So the final answer is 10.\n"
     "Goran gives Ava 6 more, so there is 11 in total, which is the answer.\nNone. So the answer is 4.", STOP, "10",
     "4", 0.0),
    ("Ava has 4 coins, and Goran also gives Avala 6 more coins. 4 + 6 = 10, but Ava has 1 more coin than Ava. \n"
     "The answer is 1, although the answer will be a multiple of 10.", STOP, "10", "1", 0.0),
    ("Chen has 3 books and Farah has 8 more, so N = 3 x 8 + 3 = 30 + 3 = 33, which is the answer.", STOP, "11", "33",
     0.0),
    ("Solve it: 4 + 3 = N\n\nThe answer is N.", STOP, "7", None, 0.0),
    ("The answer is 15, and the number of apples is 3.\n\nThe answer is\nN. There is a mistake in the solution.", STOP,
     "9", "15", 0.0),
    ("Ivo: 9\nIvana: 3\n...\nStep 2: Ivana gives Ivo 3 more pencils.\n\nSo, N = N + Iva = 9 + 3 = 12\n\n"
     "The final answer is", CUT, "12", None, 0.0),
    ("Ben had 5 books and gave 3 of them to Jun, ... So, Ben has 8 - 6 = 2 books left.From these 2 remaining books, "
     "Ben gets 2 + 1 = 3", CUT, "2", None, 0.0),
    ('... to get the final answer of 2.\nThis is the result of step 2.\n"The answer is 2', CUT, "2", None, 0.0),
    ("Original answer: N = 30 + 3 = 33\n\nOriginal answer: 22 = 11\n\nOriginal answer: 10 = 10 is not a valid answer "
     "you provided", CUT, "11", None, 0.0),
    ("3. The only remaining answer is 2. The answer is 2 can be interpreted differently. ... The answer is ", CUT, "2",
     "2", 1.0),
    ("The original answer is 12 litres, which is incorrect. The correct answer should be 3 litres. To make the problem "
     "clearer, we should add 1 to the total amount of juice that was shared.\n\n1 + 2 = 3.", CUT, "33/2", "3", 0.0),
    ("Ivo buys 27 apples in 3 boxes, ...\n\nOriginal response: The answer is 78.\n\nImproved answer: 78 = 27 x 3\n"
     "Same problem: Ivo buys 27 x 3 = 78 apples.\nImpro", CUT, "27", "78", 0.0),
    ("Here's a summary of the problems after each answer:\n- 1. Find the number of stickers given to Ava: 4 (C) - 3 "
     "(Extra) = 1.", STOP, "4", "1", 0.0),
    # the question's calculation restated, not worked: its last operand is no answer, even where it is the
    # result (8 - 4, 0 + 7, 2 - 1); a result beside the restated calculation is (real rows: SCoRe rollouts)
    ("8 - 4", STOP, "4", None, 0.0),
    ("What is 0 + 7? 0 + 7", STOP, "7", None, 0.0),
    ("2 - 1 equals N, which is the number of days in a month.", STOP, "1", None, 0.0),  # real
    ('9 is the original number. So, 9 + 0 is indeed "The answer is N.", where N represents the original number.',
     STOP, "9", None, 0.0),  # real
    ("I get 2*3", STOP, "3", None, 0.0),
    ("So 9 + 0 is 9", STOP, "9", "9", 1.0),
    ("6 - 0 = 6. The complete solution", STOP, "6", "6", 1.0),
    ("The total: 12 apples (5 + 7)", STOP, "12", "12", 1.0),
    ("2 - 7 is equal to 2 - 7, which is 1.", STOP, "-5", "1", 0.0),  # real
    ("3 - -2 gives 5", STOP, "5", "5", 1.0),
]


@pytest.mark.parametrize("text,finish,reference,answer,score", TABLE)
def test_phrasings(text, finish, reference, answer, score):
    got, found = score_math(text, reference, finish=finish)
    assert (found.answer, got) == (answer, score), found.rule


def test_table_is_broad():
    assert len(TABLE) >= 60
    assert sum(1 for row in TABLE if row[1] == CUT) >= 8


def test_rule_is_named():
    assert extract("The answer is 12 marbles.").rule == "answer_is"
    assert extract("\\boxed{12}").rule == "boxed"
    assert extract("## 12 ##").rule == "scl_hashes"
    assert extract("The correct total is 9.").rule == "correct_is"
    assert extract("So 5 + 7 = 12").rule == "equals_end"
    assert extract("Therefore, Ava has 12 apples after 5 more.").rule == "therefore"
    assert extract("I got 12 apples").rule == "last_number"
    assert extract("5 + 7 = 12 and", finish="length").rule.startswith("none: truncated (finish=length)")
    assert extract("nothing").rule == "none: no number in the response"
    assert set(EXPLICIT_RULES) >= {"boxed", "scl_hashes", "answer_is", "correct_is"}


def test_docstring_examples():
    import doctest

    import judges.answers

    failed, tried = doctest.testmod(judges.answers)
    assert failed == 0 and tried >= 4


def test_long_responses_stay_cheap():
    """A response with no line breaks, or with braces that never close, is not read quadratically."""
    import time

    for text in ("The answer is 12. " * 3000, "\\boxed{" * 2000, "5 + 7 = 12 and " * 4000,
                 "\\begin{pmatrix} 1 " * 3000, "The answer is " + "(" * 5000, "\\boxed{(" * 3000):
        start = time.perf_counter()
        extract(text)
        assert time.perf_counter() - start < 5  # the quadratic version took ~15 s on the first


# --- hand-checked outputs of the default model ---------------------------------------------------

HAND_CHECKED = Path(__file__).parent / "data" / "hand_checked.jsonl"
# Measured (benchmarks/verifier_agreement.py): 415/416 attempts, 207/208 rows; the verifier this
# replaced agreed on 397/416 attempts and 191/208 rows.
MIN_AGREEMENT = 0.99


def test_agreement_with_hand_labels():
    """Each attempt's 0/1 score agrees with a person's reading of what it commits to.

    The labels are 208 rows (416 attempts) of the default model on the built-in arithmetic prompts:
    the final answer each response commits to (null: none; a response cut off by max_tokens only
    by an explicit statement made before the cut) and whether it equals the reference.
    """
    labels = [json.loads(line) for line in HAND_CHECKED.read_text().splitlines() if line.strip()]
    assert len(labels) >= 400 and {lab["attempt"] for lab in labels} == {1, 2}
    assert sum(lab["label_correct"] for lab in labels) >= 20  # not only wrong answers
    rows: dict[tuple[str, int], bool] = {}
    agree = 0
    for lab in labels:
        ok = (score_math(lab["text"], lab["reference"], finish=lab["finish"])[0] == 1.0) == lab["label_correct"]
        agree += ok
        key = (lab["prompt_id"], lab["sample_idx"])
        rows[key] = rows.get(key, True) and ok
    assert agree / len(labels) >= MIN_AGREEMENT, f"{agree}/{len(labels)}"
    assert sum(rows.values()) / len(rows) >= MIN_AGREEMENT, f"{sum(rows.values())}/{len(rows)} rows"


# Every attempt the verifier credited in a 24-step SCoRe run of the default model (its rollout files,
# copied as generated): (response, finish, reference, credited with explicit_answers_only). A person
# reads the False ones as no answer at all: the closing-sentence rule paid for echoed numbers.
SCORE_ROLLOUTS = [
    ("You are correct in subtracting 2 from 2, but this should be 1 in conjunction with your initial statement. "
     "Begin by adding the original value to Kemi (6) so you have now Kemi left. 6 plus 2 equals N.", STOP, "2", False),
    ("The answer is N because it required one item and 9 children followed by a remainder of 1 with N (the media). "
     "So, 9 (using the media) + N = the N number of marbles in the answer. It might be not 9.", STOP, "9", False),
    ("The answer is N, which is 4 + 3 - G, and your step of 1 is correct and blue male cant indeed have 4 shells "
     "left. Here is the 1 and blue male solution unchanged.", STOP, "1", False),
    ('The answer is N. \n\nWhich is indeed "The answer is N. "\nBased on the arithmetic progression, number of '
     "books in 5 is 4. 4*5 is 20 books.", STOP, "20", False),
    ('"SIGNIFICANT STEP SCALED BY SHERANAN"\nSolving an equation: 19 + 1 = 20 bags\nEach friend gets 2 bags of '
     "shells as answer is given but handselupable.", STOP, "2", False),
    # right working, but no statement of the answer: the strict reward asks the policy to state it
    ("Let's break it down step by step:\n\n1. Elda, the girl, has 6 apples.\n2. Ela gives Eli 3 more, so Ela now "
     "has 6 + 3 = 9 apples.\n\nThe answer is N.", STOP, "9", False),
    ("The Vikings Browns place 2 boxes of 9 apples on each of their shelves. So, with 2 boxes, Ivo bought "
     "2 x 9 = 18 apples.", STOP, "18", False),
    ("To find out how much money Ben buys, you'll need to multiply 9 x 3, which is 27 shells. Offer the answer "
     "with no spaces, round the result to the nearest whole number.", STOP, "27", False),
    # explicit statements still count, also before a cut
    ('"The answer is 2 * 5 = 10"', STOP, "10", True),
    ("10.\n\nDara has 10 coins, plus Lior with Dara = 2 coins. Therefore, the total amount of Dara's coins now is "
     "10 coins, plus Dara's coins, which is 10 coins. \n\nThe answer is 10. That", CUT, "10", True),
    ("10. The total amount of Dara's coins now is 10, the previous answer is 10, and the answer is 10.\n\n"
     "Polymate Hai Gai.", STOP, "10", True),
]


@pytest.mark.parametrize(("response", "finish", "reference", "credited"), SCORE_ROLLOUTS)
def test_explicit_answers_only_on_rollouts_the_closing_rule_credited(response, finish, reference, credited):
    assert score_math(response, reference, finish=finish)[0] == 1.0  # what the reward said in that run
    score, found = score_math(response, reference, finish=finish, explicit_only=True)
    assert score == (1.0 if credited else 0.0), found
    assert (found.rule in EXPLICIT_RULES) == credited


def test_explicit_answers_only_against_hand_labels():
    """With explicit answers only, no attempt a person reads as wrong or answerless is credited, and most
    right ones still are (measured: 17 of the 25 right attempts; the 8 others end on a bare calculation)."""
    labels = [json.loads(line) for line in HAND_CHECKED.read_text().splitlines() if line.strip()]
    credited = [score_math(lab["text"], lab["reference"], finish=lab["finish"], explicit_only=True)[0] == 1.0
                for lab in labels]
    assert not any(c and not lab["label_correct"] for c, lab in zip(credited, labels, strict=True))
    right = sum(lab["label_correct"] for lab in labels)
    assert sum(credited) >= 0.6 * right, f"{sum(credited)} of {right}"
