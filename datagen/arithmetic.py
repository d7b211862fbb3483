"""The built-in arithmetic task ladder: problems with exact answers, from bare sums to two-step stories.

A model learns from its own samples only where it is sometimes right: a prompt whose samples are
all right or all wrong gives no preference pair and no policy gradient. The levels span what small
and large models can do, so ``selfcorrect calibrate`` can show where a model stands and a run can
train where it has signal:

=================  ===========================================================================
``add_sub_1digit``  "What is 6 + 3?", "What is 7 - 9?": single-digit operands, + and -
``add_sub_2digit``  "What is 47 + 38?", "What is 62 - 85?": two-digit operands, + and -
``word_1step``      one-step word problems (add, take away, multiply, share; the default)
``word_2step``      two-step word problems (two operations on the story's numbers)
=================  ===========================================================================

Each level yields problems in a fixed pseudo-random order (seeded), and puts each in the ``train``
or ``test`` split by a hash of its *split key* alone, so the splits never share one. The key is the
problem's text, except where one calculation is asked in several phrasings (``add_sub_1digit``):
there it is the calculation, so no test calculation is ever trained on in another wording.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

# Every level asks for an explicit final statement: the verifier reads it first, and SCoRe's reward
# (explicit_answers_only) reads nothing else.
_STEP_BY_STEP = 'Solve it step by step, then give the final answer as "The answer is N."'
# Without "where N is the number" the default model answers a bare sum with the literal "The answer is
# N." a third of the time (greedy, 120 single-digit sums; 7% with it, and more right at attempt 1).
_ANSWER_ONLY = 'Give the final answer as "The answer is N.", where N is the number.'

_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemi", "Lior"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "coins", "cards", "shells", "books"]


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # exact: an integer, or a reduced fraction
    key: str  # what decides the split: the question, or the calculation it asks


@dataclass(frozen=True)
class Level:
    name: str
    summary: str
    problems: Callable[[random.Random, int], Iterator[Problem]]  # (rng, max_operand) -> problems, in order
    test_share: int  # in 256ths: the share of split keys that go to ``test``
    instruction: str  # appended to the question
    word: bool = False  # reads prompts.max_operand


def _exact(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else str(value)


# --- bare sums ------------------------------------------------------------------------------------

_SUM_PHRASES = (
    "What is {a} {op} {b}?",
    "Calculate {a} {op} {b}.",
    "{a} {op} {b} = ?",
    "Compute {a} {op} {b}.",
    "Find {a} {op} {b}.",
)


def _add_sub(lo: int, hi: int, phrasings: tuple[str, ...]) -> Callable[[random.Random, int], Iterator[Problem]]:
    """Every a + b and a - b with lo <= a, b <= hi, each in every phrasing, in a seeded order."""

    def problems(rng: random.Random, max_operand: int) -> Iterator[Problem]:
        facts = [(a, op, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1) for op in "+-"]
        items = [(f, p) for f in facts for p in phrasings]
        rng.shuffle(items)
        for fact, phrase in items:
            yield _sum_problem(fact, phrase)

    return problems


def _sum_problem(fact: tuple[int, str, int], phrase: str) -> Problem:
    a, op, b = fact
    calc = f"{a} {op} {b}"
    return Problem(phrase.format(a=a, op=op, b=b), str(a + b if op == "+" else a - b), calc)


# --- word problems ----------------------------------------------------------------------------------


def _one_step(rng: random.Random, top: int) -> tuple[str, str]:
    """One word problem and its exact answer: the generator of the original built-in set, unchanged."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    a, b, c = rng.randint(2, top), rng.randint(2, top), rng.randint(2, min(12, top))
    if kind == 0:
        text = f"{name} has {a} {item} and {other} gives {name} {b} more. How many {item} does {name} have now?"
        answer: Fraction | int = a + b
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        text = f"{name} had {a} {item} and gave {b} to {other}. How many {item} does {name} have left?"
        answer = a - b
    elif kind == 2:
        text = f"{name} buys {c} boxes with {a} {item} in each box. How many {item} does {name} buy?"
        answer = a * c
    elif kind == 3:
        total = a * c
        text = f"{name} shares {total} {item} equally among {c} friends. How many {item} does each friend get?"
        answer = a
    else:
        text = (
            f"{name} pours {a} litres of juice and {c} bottles of {b} litres each into a tank, then "
            f"drinks {c} litres. The rest is shared equally between two jugs. How many litres are in each jug?"
        )
        answer = Fraction(a + c * b - c, 2)
    return text, _exact(answer)


