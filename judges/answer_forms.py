r"""What a final answer says, once ``judges.answers`` has found the statement that holds it.

MATH and GSM8K answers are more than numbers: tuples and intervals (``(2, -3)``, ``[0, 5)``,
``(-\infty, 3] \cup (4, \infty)``), sets and lists (``\{1, 2\}``, "1, 2 and 3", "$x = 2$ or
$x = 3$"), matrices, relations ("x ≥ 3", ``x^2 - 1 = 0``), words and choice letters ("odd", ``\text{Evelyn}``,
"(B)"), and numbers written as ``3 \times 10^{5}``, 3e5, .5, ``\sqrt3``, ``10,\!000`` or "\$18".
``clean_answer`` reads the answer at the start of a statement's text whole, in a form math-verify
parses (its LaTeX and expression parsers compare the values; nothing here re-implements them), and
leaves out what a reader leaves out: units, currency signs, Markdown, filler words, an aside in
parentheses, the working before the last "=".

How far an answer reaches: brackets, braces and ``\begin...\end`` are read as one piece (so a comma
inside ``(1, 2)`` does not end it); it ends at the end of its sentence, at a word of prose, or at a
comma that is not followed by another answer; pieces joined by ", ", "and" or "or" are a list.
An answer that is reached only in part (a bracket that never closes) is no answer: reading ``(2``
of ``(2, 3)`` would pay the reference 2.

``same_answer`` compares two answers: words and letters as words, everything else through
math-verify. ``reference_answer`` reads a reference the same way, so references can take any of
these forms (or be a whole solution with ``\boxed{}`` or GSM8K's ``#### N``).
"""

from __future__ import annotations

import functools
import re
import threading

# --- typography a reader ignores ----------------------------------------------------------------

_UNWRAP = (
    "boxed", "fbox", "text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mbox", "emph",
    "displaystyle",
)
_UNWRAP_RE = re.compile(r"\\(?:" + "|".join(_UNWRAP) + r")\s*\{")
_UNICODE = {
    "≥": r"\geq ", "≤": r"\leq ", "≠": r"\neq ", "×": r"\times ", "·": r"\cdot ", "÷": r"\div ", "√": r"\sqrt",
    "π": r"\pi ", "∞": r"\infty ", "∪": r"\cup ", "∩": r"\cap ", "∈": r"\in ", "±": r"\pm ", "−": "-", "–": "-",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SPACE_THOUSANDS = re.compile(r"(?<=\d)[ \u00a0\u202f](?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?:,\d{3})+(?!\d)")  # 1,234,567; not 0,111 or 95,100)
# 3e5, 6.02E-23 (not 2e in "2each"); "3 x 10^5" and "3 * 10^5" as LaTeX
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?!\w|\.\d)")
_TIMES_TEN = re.compile(r"(?<=\d)\s*(?:[x*]|\\times|\\cdot)\s*(?=10\s*\^)")

# Words that belong to a formula, not to prose: cutting "12 apples" at "apples" must not cut "\pi".
_MATH_WORDS = {"sqrt", "pi", "infty", "inf", "sin", "cos", "tan", "log", "ln", "exp", "frac", "dfrac", "tfrac"}
# Words a statement may put before the answer itself ("The answer is therefore 12").
_FILLER = {
    "therefore", "thus", "so", "then", "now", "still", "actually", "indeed", "clearly", "simply", "just",
    "exactly", "equal", "equals", "to", "be", "about", "approximately", "roughly", "of", "course", "definitely",
    "a", "total", "final", "answer", "is", "we", "get", "have", "it", "the", "as", "follows", "correct", "that",
}
# A word answer ("odd", "Evelyn", "neither") is a short phrase, not a clause ("she has twelve") or a
# pointer ("below", "given by the formula").
_NOT_A_WORD_ANSWER = {
    "that", "this", "these", "those", "because", "since", "given", "shown", "below", "above", "as", "in", "on",
    "at", "to", "for", "from", "with", "by", "of", "here", "there", "what", "which", "who", "how", "why", "when",
    "where", "she", "he", "they", "we", "you", "it", "its", "i", "his", "her", "their", "our", "my", "your", "if",
    "and", "or", "but", "than",
}
_CLAUSE = {"is", "are", "was", "were", "has", "have", "had", "be", "been", "will", "would", "can", "could", "should",
           "must", "do", "does", "did", "get", "gets", "got", "means", "equals"}
