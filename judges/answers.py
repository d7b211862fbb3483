"""Which final answer a math response commits to, and by which rule it was found.

Models state answers in many ways ("The answer is 12 marbles.", "**12**", ``\\boxed{12}``,
``$\\frac{3}{4}$``, SCL's ``## 12 ##``, "\\$1,000") and change their minds mid-text ("The answer is
12. Wait, 7+6 is 13, so the answer is 13."). The rules, in order of trust:

1. *explicit* final statements — ``\\boxed{}``/``\\fbox{}``, ``## A ##``, "answer is / answer: /
   final answer / correct answer is", "the correct (final, right ...) total/result/number is",
   "..., which is the answer". The last one in the text wins; one that holds no answer ("Answer: I
   added wrongly", "## Step 1 ##", "The answer is N") is skipped, and so is one about an earlier
   answer ("my previous answer is 12") or a refuted one ("the answer: 20 is not equal to ...").
2. with none of those: the last sentence that holds a number — the number after its last "=" (none
   when the equation ends in a letter: "4 + 3 = N"), else the first number of a conclusion
   ("Therefore, Ava has 12 apples after ..."), else the formula (``$...$``) that holds its last
   number, else its last number.

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

#: finish reasons of a response that did not end on its own (vLLM: "length"; the engine: "context")
TRUNCATED_FINISH = frozenset({"length", "context", "abort"})

EXPLICIT_RULES = ("boxed", "scl_hashes", "answer_is", "correct_is", "is_the_answer")


@dataclass(frozen=True)
class Extraction:
    """A response's final answer (None: it gives none) and the rule that found it, or why none."""

    answer: str | None
    rule: str


# --- text normalisation --------------------------------------------------------------------------

_UNWRAP = ("boxed", "fbox", "text", "textbf", "textit", "mathrm", "mathbf", "mbox", "emph", "displaystyle")
# Words that belong to a formula, not to prose: cutting "12 apples" at "apples" must not cut "\pi".
_MATH_WORDS = {"sqrt", "pi", "infty", "inf", "sin", "cos", "tan", "log", "ln", "exp", "frac", "dfrac", "tfrac"}
# Words a statement may put before the answer itself ("The answer is therefore 12").
_FILLER = {
    "therefore", "thus", "so", "then", "now", "still", "actually", "indeed", "clearly", "simply", "just",
    "exactly", "equal", "equals", "to", "be", "about", "approximately", "roughly", "of", "course", "definitely",
    "a", "total", "final", "answer", "is", "we", "get", "have", "it", "the", "as", "follows", "correct", "that",
}
# "The problem with the answer: 20 is not equal to 20.375": a number being refuted is no answer.
_REFUTED = re.compile(r"(?:is|was|are)\s+(?:not\b|wrong|incorrect)|isn't|wasn't", re.IGNORECASE)
_SPACE_THOUSANDS = re.compile(r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.])-)?(?<![\w.])"  # a minus sign only where it is not subtraction ("7-3")
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d.,])|\d+)"
    r"(?:\.\d+)?(?:/\d+)?%?"
)
_LATEX_FRAC = re.compile(r"-?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|-?\\[dt]?frac\d\d")


def _balanced(text: str, open_at: int, limit: int = 1000) -> int:
    """Index just past the brace group opening at ``open_at``, or -1 when it does not close within ``limit``."""
    depth = 0
    for j in range(open_at, min(len(text), open_at + limit)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    return -1


_UNWRAP_RE = re.compile(r"\\(?:" + "|".join(_UNWRAP) + r")\s*\{")


def _unwrap(text: str) -> str:
    r"""``\boxed{12}`` → ``12``, ``\text{ marbles}`` → `` marbles`` (units are cut later)."""
    pattern = _UNWRAP_RE
    while True:
        m = pattern.search(text)
        if not m:
            return text
        end = _balanced(text, m.end() - 1)
        if end < 0:
            return text[: m.start()] + text[m.end() :]
        text = text[: m.start()] + text[m.end() : end - 1] + text[end:]


def normalise(text: str) -> str:
    """Markdown and typography a reader ignores: emphasis, headings, LaTeX delimiters, odd minus signs.

    SCL's ``## A ##`` lines are kept; other heading marks are dropped ("### Final answer: 12").
    """
    text = text.replace("\u2212", "-").replace("\u2013", "-").replace("\r\n", "\n")
    text = re.sub(r"(?<![\w*])\*\*|\*\*(?![\w*])|(?<!\w)__|__(?!\w)", "", text)  # **bold**, not 2**3
    text = re.sub(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])", r"\1", text)  # *12*
    text = re.sub(r"(?m)^[ \t]*#{1,6}[ \t]+(?!.*##[ \t]*$)", "", text)
    text = text.replace("\\(", "$").replace("\\)", "$").replace("\\[", "$").replace("\\]", "$")
    text = text.replace("$$", "$")
    return text


