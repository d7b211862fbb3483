"""The self-correction turn structures, independent of the engine that completes them.

Each mode turns a shard of prompts into sample rows by issuing *steps*: a step is one batch of
chat requests completed together (so the engine sees the whole shard at once), and the next
step's requests depend on the previous step's answers. Modes are registered by name (``datagen.modes``):

- ``single``: n samples (Self-Contrast).
- ``sima``: sample 0 greedy, samples 1..n-1 sampled (SIMA).
- ``two_attempt``: attempt 1, the review instruction, attempt 2 (SCL, SCoRe; ``two_attempts`` keeps the
  engine's token ids and log-probabilities beside each row, for SCoRe's rollouts).
- ``selfee``: SelFee's answer, feedback and revision chains (``datagen.selfee``).

Seeds derive from (run seed, prompt_id, turn, sample_idx), so a rerun — or a shard redone after a
kill — reproduces every sample.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datagen.config import GenerateConfig
from datagen.modes import MODES
from datagen.records import Prompt


@dataclass(frozen=True)
class Request:
    conversation: list[dict[str, str]]
    n: int
    temperature: float
    seed: int
    stop: tuple[str, ...] = ()  # strings that end the completion (left out of its text)
    continue_final: bool = False  # extend the last (assistant) message instead of starting a new one
    logprobs: bool = False  # also return each sampled token's log-probability
    images: tuple[str, ...] = ()  # image ids (datagen.records): the pictures of the first user message


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish: str  # stop, length; context: not sent (no room); error: the teacher API gave up
    stop_reason: str | None = None  # the stop string that ended it, if one did
    # what a trainer needs of an engine's completion (empty from a completer that has no token ids)
    prompt_ids: tuple[int, ...] = ()  # the conversation as the engine encoded it
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()  # of each token, where the request asked for them (NaN: not returned)


Complete = Callable[[list[Request]], list[list[Completion]]]


def derive_seed(seed: int, prompt_id: str, turn: str, sample_idx: int = -1) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{turn}\x1f{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def base_conversation(prompt: Prompt, cfg: GenerateConfig) -> list[dict[str, str]]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + list(prompt.messages)


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


def selfee_writers(cfg: GenerateConfig, model: str) -> dict[str, str]:
    """Which model wrote each kind of SelFee turn: the policy unless a teacher is configured."""
    t = cfg.teacher
    if t is None:
        return {"answer": model, "feedback": model, "revision": model}
    teacher = f"{t.kind}:{t.model}"
    return {"answer": teacher if t.answers == "teacher" else model, "feedback": teacher, "revision": teacher}


def _sampling_record(cfg: GenerateConfig, model: str) -> str:
    keys = ("mode", "n", "max_tokens", "temperature", "top_p", "top_k", "second_temperature")
    extra: dict[str, Any] = {k: getattr(cfg, k) for k in keys}
    if cfg.mode == "two_attempt":
        extra["review_prompt"] = cfg.review_text()
    if cfg.mode == "selfee":
        extra.update(
            max_revisions=cfg.max_revisions,
            enforce_revisions=cfg.enforce_revisions,
            selfee_format=cfg.selfee_format,
            writers=selfee_writers(cfg, model),
        )
        if cfg.teacher is not None:
            extra["teacher"] = cfg.teacher.model_dump(include={"kind", "model", "temperature", "max_tokens"})
    return json.dumps(extra, sort_keys=True)


def sample_row(prompt: Prompt, idx: int, cfg: GenerateConfig, model: str, seed: int) -> dict[str, Any]:
    return {
        "prompt_id": prompt.prompt_id,
        "sample_idx": idx,
        "task": prompt.task,
        "messages": prompt.messages,
        "images": list(prompt.images),
        "reference": prompt.reference,
        "metadata": json.dumps(prompt.metadata, sort_keys=True),
        "mode": cfg.mode,
        "attempt1": None,
        "attempt1_tokens": None,
        "attempt1_finish": None,
        "review_prompt": None,
        "attempt2": None,
        "attempt2_tokens": None,
        "attempt2_finish": None,
        "feedbacks": [],
        "revisions": [],
        "greedy": False,
        "conversation": [],
        "prompt_tokens": None,
        "generated_tokens": 0,
        "model": model,
        "sampling": _sampling_record(cfg, model),
        "seed": seed,
    }


def _first_rows(
    prompts: list[Prompt], outs: list[list[Completion]], cfg: GenerateConfig, model: str, seed: int
) -> list[dict[str, Any]]:
    """A row for each attempt 1 (each prompt's completions in sample order)."""
    rows: list[dict[str, Any]] = []
    for p, completions in zip(prompts, outs, strict=True):
        for idx, out in enumerate(completions):
            row = sample_row(p, idx, cfg, model, seed)
            row.update(
                attempt1=out.text,
                attempt1_tokens=out.tokens,
                attempt1_finish=out.finish,
                generated_tokens=out.tokens,
                conversation=base_conversation(p, cfg) + _turns(("assistant", out.text)),
            )
            rows.append(row)
    return rows


@MODES.register("single")
def single(prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, *, model: str, seed: int,
           teach: Complete | None = None, tag: str = "{turn}") -> list[dict[str, Any]]:  # fmt: skip
    """n samples of attempt 1 from one request per prompt (Self-Contrast)."""
    outs = complete(
        [
            Request(base_conversation(p, cfg), cfg.n, cfg.temperature,
                    derive_seed(seed, p.prompt_id, tag.format(turn="a1")), images=p.images)
            for p in prompts
        ]
    )  # fmt: skip
    return _first_rows(prompts, outs, cfg, model, seed)


@MODES.register("sima")
def sima(prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, *, model: str, seed: int,
         teach: Complete | None = None, tag: str = "{turn}") -> list[dict[str, Any]]:  # fmt: skip
    """Sample 0 greedy, samples 1..n-1 sampled (SIMA): two requests per prompt."""
    requests: list[Request] = []
    for p in prompts:
        conv = base_conversation(p, cfg)
        greedy = derive_seed(seed, p.prompt_id, tag.format(turn="greedy"))
        requests.append(Request(conv, 1, 0.0, greedy, images=p.images))
        a1 = derive_seed(seed, p.prompt_id, tag.format(turn="a1"))
        requests.append(Request(conv, cfg.n - 1, cfg.temperature, a1, images=p.images))
    outputs = complete(requests)
    rows = _first_rows(prompts, [outputs[i] + outputs[i + 1] for i in range(0, len(outputs), 2)], cfg, model, seed)
    for row in rows:
        row["greedy"] = row["sample_idx"] == 0
    return rows


@dataclass(frozen=True)
class TwoAttempts:
    """One sample of the two-attempt turn structure: its row and the engine's two completions (with their
    token ids, and log-probabilities where they were asked for)."""

    row: dict[str, Any]
    first: Completion
    second: Completion


def two_attempts(
    prompts: list[Prompt],
    cfg: GenerateConfig,
    complete: Complete,
    *,
    model: str,
    seed: int,
    tag: str = "{turn}",
    logprobs: bool = False,
) -> list[TwoAttempts]:
    """Attempt 1 (n per prompt), the review instruction, attempt 2 (one per attempt 1): SCL, SCoRe.

    ``tag`` names each turn in its seed (``"{turn}"``: a1, a2); SCoRe's rollouts add the step, so each
    step samples afresh. ``logprobs`` asks the engine for each sampled token's log-probability.
    """
    firsts = complete(
        [
            Request(base_conversation(p, cfg), cfg.n, cfg.temperature,
                    derive_seed(seed, p.prompt_id, tag.format(turn="a1")), logprobs=logprobs, images=p.images)
            for p in prompts
        ]
    )  # fmt: skip
    rows = _first_rows(prompts, firsts, cfg, model, seed)
    second_t = cfg.temperature if cfg.second_temperature is None else cfg.second_temperature
    for row in rows:
        review = cfg.review_text(row["task"])
        row["conversation"] += _turns(("user", review))
        row["review_prompt"] = review
    outs2 = complete(
        [
            Request(r["conversation"], 1, second_t,
                    derive_seed(seed, r["prompt_id"], tag.format(turn="a2"), r["sample_idx"]), logprobs=logprobs,
                    images=tuple(r["images"]))
            for r in rows
        ]
    )  # fmt: skip
    out: list[TwoAttempts] = []
    flat = [c for completions in firsts for c in completions]
    for row, first, (second,) in zip(rows, flat, outs2, strict=True):
        row.update(attempt2=second.text, attempt2_tokens=second.tokens, attempt2_finish=second.finish)
        row["generated_tokens"] += second.tokens
        row["conversation"] += _turns(("assistant", second.text))
        out.append(TwoAttempts(row, first, second))
    return out


@MODES.register("two_attempt")
def two_attempt(prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, *, model: str, seed: int,
                teach: Complete | None = None, tag: str = "{turn}") -> list[dict[str, Any]]:  # fmt: skip
    return [t.row for t in two_attempts(prompts, cfg, complete, model=model, seed=seed, tag=tag)]


def generate_rows(
    prompts: list[Prompt],
    cfg: GenerateConfig,
    complete: Complete,
    *,
    model: str,
    seed: int,
    teach: Complete | None = None,
) -> list[dict[str, Any]]:
    """All sample rows of ``prompts``, in (prompt, sample_idx) order, by the mode ``cfg.mode`` names.

    ``teach`` completes the teacher's turns (``cfg.teacher``: SelFee's feedback, revisions and, unless
    ``teacher.answers`` is policy, the answer); without a teacher the policy's ``complete`` writes all.
    """
    if cfg.teacher is not None and teach is None:
        raise ValueError("generate.teacher is set but no teacher completer was given")
    return MODES.get(cfg.mode)(prompts, cfg, complete, model=model, seed=seed, teach=teach)