# Words that judge or point at an answer rather than give one: "the answer is incorrect", "... is not odd",
# "the answer is already provided". A statement of them is skipped, as one with no number is.
_VERDICT = {"correct", "incorrect", "wrong", "right", "not", "already", "provided", "following", "same", "answer",
            "question", "problem", "step", "solution", "mistake", "error", "explanation", "requested", "unclear",
            "obvious", "simple", "clear"}
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
# Commands that format rather than state a value: an answer of only these holds nothing.
_FORMAT_COMMANDS = {"text", "mathrm", "quad", "qquad", "left", "right", "displaystyle", "hspace", "mbox", "textbf"}

# Bracket groups, braces and environments are replaced by one private-use character each while the
# answer's extent is read, so their commas, spaces and words do not cut it.
_MASK0 = 0xE000


def balanced_end(text: str, open_at: int, limit: int = 1000) -> int:
    """Index just past the brace group opening at ``open_at``, or -1 when it does not close within ``limit``."""
    depth = 0
    for j in range(open_at, min(len(text), open_at + limit)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j + 1
    return -1


def _unwrap(text: str) -> str:
    r"""``\boxed{12}`` → ``12``, ``\text{ marbles}`` → `` marbles`` (units are cut later)."""
    while True:
        m = _UNWRAP_RE.search(text)
        if not m:
            return text
        end = balanced_end(text, m.end() - 1)
        if end < 0:
            return text[: m.start()] + text[m.end() :]
        text = text[: m.start()] + text[m.end() : end - 1] + text[end:]


def _group_end(s: str, i: int) -> int:
    """Index just past the group that opens at ``i`` (a bracket pair, ``\\{...\\}``, braces or an
    environment), or -1 when none opens there or it never closes."""
    c = s[i]
    if s.startswith("\\begin{", i):
        name = re.match(r"\\begin\{([^{}]*)\}", s[i:])
        if not name:
            return -1
        depth, pattern = 0, re.compile(r"\\(begin|end)\{" + re.escape(name.group(1)) + r"\}")
        for m in pattern.finditer(s, i):
            depth += 1 if m.group(1) == "begin" else -1
            if depth == 0:
                return m.end()
        return -1
    if s.startswith("\\{", i):
        depth, j = 0, i
        while j < len(s):
            if s.startswith("\\{", j):
                depth, j = depth + 1, j + 2
            elif s.startswith("\\}", j):
                depth, j = depth - 1, j + 2
                if depth == 0:
                    return j
            else:
                j += 1
        return -1
    if c == "{":
        return balanced_end(s, i, limit=len(s))
    if c in "([":  # an interval may close with either: [0, 5), (-\infty, 3]
        depth = 0
        for j in range(i, len(s)):
            if s[j] in "([":
                depth += 1
            elif s[j] in ")]":
                depth -= 1
                if depth == 0:
                    return j + 1
        return -1
    return -1


def _mask(s: str) -> tuple[str, list[str]]:
    out, groups, i = [], [], 0
    while i < len(s):
        end = _group_end(s, i) if s[i] in "([{\\" else -1
        if end > i:
            groups.append(s[i:end])
            out.append(chr(_MASK0 + len(groups) - 1))
            i = end
        else:
            out.append(s[i])
            i += 1
    return "".join(out), groups


def _unmask(s: str, groups: list[str]) -> str:
    return re.sub(r"[\ue000-\uf8ff]", lambda m: groups[ord(m.group()) - _MASK0], s)


def _prepare(candidate: str) -> str:
    """Typography, units of currency and LaTeX spacing out; number forms math-verify cannot read rewritten."""
    s = _unwrap(candidate)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)\s*(?=[()\[\]|.]|\\[{}|])", "", s).replace("\\left.", "")
    s = s.replace("\\right.", "")
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group()], s)
    s = re.sub(r"[\"“”]", " ", s)  # a quoted answer: 'The answer is "24."'
    s = s.replace("\\$", " ").replace("$", " ").replace("\\%", "%").replace("\\!", "").replace("~", " ")
    s = re.sub(r"\{,\}|(?<!\\)\\[,; ]|\\q?quad\b", lambda m: "," if m.group() == "{,}" else " ", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°|[€£¥]", " ", s)
    s = re.sub(r"(?<![\\A-Za-z])infinity\b", r"\\infty", s, flags=re.IGNORECASE)
    s = _SCIENTIFIC.sub(r"\1 \\times 10^{\2}", s)
    s = _TIMES_TEN.sub(r" \\times ", s)
    return s.replace("**", "").replace("__", "").strip(" \t\n*_\"'`")


def _skip_filler(s: str) -> str:
    """``s`` after the filler words that may open a statement ("therefore", "equal to", "a total of")."""
    start = 0
    for w in re.finditer(r"(?<![\\A-Za-z])[A-Za-z]+", s):
        word = w.group()
        gap = s[start : w.start()]
        if re.search(r"[\d\\\ue000-\uf8ff]", gap) or word.lower() not in _FILLER:
            break
        if word in ("a", "A"):  # the article ("a total of 12"), not a variable ("a = 2") or a choice ("A because")
            after = re.match(r"\s+(\w+)", s[w.end() :])
            if not after or (word == "A" and after.group(1).lower() in _NOT_A_WORD_ANSWER | _CLAUSE | _VERDICT):
                break
        start = w.end()
    return s[start:].lstrip(" :,")


# --- one answer ---------------------------------------------------------------------------------

_SENTENCE_CUT = re.compile(r"\.\s|\.$|;|\n|[!?](?:\s|$)")
_LIST_SEP = re.compile(r"(\s*,\s*(?:(?:and|or)\s+)?|\s+(?:and|or)\s+)")
# "(B)", "B", "B)"; not the variable of "A = 5" or "B + C"
_LETTER = re.compile(r"\(\s*([A-E])\s*\)|\b([A-E])\)?(?!\w|\s*[=+\-*/^<>])")
_ITEM_SEP = re.compile(r"\s*(?:,\s*(?:(?:and|or)\s+)?|\b(?:and|or)\s+)")


def _has_value(item: str) -> bool:
    """Whether an answer piece states something: a digit or a math command (``\\pi``, ``\\infty``, ``\\sqrt``)."""
    if re.search(r"\d", item):
        return True
    return any(c not in _FORMAT_COMMANDS for c in re.findall(r"\\([A-Za-z]+)", item))


def _letters_outside_commands(s: str) -> bool:
    s = re.sub(r"\\[A-Za-z]+", "", s)
    s = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", s)  # "3 x 8": times, not a variable
    return bool(re.search(r"[A-Za-z]", s))


def _value_of_equation(masked: str, groups: list[str]) -> tuple[str, bool]:
    """The part of ``a = b = c`` that is the answer, and whether it is an assignment (``x = 5``).

    Working that ends in a value ("5 + 7 = 12", "N = 3 x 8 + 3 = 33", "(x, y) = (1, 2)") gives the value;
    "78 = 27 x 3" its bare number. An equation between expressions with variables ("x^2 - 1 = 0",
    "y = 2x + 3") is the answer itself, left whole for math-verify to compare.
    """
    parts = [p.strip() for p in re.split(r"(?<![<>!\\])=", masked)]
    if len(parts) < 2 or any(not p for p in parts):
        return masked, False
    lhs, last = _unmask(parts[0], groups), _unmask(parts[-1], groups)
    target = re.sub(r"_\{?[^\s{}]*\}?|'", "", parts[0])
    assignment = not re.search(r"[-+*/^\d\\]|\s\S", target)  # "x", "N", "f(2)", "(x, y)", "AB"
    if _letters_outside_commands(lhs) and not (assignment and not _letters_outside_commands(last)):
        return masked, False
    bare = [p for p in parts if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?%?", p)]
    return (bare[-1] if bare else parts[-1]), assignment


def _prose(s: str) -> bool:
    s = re.sub(r"\\(?:begin|end|operatorname|math[a-z]+)\s*\{[^{}]*\}(?:\{[^{}]*\})?", "", s)  # \begin{array}{cc}
    return any(w.lower() not in _MATH_WORDS for w in _WORD.findall(s))


def _cut_prose(s: str) -> tuple[str, int]:
    """``s`` up to its first word of prose, and how many words of prose follow; a unit inside a
    formula ("5 litres / 2 = 2.5") is dropped."""
    pos = 0
    while m := _WORD.search(s, pos):
        rest = s[m.end() :]
        if m.group().lower() in _MATH_WORDS:
            pos = m.end()
        elif re.search(r"\d", s[: m.start()]) and re.match(r"\s*(?:[-+*/×÷=]|\\times|\\div|\\cdot)\s*[\d\\(]", rest):
            s, pos = s[: m.start()] + rest, m.start()
        else:
            return s[: m.start()], len(_WORD.findall(s[m.start() :]))
    return s, 0


def _piece(masked: str, groups: list[str]) -> tuple[str | None, str, int]:
    """One piece of a (masked) answer → (its value or None, the piece whole, words of prose after it)."""
    for k, c in enumerate(masked):  # brackets of prose end it too: "1/2(3 apples) = 3"
        if c >= "\ue000" and groups[ord(c) - _MASK0][0] in "([" and _prose(groups[ord(c) - _MASK0]):
            masked = masked[:k]
            break
    s, prose = _cut_prose(masked)
    s = s.strip()
    if re.fullmatch(r"-?[\d.,/]+\s+[A-Za-z]", s):
        s = s[:-1].strip()  # "12 m", "5 L": a unit letter
    s = s.rstrip(".,:;!?#+-*/×÷ ").strip()
    if s.count(")") > s.count("("):  # an unmatched closer: "4 (C) - 3 (Extra) = 1)." read from inside
        s = s.rstrip(")").strip()
    if not s or re.search(r"[(\[{]|\\\{", s):
        return None, "", prose  # empty, or a bracket that never closes: the answer was not read whole
    value, assignment = _value_of_equation(s, groups)
    value, whole = (re.sub(r"\s+", " ", _unmask(v, groups)).strip() for v in (value, s))
    if not _has_value(value):
        return None, "", prose
    return value, (whole if assignment else value), prose


def _cut_aside(masked: str, groups: list[str]) -> str:
    """``masked`` before an aside in brackets: "12 (since 5 + 7 = 12)", "(1, 2) (the vertex)";
    not a bracket that is part of the answer ("x \\in [2, 5)", "2(3 + 4)", "f(x)")."""
    for m in re.finditer(r"\s+(?=[(\[\ue000-\uf8ff])", masked):
        nxt = masked[m.end()]
        if nxt >= "\ue000" and groups[ord(nxt) - _MASK0][0] not in "([":
            continue
        before = masked[: m.start()]
        if before.strip() and re.search(r"[\w%\ue000-\uf8ff]$", before) and not re.search(r"\\[A-Za-z]+$", before):
            return before
    return masked


def _choice_letters(text: str) -> str | None:
    """A choice letter ("(B)", "B"); several ("A, B or D") are a list, which no single letter equals."""
    letters, pos = [], 0
    while m := _LETTER.match(text, pos):
        letters.append(m.group(1) or m.group(2))
        sep = _ITEM_SEP.match(text, m.end())
        if not sep or not _LETTER.match(text, sep.end()):
            break
        pos = sep.end()
    return ", ".join(letters) or None


def _phrase(text: str, max_words: int) -> str | None:
    words = text.split()
    if (
        not re.fullmatch(r"[A-Za-z][A-Za-z'\- ]*", text)
        or not 0 < len(words) <= max_words
        or words[0].lower() in _NOT_A_WORD_ANSWER | _MATH_WORDS
        or any(w.lower() in _CLAUSE | _VERDICT for w in words)
    ):
        return None
    return " ".join(words)


def _word_answer(masked: str, groups: list[str], max_words: int) -> str | None:
    """A short phrase ("odd", "Evelyn", "neither"), or None; phrases listed after it ("Evelyn, Briana
    and Carla") make a list, an aside does not ("odd, since f(-x) = -f(x)", "odd, not even")."""
    parts = _ITEM_SEP.split(_unmask(masked, groups).strip(" .!:"))
    first = _phrase(parts[0], max_words)
    if first is None:
        return None
    rest = [_phrase(part, max_words) for part in parts[1:]]
    return ", ".join([first, *rest]) if rest and None not in rest else first  # type: ignore[list-item]


#: What ``clean_answer`` gives for a statement that offers alternatives ("3 or maybe 5"): no answer,
#: and unlike None, one that leaves no earlier answer standing.
WITHDRAWN = ""


def clean_answer(candidate: str, max_words: int = 4) -> str | None:
    r"""The answer at the start of the text that follows a final statement, or None when it holds none
    (``WITHDRAWN`` when it offers alternatives).

    Units and trailing words go ("12 marbles each." → ``12``), as do currency signs, thousands
    separators, LaTeX wrappers and the working before the last "=" (the module docstring says how
    far an answer reaches). A word answer has at most ``max_words`` words.

    >>> clean_answer("**\\$1,200** in total.")
    '1200'
    >>> clean_answer("$\\left( 3, \\frac{\\pi}{2} \\right)$, the polar form.")
    '( 3, \\frac{\\pi}{2} )'
    >>> clean_answer("x ≥ 3, since ...")
    'x \\geq 3'
    >>> clean_answer("$x = 2$ or $x = -3$.")
    'x = 2, x = -3'
    >>> clean_answer("odd, because f(-x) = -f(x).")
    'odd'
    >>> clean_answer("I added wrongly.") is None
    True
    """
    s = _skip_filler(_prepare(candidate))
    masked, groups = _mask(s)
    # thousands separators only outside brackets: "[95,100)" is an interval, not 95100
    masked = _COMMA_THOUSANDS.sub(lambda m: m.group().replace(",", ""), _SPACE_THOUSANDS.sub("", masked))
    end = _SENTENCE_CUT.search(masked)
    asked = bool(end and end.group().startswith("?"))  # 'the answer to "How many books is Ivo now?"'
    masked = _cut_aside(masked[: end.start()] if end else masked, groups).strip()
    first = re.match(r"[A-Za-z]+|[\ue000-\uf8ff]", masked)
    if first:
        token = first.group()
        if len(token) > 1 and token.lower() not in _MATH_WORDS:  # a word: a word answer or none
            return None if asked else _word_answer(masked, groups, max_words)
        if token in ("A", "B", "C", "D", "E") or token >= "\ue000":
            letters = _choice_letters(_unmask(masked, groups))
            if letters:
                return letters
    pieces = _LIST_SEP.split(masked)  # piece, separator, piece, ...
    values: list[str] = []
    wholes: list[str] = []
    for i in range(0, len(pieces), 2):
        value, whole, prose = _piece(pieces[i], groups)
        # a later piece is part of the list only if it is an answer too: "12, 5 more than Ben" is 12
        if value is None or (values and prose > (1 if i == len(pieces) - 1 else 0)):
            break
        values.append(value)
        wholes.append(whole)
        if prose:
            break
    rest = "".join(pieces[2 * len(values) - 1 :]) if values else ""
    if re.search(r"\bor\b\D*\d", rest):
        return WITHDRAWN  # "3, or possibly 5", "3 apples or 5 pears": alternatives offered
    if len(values) == 1:
        return values[0]
    return ", ".join(dict.fromkeys(wholes)) or None  # a list keeps its names: x = 2, y = 3


# --- comparing two answers ----------------------------------------------------------------------


_INTEGER = re.compile(r"\s*-?\d+\s*")


def _is_words(answer: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z'\-(), ]*|\(?[A-E]\)?", answer.strip()))


def _word_key(answer: str) -> str:
    return re.sub(r"[^a-z]+", " ", _unwrap(answer).lower()).strip()


@functools.lru_cache(maxsize=4096)  # a reference is compared with every sample of its prompt
def _parse(answer: str, timeout_s: int | None) -> tuple:
    from math_verify import parse

    s = answer.strip()
    return tuple(parse(s if "$" in s else f"${s}$", parsing_timeout=timeout_s) or parse(s, parsing_timeout=timeout_s))


def same_answer(answer: str, reference: str, timeout_s: int | None = 5) -> bool:
    """Whether two answers (as ``clean_answer`` reads them) are equal.

    Words and choice letters compare as words ("(B)" = "B", "Odd" = "odd"; "not odd" ≠ "odd"); all
    else through math-verify (``parse`` inside ``$...$``, then ``verify``: values, fractions, LaTeX,
    tuples, intervals, sets, matrices, relations); what it cannot parse must be the same text. A relation is
    compared with a set as the set it describes (``x \\geq 3`` = ``[3, \\infty)``). The signal-based
    timeout only works on the main thread; on other threads it is off.
    """
    from math_verify import verify

    if _is_words(answer) or _is_words(reference):
        return _word_key(answer) == _word_key(reference)
    if re.sub(r"\s+", "", answer) == re.sub(r"\s+", "", reference):
        return True  # the same text, however math-verify parses it
    if _INTEGER.fullmatch(answer) and _INTEGER.fullmatch(reference):
        return int(answer) == int(reference)  # what math-verify says, without parsing LaTeX
    if threading.current_thread() is not threading.main_thread():
        timeout_s = None
    gold, pred = _parse(reference, timeout_s), _parse(answer, timeout_s)
    if gold and pred:
        return verify(list(gold), list(pred), timeout_seconds=timeout_s, allow_set_relation_comp=True)
    norm = lambda s: re.sub(r"\s+", "", s).strip("$").rstrip(".").lower()  # noqa: E731
    return norm(answer) == norm(reference)  # what math-verify cannot parse must be written the same
