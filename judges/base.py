"""The Judge protocol, the per-row result, the registry, and the pairing rule every pairwise judge uses.

A judge is built once (``cls(name, settings)``), may hold a model, and is then called with
batches of sample rows (plain dicts with the columns of ``datagen.records.SAMPLE_SCHEMA``). It
returns one ``JudgeResult`` per row, in order. A bad model answer never raises: the row gets an
``error`` and is kept. Only a broken judge (a missing model file, an invalid setting) raises.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from datagen.records import IMAGE_BYTES, image_mime, judge_column


@dataclass
class JudgeResult:
    """What one judge says about one row; ``None`` means "not scored" (a null in Parquet)."""

    score1: float | None = None
    score2: float | None = None
    pref: int | None = None
    dup: bool | None = None
    raw: str = ""
    error: str = ""

    def flag(self, why: str) -> JudgeResult:
        """Record why the row was not (fully) scored; several reasons are joined."""
        self.error = f"{self.error}; {why}" if self.error else why
        return self


@dataclass
class JudgeStats:
    """Counters a judge keeps for metrics and reports; ``take`` hands them over and resets."""

    rows: int = 0
    errors: int = 0
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def take(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        self.__init__()  # type: ignore[misc]
        return out


@runtime_checkable
class Judge(Protocol):
    """What the judge stage needs from a judge."""

    #: the column suffixes (see ``datagen.records.JUDGE_SUFFIXES``) this judge writes
    suffixes: ClassVar[tuple[str, ...]]
    name: str
    stats: JudgeStats

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]: ...

    def close(self) -> None: ...


class BaseJudge:
    """Convenience base: keeps name, settings and stats; subclasses implement ``judge``."""

    suffixes: ClassVar[tuple[str, ...]] = ("score1", "score2", "raw", "error")
    #: resources one actor needs for this judge (the stage takes the maximum over its judges)
    needs_gpu: ClassVar[bool] = False
    #: bumped when the judge's scoring rules change, so the judge stage redoes verdicts made under the old ones
    version: ClassVar[str] = "1"

    def __init__(self, name: str, settings: Any):
        self.name = name
        self.settings = settings
        self.stats = JudgeStats()

    def judge(self, rows: list[dict[str, Any]]) -> list[JudgeResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release models, clients and processes (the default holds none)."""

    def _account(self, results: list[JudgeResult]) -> list[JudgeResult]:
        self.stats.rows += len(results)
        self.stats.errors += sum(1 for r in results if r.error)
        for r in results:
            self.stats.scores.extend(s for s in (r.score1, r.score2) if s is not None)
        return results


# --- registry ----------------------------------------------------------------------------------

REGISTRY: dict[str, type] = {}


def register(type_name: str):
    """Class decorator: make a judge class available under ``type_name`` in configs."""

    def deco(cls: type) -> type:
        REGISTRY[type_name] = cls
        cls.type_name = type_name
        return cls

    return deco


def load(spec: str) -> type:
    """Return the judge class for a registered type name or a ``"package.module:Name"`` string."""
    _import_builtins()
    if spec in REGISTRY:
        return REGISTRY[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown judge type {spec!r}: expected one of {sorted(REGISTRY)} or 'package.module:Name'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"judge type {spec!r}: cannot import {module_name}: {e}") from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"judge type {spec!r}: {module_name} has no attribute {attr!r}")
    if not callable(getattr(cls, "judge", None)):
        raise ValueError(f"judge type {spec!r}: {attr} has no judge(rows) method")
    return cls


def _import_builtins() -> None:
    # The built-in judges register themselves on import; their heavy dependencies load lazily.
    from judges import code_sandbox, embedding, openai_judge, reward_model, self_critic, verifier  # noqa: F401


def build(name: str, settings: Any) -> Judge:
    """Instantiate the judge named ``name`` from its validated settings (see ``judges.config``)."""
    return load(settings.type)(name, settings)


# --- helpers shared by the judges --------------------------------------------------------------


def question_text(row: dict[str, Any]) -> str:
    """The prompt a row answered, as text (the last user message; earlier turns as context)."""
    messages = row.get("messages") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


