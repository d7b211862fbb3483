"""Which final answer a math response commits to, and by which rule it was found.

Models state answers in many ways ("The answer is 12 marbles.", "**12**", ``\\boxed{12}``,
``$\\frac{3}{4}$``, SCL's ``## 12 ##``, GSM8K's ``#### 12``, "\\$1,000") and change their minds
mid-text ("The answer is 12. Wait, 7+6 is 13, so the answer is 13."). The rules, in order of trust:

1. *explicit* final statements — ``\\boxed{}``/``\\fbox{}``, ``## A ##``, ``#### A``, "answer is /
   answer: / final answer / correct answer is", "the correct (final, right ...) total/result/number
   is", "..., which is the answer". The last one in the text wins; one that holds no answer
   ("Answer: I added wrongly", "## Step 1 ##", "#### Step 1", "The answer is N") is skipped, and so
   is one about an earlier answer ("my previous answer is 12"). One that takes the answer back ("the
   answer is not 12", "... is incorrect", "the answer: 20 is not equal to ...", "3, or possibly 5")
   leaves none standing: only what follows it counts. Boxes joined by "and", "or" or commas are
   one answer, a list.
2. with none of those: the last sentence that holds a value — the value after its last "=" (none
   when the equation ends in a letter: "4 + 3 = N"), else the first value of a conclusion
   ("Therefore, Ava has 12 apples after ..."), else its last value; read whole (a fraction, a
   tuple, a matrix, ``6.02 × 10^23``), with the values listed beside it ("2 and 3", "$x = 2$ or
   $x = 3$"), and as its formula (``$...$``) when it stands in one. A number that is an operand of
   a calculation left unworked ("8 - 4", "2 - 1 equals N") is no result, so it is passed over; a
   sentence with nothing else holds no answer: echoing the question's sum would otherwise be paid
   whenever its last operand happens to be the result (8 - 4, 0 + 7).

What the answer of a statement is, once found, ``judges.answer_forms`` reads: tuples, intervals,
sets, matrices, relations, words and choice letters, number forms, units and Markdown left out.

A response cut off by the token limit may stop in the middle of a calculation, so its last number
means nothing: only an explicit statement that ended before the cut counts.

``explicit_only`` keeps rule 1 alone. Rule 2 reads intent into prose, which is right for measuring a
model but pays for text that merely ends on a number ("6 plus 2 equals N." for the reference 2): a
policy trained by RL on such rewards learns to echo the question's numbers. As a reward it is the
strict form of the usual final-answer check (veRL's GSM8K ``strict``, SCoRe's and Minerva's "Final
Answer: The final answer is ..."), and the prompts ask for an explicit statement anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from judges.answer_forms import WITHDRAWN, balanced_end, clean_answer

#: finish reasons of a response that did not end on its own (vLLM: "length"; the engine: "context")
TRUNCATED_FINISH = frozenset({"length", "context", "abort"})

EXPLICIT_RULES = ("boxed", "scl_hashes", "gsm8k_hashes", "answer_is", "correct_is", "is_the_answer")


@dataclass(frozen=True)
class Extraction:
    """A response's final answer (None: it gives none) and the rule that found it, or why none."""

    answer: str | None
    rule: str


# --- text normalisation --------------------------------------------------------------------------

# GSM8K's final-answer line, "#### 72": not a Markdown heading ("#### Step 1", "#### 1. Set-up")
_GSM8K_LINE = r"####[ \t]*(?![ \t]*\d+[.)][ \t]+\S)(?=[-+$\\\d.(\[])"
_GSM8K = re.compile(r"(?m)^[ \t]*" + _GSM8K_LINE + r"([^\n]*?)[ \t]*$")
_HEADING = re.compile(r"(?m)^[ \t]*(?!" + _GSM8K_LINE + r")#{1,6}[ \t]+(?!.*##[ \t]*$)")