def _two_step(rng: random.Random, top: int) -> tuple[str, str]:
    """A word problem that needs two operations on its numbers, and its exact answer."""
    name, other, third = rng.sample(_NAMES, 3)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    a, b, c = rng.randint(2, top), rng.randint(2, top), rng.randint(2, min(12, top))
    if kind == 0:
        c = rng.randint(2, a + b)
        text = (f"{name} has {a} {item}. {other} gives {name} {b} more, then {name} gives {c} to {third}. "
                f"How many {item} does {name} have now?")  # fmt: skip
        answer = a + b - c
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        text = (f"{name} had {a} {item}, gave {b} to {other}, then bought {c} more. "
                f"How many {item} does {name} have now?")  # fmt: skip
        answer = a - b + c
    elif kind == 2:
        text = (f"{name} has {b} {item} and buys {c} boxes with {a} {item} in each box. "
                f"How many {item} does {name} have now?")  # fmt: skip
        answer = b + a * c
    elif kind == 3:
        b = rng.randint(1, a * c - 1)
        text = (f"{name} has {c} bags with {a} {item} in each bag and gives {b} {item} to {other}. "
                f"How many {item} does {name} have left?")  # fmt: skip
        answer = a * c - b
    else:
        text = (f"{name} shares {a * c} {item} equally among {c} friends, and {other} gives each friend "
                f"{b} more. How many {item} does each friend have now?")  # fmt: skip
        answer = a + b
    return text, _exact(answer)


Story = Callable[[random.Random, int], tuple[str, str]]


def _stories(make: Story) -> Callable[[random.Random, int], Iterator[Problem]]:
    def problems(rng: random.Random, max_operand: int) -> Iterator[Problem]:
        while True:
            text, answer = make(rng, max_operand)
            yield Problem(text, answer, text)

    return problems


LEVELS: dict[str, Level] = {
    level.name: level
    for level in (
        Level(
            "add_sub_1digit",
            "single-digit + and -",
            _add_sub(0, 9, _SUM_PHRASES),
            test_share=128,  # half: 200 calculations in 5 wordings, and an eval needs hundreds of problems
            instruction=_ANSWER_ONLY,
        ),
        Level(
            "add_sub_2digit",
            "two-digit + and -",
            _add_sub(10, 99, _SUM_PHRASES[:1]),
            test_share=51,
            instruction=_ANSWER_ONLY,
        ),
        Level("word_1step", "one-step word problems", _stories(_one_step), 51, _STEP_BY_STEP, word=True),
        Level("word_2step", "two-step word problems", _stories(_two_step), 51, _STEP_BY_STEP, word=True),
    )
}
DEFAULT_LEVEL = "word_1step"


def split_of(key: str, test_share: int) -> str:
    """``test`` for about test_share/256 of the keys, ``train`` for the rest, by the key's hash alone."""
    return "test" if hashlib.sha256(key.encode()).digest()[0] < test_share else "train"


def prompt_id(level: str, split: str, question: str) -> str:
    digest = hashlib.sha256(question.encode()).hexdigest()[:12]
    # the original set's ids are kept, so runs made before the ladder keep their rows
    return f"arith-{split}-{digest}" if level == DEFAULT_LEVEL else f"{level}-{split}-{digest}"