def image_parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's images as chat content parts, as GPT-4V and vLLM's chat take them (base64 data URLs).

    Empty for a row without images. The judge stage puts the bytes beside the row (``IMAGE_BYTES``).
    """
    ids = list(row.get("images") or [])
    if not ids:
        return []
    data = row.get(IMAGE_BYTES)
    if data is None or len(data) != len(ids):
        raise ValueError(f"row {row.get('prompt_id')!r} has images but not their bytes ({IMAGE_BYTES})")
    return [
        {"type": "image_url", "image_url": {"url": f"data:{image_mime(i)};base64,{base64.b64encode(b).decode()}"}}
        for i, b in zip(ids, data, strict=True)
    ]


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str] | None]:
    """The pair each row's preference is about (the rule in ``datagen.records``' judge columns).

    ``(attempt1, attempt2)`` where the row has an attempt 2; otherwise ``(sample 0's attempt1, this
    row's attempt1)`` for ``sample_idx >= 1`` when sample 0 of the prompt is in ``rows``; else None.
    """
    first: dict[str, str] = {}
    for r in rows:
        if r.get("sample_idx") == 0 and r.get("attempt1") is not None:
            first[r["prompt_id"]] = r["attempt1"]
    out: list[tuple[str, str] | None] = []
    for r in rows:
        if r.get("attempt2") is not None and r.get("attempt1") is not None:
            out.append((r["attempt1"], r["attempt2"]))
        elif (r.get("sample_idx") or 0) >= 1 and r["prompt_id"] in first and r.get("attempt1") is not None:
            out.append((first[r["prompt_id"]], r["attempt1"]))
        else:
            out.append(None)
    return out


def results_to_columns(name: str, suffixes: tuple[str, ...], results: list[JudgeResult]) -> dict[str, list]:
    """Turn per-row results into the judge's named columns (``NAME_score1`` ...)."""
    return {judge_column(name, s): [getattr(r, s) for r in results] for s in suffixes}


def dumps(obj: Any) -> str:
    """Compact JSON for ``_raw`` columns."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_BRACKETED = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
_VERDICT_PATTERNS = (
    re.compile(r"\bresponse\s*\(?([12])\)?\s+(?:is|was)\s+(?:better|preferred|more accurate)", re.I),
    re.compile(
        r"\b(?:better|preferred|winner|choose|pick|select)\w*\s*(?:response|answer)?\s*(?:is|:)?\s*"
        r"(?:response|answer)?\s*\(?([12])\b",
        re.IGNORECASE,
    ),
    re.compile(r"^\s*(?:response|answer)?\s*\(?([12])\)?\s*[.!]?\s*$", re.IGNORECASE),
)


def parse_verdict(text: str | None) -> int | None:
    """Which of two responses a judge preferred: 1, 2, 0 for a tie, None when it cannot be told.

    Accepts ``[[1]]``/``[[2]]``/``[[tie]]`` (the last one wins, as judges restate their choice),
    "Response 2 is better", "Better response: 1", "I choose Response 1", or a bare "1"/"2".
    A text that names both responses with equal weight and no bracketed verdict is None.

    >>> parse_verdict("Both are close... Final verdict: [[2]]")
    2
    >>> parse_verdict("Response 1 is better because ...")
    1
    >>> parse_verdict("I like both.") is None
    True
    """
    if not text:
        return None
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        last = bracketed[-1].lower()
        return 0 if last == "tie" else int(last)
    for pattern in _VERDICT_PATTERNS:
        found = pattern.findall(text)
        if found:
            return int(found[-1]) if len(set(found)) == 1 else None
    return None


def combine_orders(forward: int | None, swapped: int | None) -> int | None:
    """Cancel position bias: the verdict on (a, b) and on (b, a), mapped back, must agree.

    ``swapped`` is the verdict as the judge gave it on the swapped pair (1 means b). Agreement gives
    that verdict; disagreement gives 0 (a tie); a missing verdict on either side gives None.

    >>> combine_orders(1, 2), combine_orders(2, 2), combine_orders(0, 0), combine_orders(1, None)
    (1, 0, 0, None)
    """
    if forward is None or swapped is None:
        return None
    back = {1: 2, 2: 1, 0: 0}[swapped]
    return forward if forward == back else 0