def normalise(text: str) -> str:
    """Markdown and typography a reader ignores: emphasis, headings, LaTeX delimiters and spacing,
    odd minus signs.

    SCL's ``## A ##`` lines and GSM8K's ``#### A`` lines are kept; other heading marks are dropped
    ("### Final answer: 12"). A display formula set on lines of its own becomes one line.
    """
    text = text.replace("\u2212", "-").replace("\u2013", "-").replace("\r\n", "\n")
    text = re.sub(r"(?<![\w*])\*\*|\*\*(?![\w*])|(?<!\w)__|__(?!\w)", "", text)  # **bold**, not 2**3
    text = re.sub(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])", r"\1", text)  # *12*
    text = _HEADING.sub("", text)
    text = text.replace("\\$", "").replace("\\!", "").replace("{,}", ",")  # \$1{,}000\!000
    text = re.sub(r"(?<=\d)\\,(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"(\\[A-Za-z]+)(?=\d)", r"\1 ", text)  # \approx11, \sqrt3: the number on its own
    text = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)\s*(?=[()\[\]|]|\\[{}|])", "", text)
    text = text.replace("\\(", "$").replace("\\)", "$").replace("\\[", "$").replace("\\]", "$")
    text = text.replace("$$", "$")
    return re.sub(r"\$[ \t]*\n[^$]{1,2000}?\n[ \t]*\$", lambda m: m.group().replace("\n", " "), text)


# --- explicit final statements -------------------------------------------------------------------

# An answer talked about rather than given: "my previous answer is 12 (wrong)".
_EARLIER = re.compile(r"\b(?:previous|original|earlier|initial|first|old|wrong|incorrect|above|your)\W*$", re.I)
_ANSWER_IS = re.compile(
    r"\banswer\b(?:\s+(?:to|for|of)\s+[^.\n:=]{1,60}?)?"
    r"\s*(?:\bis\b|:|=|\bwould be\b|\bshould be\b|\bmust be\b|\bwill be\b|(?<=final answer)[ \t]*(?=\n))",
    re.IGNORECASE,
)
_CORRECT_IS = re.compile(
    r"\b(?:correct|right|final|actual|corrected|updated|true)\s+(?:total|result|sum|amount|number|count|value)"
    r"(?:\s+of\s+[^.\n=:\d]{1,40}?)?\s*(?:\bis\b|:|=|\bwould be\b|\bshould be\b|\bwill be\b)",
    re.IGNORECASE,
)
_IS_THE_ANSWER = re.compile(r"\bis\s+(?:the|my|our)\s+(?:final\s+|correct\s+|right\s+)?answer\b", re.IGNORECASE)
_SCL = re.compile(r"##[ \t]*([^#\n]+?)[ \t]*##")
# "the answer: 20 is not equal to 20.375", "the answer is not odd", "the answer is incorrect" (and
# "the answer is 3 or maybe 5"): a statement that takes an answer back holds none, and no earlier
# statement stands after it.
_REFUTED = re.compile(r"(?:is|was|are)\s+(?:not\b|wrong|incorrect)|isn't|wasn't", re.IGNORECASE)
_RETRACTS = re.compile(r"\W*(?:(?:actually|still|clearly|definitely|then|so|also)\s+)*(?:not|incorrect|wrong)\b", re.I)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What may stand between the boxes of one answer: "\boxed{2} and \boxed{3}", "$x = \boxed{2}$ or $x = \boxed{3}$"
_BOX_GAP = re.compile(
    r"[\s$,;]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\q?quad)[\s$,;]*)?(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?[\s$]*"
)


# An answer is short: a statement is read this far (a response with no line breaks stays linear).
_STATEMENT_CHARS = 200


def _line_after(text: str, at: int, head: int) -> str:
    """The statement after a final-statement phrase that ends at ``at`` and began at ``head``.

    The rest of the line; or, for a phrase that is a line of its own ("Final answer:", "**Answer**")
    or one followed by a display formula, the next line that is not empty.
    """
    end = text.find("\n", at)
    first = text[at : end if end >= 0 else len(text)][:_STATEMENT_CHARS]
    if first.strip() or end < 0:
        return first
    line_start = text.rfind("\n", 0, head) + 1
    more = text[end : end + 4 * _STATEMENT_CHARS].strip()
    if (head - line_start > 12 and not more.startswith("$")) or not more:
        return ""
    return more.split("\n", 1)[0][: 2 * _STATEMENT_CHARS]


class Statement(NamedTuple):
    """An explicit final statement: where it starts and where its line ends, whether something
    follows its answer (so a cut at the end of the text did not shorten it), the rule that found
    it, and its answer (None: it takes the answer back)."""

    start: int
    end: int
    closed: bool
    rule: str
    answer: str | None