_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


def _cut_prose(s: str) -> str:
    """``s`` up to its first word of prose; a unit inside a formula ("5 litres / 2 = 2.5") is dropped."""
    pos = 0
    while m := _WORD.search(s, pos):
        rest = s[m.end() :]
        if m.group().lower() in _MATH_WORDS:
            pos = m.end()
        elif re.search(r"\d", s[: m.start()]) and re.match(r"\s*[-+*/×÷=]\s*[\d\\(]", rest):
            s, pos = s[: m.start()] + rest, m.start()
        else:
            return s[: m.start()]
    return s


def clean_answer(candidate: str) -> str | None:
    r"""The answer in the text that follows a final statement, or None when it holds none.

    Units and trailing words go ("12 marbles each." → ``12``), as do currency signs, thousands
    separators, LaTeX wrappers and a leading "x =" (the value after the last "=" is the answer).

    >>> clean_answer("**\\$1,200** in total.")
    '1200'
    >>> clean_answer("I added wrongly.") is None
    True
    """
    s = _unwrap(candidate)
    s = re.sub(r"[\"“”]", " ", s)  # a quoted answer: 'The answer is "24."'
    s = s.replace("\\$", " ").replace("$", " ").replace("\\%", "%").replace("\\!", "").replace("~", " ")
    s = re.sub(r"\{,\}|\\,|\\;|\\ ", lambda m: "," if m.group() == "{,}" else " ", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°|[€£¥]", " ", s)
    s = s.replace("**", "").replace("__", "").strip(" \t*_\"'`")
    # Skip filler words before the answer, then stop at the first word of prose (units, "each", "Wait").
    words = list(re.finditer(r"(?<![\\A-Za-z])[A-Za-z]{2,}|(?<![\\A-Za-z])[A-Za-z](?![A-Za-z])", s))
    start = 0
    for w in words:
        gap = s[start : w.start()]
        if w.group().lower() in _FILLER and not re.search(r"[\d\\]", gap):
            start = w.end()
            continue
        break
    s = s[start:].lstrip(" :,")
    s = _cut_prose(s)
    s = re.split(r"\.\s|;|\n|,\s(?!\d{3}(?!\d))|\s\(", s + " ")[0]
    s = re.sub(r"(?<=\d)\s+[A-Za-z]\s*$", "", s.strip())  # "12 m", "5 L": a unit letter
    s = _COMMA_THOUSANDS.sub("", _SPACE_THOUSANDS.sub("", s))
    if "=" in s:
        # "5 + 7 = 12", "x = 5": the value is after the "="; "78 = 27 x 3": the bare number is
        parts = [p.strip() for p in s.split("=")]
        bare = [p for p in parts if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?%?", p)]
        s = bare[-1] if bare else parts[-1]
    s = s.strip().rstrip(".,:;!?#+-*/×÷ ").strip()
    if s.count("(") < s.count(")"):
        s = s.rstrip(")").strip()
    if not s or not (re.search(r"\d", s) or re.search(r"\\(?:frac|sqrt|pi|infty)", s) or re.fullmatch(r"\([A-E]\)", s)):
        return None
    return re.sub(r"\s+", " ", s)


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


# An answer is short: a statement is read this far (a response with no line breaks stays linear).
_STATEMENT_CHARS = 200


def _line_after(text: str, at: int, head: int) -> str:
    """The statement after a final-statement phrase that ends at ``at`` and began at ``head``.

    The rest of the line; or, for a phrase that is a line of its own ("Final answer:", "**Answer**"),
    the next line that is not empty.
    """
    end = text.find("\n", at)
    first = text[at : end if end >= 0 else len(text)][:_STATEMENT_CHARS]
    if first.strip() or end < 0:
        return first
    line_start = text.rfind("\n", 0, head) + 1
    more = text[end : end + 4 * _STATEMENT_CHARS].strip()
    if head - line_start > 12 or not more:
        return ""
    return more.split("\n", 1)[0][:_STATEMENT_CHARS]


def _explicit(text: str) -> list[tuple[int, bool, str, str]]:
    """Every explicit final statement that holds an answer: (start, closed, rule, answer).

    ``closed``: something follows the answer (a closing brace, a unit, a full stop), so a cut at the
    end of the text did not shorten it.
    """
    found: list[tuple[int, bool, str, str]] = []
    size = len(text)
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        end = _balanced(text, m.end() - 1)
        if end > 0:
            answer = clean_answer(text[m.end() : end - 1])
            if answer:
                found.append((m.start(), True, "boxed", answer))
    for m in _SCL.finditer(text):
        answer = clean_answer(m.group(1))
        if answer:
            found.append((m.start(), True, "scl_hashes", answer))
    for rule, pattern in (("answer_is", _ANSWER_IS), ("correct_is", _CORRECT_IS)):
        for m in pattern.finditer(text):
            if _EARLIER.search(text[max(0, m.start() - 40) : m.start()]):
                continue
            line = _line_after(text, m.end(), m.start())
            answer = clean_answer(line)
            prose = _WORD.search(line)
            if answer and not (prose and _REFUTED.match(line, prose.start())):
                at = text.find(line, m.end())
                last_digit = max((i for i, c in enumerate(line) if c.isdigit()), default=-1)
                closed = bool(re.search(r"[^\s+\-*/×÷=^(]", text[at + last_digit + 1 : size]))
                found.append((m.start(), closed, rule, answer))
    for m in _IS_THE_ANSWER.finditer(text):
        # "... = 33, which is the answer": the last number of the sentence so far
        before = re.split(r"(?<!\d)\.(?!\d)|\n", text[max(0, m.start() - _STATEMENT_CHARS) : m.start()])[-1]
        numbers = _numbers(before)
        if numbers:
            found.append((m.start(), True, "is_the_answer", _plain(numbers[-1].group())))
    return found


# --- implicit: the closing sentence --------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|[!?\n]|\.(?=\s|$)")
_CONCLUSION = re.compile(
    r"^\W*(?:therefore|thus|so|hence|in total|altogether|in the end|finally|overall)\b", re.IGNORECASE
)


def _numbers(s: str) -> list[re.Match[str]]:
    found = list(_NUMBER.finditer(s)) + list(_LATEX_FRAC.finditer(s))
    return sorted(found, key=lambda m: m.start())


def _closing(text: str) -> Extraction | None:
    """The answer of the last sentence that holds a number (rule 2 of the module docstring)."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    for sentence in reversed(pieces):
        numbers = _numbers(sentence)
        if not numbers:
            continue
        eq = sentence.rfind("=")
        after = [n for n in numbers if n.start() > eq] if eq >= 0 else []
        if after:
            return Extraction(_plain(after[0].group()), "equals_end")
        if eq >= 0 and re.search(r"[A-Za-z]", sentence[eq:]):
            return Extraction(None, "none: the closing equation has no value (\"4 + 3 = N\")")
        if _CONCLUSION.search(sentence):
            return Extraction(_plain(numbers[0].group()), "therefore")
        last = numbers[-1]
        for formula in re.finditer(r"\$([^$]+)\$", sentence):
            if formula.start() <= last.start() < formula.end():
                cleaned = clean_answer(formula.group(1))
                if cleaned:
                    return Extraction(cleaned, "inline_math")
        return Extraction(_plain(last.group()), "last_number")
    return None


def _plain(number: str) -> str:
    return _COMMA_THOUSANDS.sub("", _SPACE_THOUSANDS.sub("", number))


# --- entry point ---------------------------------------------------------------------------------


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
    """
    if not text or not text.strip():
        return Extraction(None, "none: empty response")
    truncated = finish in TRUNCATED_FINISH
    norm = normalise(text)
    statements = _explicit(norm)
    if truncated:
        # the last characters may be a number cut in half ("The answer is 1" of "12")
        statements = [s for s in statements if s[1]]
    if statements:
        _, _, rule, answer = max(statements, key=lambda s: s[0])
        return Extraction(answer, rule)
    if truncated:
        return Extraction(None, f"none: truncated (finish={finish}) before any explicit final answer")
    if explicit_only:
        return Extraction(None, "none: no explicit final answer (explicit_answers_only)")
    closing = _closing(norm)
    return closing or Extraction(None, "none: no number in the response")