def _boxed(text: str) -> list[Statement]:
    r"""The answers in ``\boxed{}``; boxes joined by "and", "or" or commas are one answer (a list),
    and a list with a box that never closes (a cut-off response) or holds nothing is none."""
    boxes = []
    for m in _BOX.finditer(text):
        end = balanced_end(text, m.end() - 1)
        boxes.append((m.start(), end, clean_answer(text[m.end() : end - 1]) if end > 0 else None))
    runs: list[list[tuple[int, int, str | None]]] = []
    for box in boxes:
        if runs and runs[-1][-1][1] > 0 and _BOX_GAP.fullmatch(text, runs[-1][-1][1], box[0]):
            runs[-1].append(box)
        else:
            runs.append([box])
    found = []
    for run in runs:
        answers = [answer for _, end, answer in run if answer and end > 0]
        if len(answers) == len(run):
            found.append(Statement(run[0][0], run[-1][1], True, "boxed", ", ".join(dict.fromkeys(answers))))
    return found


def _closed_after(text: str, at: int, line: str, answer: str) -> bool:
    """Whether something follows the answer of ``line`` (which starts at ``at``): a closing brace, a
    unit, a full stop. A response cut off right after "The answer is 1" may have meant 12."""
    last_digit = max((i for i, c in enumerate(line) if c.isdigit()), default=-1)
    if last_digit >= 0:
        return bool(re.search(r"[^\s+\-*/×÷=^(]", text[at + last_digit + 1 :]))
    last = answer.rsplit(",", 1)[-1].strip().lower()  # a word: "The answer is odd" may have been "oddly ..."
    k = line.lower().rfind(last)
    return bool(re.search(r"\S", text[at + (k + len(last) if k >= 0 else len(line)) :]))


def _explicit(text: str) -> list[Statement]:
    """Every explicit final statement that holds an answer or takes one back."""
    found = _boxed(text)
    for m in _SCL.finditer(text):
        answer = clean_answer(m.group(1))
        if answer:
            found.append(Statement(m.start(), m.end(), True, "scl_hashes", answer))
    for m in _GSM8K.finditer(text):
        answer = clean_answer(m.group(1))
        if answer:
            found.append(Statement(m.start(), m.end(), m.end() < len(text), "gsm8k_hashes", answer))
    for rule, pattern in (("answer_is", _ANSWER_IS), ("correct_is", _CORRECT_IS)):
        for m in pattern.finditer(text):
            if _EARLIER.search(text[max(0, m.start() - 40) : m.start()]):
                continue
            line = _line_after(text, m.end(), m.start())
            at = text.find(line, m.end())
            prose = _WORD.search(line)
            answer = clean_answer(line)
            if answer == WITHDRAWN or _RETRACTS.match(line) or (prose and _REFUTED.match(line, prose.start())):
                found.append(Statement(m.start(), at + len(line), True, rule, None))
            elif answer:
                found.append(Statement(m.start(), at + len(line), _closed_after(text, at, line, answer), rule, answer))
    for m in _IS_THE_ANSWER.finditer(text):
        # "... = 33, which is the answer": the last value of the sentence so far
        before = re.split(r"(?<!\d)\.(?!\d)|\n", text[max(0, m.start() - _STATEMENT_CHARS) : m.start()])[-1]
        tokens = _tokens(before)
        if tokens:
            answer = _formula_answer(before, tokens[-1]) or _token_list(before, tokens, len(tokens) - 1)
            found.append(Statement(m.start(), m.end(), True, "is_the_answer", answer))
    return found


# --- implicit: the closing sentence --------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|[!?](?!=)|\n|\.(?=\s|$)")
_CONCLUSION = re.compile(
    r"^\W*(?:therefore|thus|so|hence|in total|altogether|in the end|finally|overall)\b", re.IGNORECASE
)
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.])-)?(?<![\w.])"  # a minus sign only where it is not subtraction ("7-3")
    r"(?:[1-9]\d{0,2}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d.,])|\d+|(?=\.\d))"
    r"(?:\.\d+)?(?:/\d+)?%?"
)
_ITEM = (
    r"-?\s*(?:\d+(?:\.\d+)?(?:/\d+)?|\.\d+|\\infty|\\pi|\\frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
    r"|(?:\d+\s*)?\\sqrt\s*(?:\{[^{}]*\}|\d+))"
)
# A value of the closing sentence is read whole: "\frac{3}{4}" is not its denominator, "(2, -3)" not -3,
# "6.02 × 10^23" not 23 (the first pattern that matches at a place wins, so the longer ones come first).
_VALUES = [
    re.compile(r"\\begin\{([a-zA-Z]*matrix|array)\}.{0,1000}?\\end\{\1\}", re.DOTALL),
    re.compile(rf"[(\[]\s*{_ITEM}(?:\s*,\s*{_ITEM})+\s*[)\]]|\\\{{\s*{_ITEM}(?:\s*,\s*{_ITEM})*\s*\\\}}"),
    re.compile(r"-?\d+(?:\.\d+)?\s*(?:\\times|\\cdot|×|x|\*)\s*10\s*\^\s*(?:\{\s*[-+]?\d+\s*\}|[-+]?\d+)"),
    re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?[eE][-+]?\d+(?!\w|\.\d)"),
    re.compile(r"-?(?:\d+(?:\.\d+)?\s*)?\\sqrt\s*(?:\{[^{}]*\}|\d+)"),
    re.compile(r"-?\\[dtc]?frac\s*(?:\{[^{}]*\}|\d)\s*(?:\{[^{}]*\}|\d)"),
    _NUMBER,
]
# Between the values of a list: "2 and 3", "x = 2 or x = 3", "1, 2, and 3"
_LIST_GAP = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|and\s+|or\s+)(?:[A-Za-z]\s*=\s*)?")
_FORMULA_GAP = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|and\s+|or\s+)")


def _tokens(s: str) -> list[re.Match[str]]:
    """The values in ``s``, left to right, none inside another."""
    found = sorted(
        (m for pattern in _VALUES for m in pattern.finditer(s) if re.search(r"\d", m.group())),
        key=lambda m: (m.start(), -m.end()),
    )
    out: list[re.Match[str]] = []
    for m in found:
        if not out or m.start() >= out[-1].end():
            out.append(m)
    return out


def _plain(value: str) -> str:
    if _NUMBER.fullmatch(value):
        return value.replace(",", "").replace(" ", "").replace("\u00a0", "").replace("\u202f", "")
    return clean_answer(value) or value


def _listed(text: str, spans: list[re.Match[str]], k: int, gap: re.Pattern[str]) -> list[re.Match[str]]:
    """``spans[k]`` and its neighbours that ``gap`` joins to it in ``text`` ("2 and 3", "$x = 2$ or $x = 3$")."""
    lo = hi = k
    while lo > 0 and gap.fullmatch(text, spans[lo - 1].end(), spans[lo].start()):
        lo -= 1
    while hi + 1 < len(spans) and gap.fullmatch(text, spans[hi].end(), spans[hi + 1].start()):
        hi += 1
    return spans[lo : hi + 1]


def _token_list(sentence: str, tokens: list[re.Match[str]], k: int) -> str:
    """Value ``k`` of the sentence, with the values it is listed with ("2 and 3", "x = 2 or x = 3")."""
    return ", ".join(dict.fromkeys(_plain(t.group()) for t in _listed(sentence, tokens, k, _LIST_GAP)))


def _formula_answer(sentence: str, value: re.Match[str]) -> str | None:
    """The answer of the formula (``$...$``) that holds ``value``, with the formulas listed beside it."""
    formulas = list(re.finditer(r"\$([^$]+)\$", sentence))
    for k, formula in enumerate(formulas):
        if formula.start() <= value.start() < formula.end():
            return clean_answer(", ".join(f.group(1) for f in _listed(sentence, formulas, k, _FORMULA_GAP)))
    return None


# A value with an arithmetic operator between it and another value: an operand, not a result
_OPERAND_BEFORE = re.compile(r"[\d)]\s*(?:[-+*/×÷]|\\times|\\cdot)\s*$")
_OPERAND_AFTER = re.compile(r"\s*(?:[-+*/×÷]|\\times|\\cdot)\s*[\d(]")


def _operand(sentence: str, token: re.Match[str]) -> bool:
    """Whether ``token`` is an operand of a calculation left unworked ("8 - 4", "2 - 1 equals N").

    >>> [_operand("8 - 4", t) for t in _tokens("8 - 4")], _operand("so 8 - 4 is 4", _tokens("so 8 - 4 is 4")[2])
    ([True, True], False)
    """
    start = token.start()  # a window before it: a search from the sentence's start would be quadratic
    before = _OPERAND_BEFORE.search(sentence, max(0, start - 24), start)
    return bool(before or _OPERAND_AFTER.match(sentence, token.end()))


def _closing(text: str) -> Extraction | None:
    """The answer of the last sentence that holds a value (rule 2 of the module docstring)."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    for sentence in reversed(pieces):
        tokens = _tokens(sentence)
        if not tokens:
            continue
        eq = sentence.rfind("=")
        after = [k for k, t in enumerate(tokens) if t.start() > eq] if eq >= 0 else []
        results = [] if after else [k for k, t in enumerate(tokens) if not _operand(sentence, t)]
        if after:
            k, rule = after[0], "equals_end"
        elif eq >= 0 and re.search(r"[A-Za-z]", sentence[eq:]):
            return Extraction(None, "none: the closing equation has no value (\"4 + 3 = N\")")
        elif not results:
            return Extraction(None, "none: the closing sentence only restates a calculation (\"8 - 4\")")
        elif _CONCLUSION.search(sentence):
            k, rule = results[0], "therefore"
        else:
            k, rule = results[-1], "last_number"
        in_formula = _formula_answer(sentence, tokens[k])
        if in_formula:
            return Extraction(in_formula, "inline_math" if rule == "last_number" else rule)
        return Extraction(_token_list(sentence, tokens, k), rule)
    return None


# --- entry points --------------------------------------------------------------------------------


def extract(text: str | None, finish: str | None = None, explicit_only: bool = False) -> Extraction:
    """The final answer ``text`` commits to, and the rule that found it (or why there is none).

    ``finish`` is the response's finish reason; a truncated response (``TRUNCATED_FINISH``) is held
    to its explicit statements that ended before the cut, and so is every response with
    ``explicit_only`` (the module docstring says why).

    >>> extract("The answer is 12. Wait, 7+6 is 13, so the answer is 13.")
    Extraction(answer='13', rule='answer_is')
    >>> extract("First, 5 + 7 = 12. Then 12 - 3", finish="length")
    Extraction(answer=None, rule='none: truncated (finish=length) before any explicit final answer')
    >>> extract("So 2 x 9 = 18 apples.", explicit_only=True)
    Extraction(answer=None, rule='none: no explicit final answer (explicit_answers_only)')
    >>> extract("Natalia sold 48 + 24 = 72 clips.\\n#### 72", explicit_only=True)
    Extraction(answer='72', rule='gsm8k_hashes')
    """
    if not text or not text.strip():
        return Extraction(None, "none: empty response")
    truncated = finish in TRUNCATED_FINISH
    norm = normalise(text)
    # the last characters may be a number cut in half ("The answer is 1" of "12")
    statements = [s for s in _explicit(norm) if s.closed or not truncated]
    last = max(statements, key=lambda s: s.start, default=None)
    if last and last.answer is not None:
        return Extraction(last.answer, last.rule)
    if truncated:
        return Extraction(None, f"none: truncated (finish={finish}) before any explicit final answer")
    if explicit_only:
        why = "the last explicit statement takes the answer back" if last else "no explicit final answer"
        return Extraction(None, f"none: {why} (explicit_answers_only)")
    if last:  # after a statement that takes the answer back, only what follows it may state another
        return _closing(norm[last.end :]) or Extraction(None, "none: the last explicit statement takes the answer back")
    return _closing(norm) or Extraction(None, "none: no number in the response")


def reference_answer(reference: str) -> str:
    r"""The answer a reference states, read like a response's: a bare answer in any form ("12",
    "\$18", ``\text{(B)}``, ``[0, 5)``, ``x \geq 3``), or a worked solution's last explicit statement
    (``\boxed{}``, GSM8K's ``#### 72``). Unreadable references are compared as written.

    >>> reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72")
    '72'
    >>> reference_answer("\\$18.00")
    '18.00'
    """
    norm = normalise(reference)
    last = max(_explicit(norm), key=lambda s: s.start, default=None)
    if last and last.answer is not None:
        return last.answer
    return clean_answer(norm, max_words=6) or reference.strip()
