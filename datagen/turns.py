"""The self-correction turn structures, independent of the engine that completes them.

Each mode turns a shard of prompts into sample rows by issuing *steps*: a step is one batch of
chat requests completed together (so the engine sees the whole shard at once), and the next
step's requests depend on the previous step's answers.

- ``single``: n samples (Self-Contrast).
- ``sima``: sample 0 greedy, samples 1..n-1 sampled (SIMA).
- ``two_attempt``: attempt 1, the review instruction, attempt 2 (SCL, SCoRe).
- ``selfee``: answer, then rounds of feedback ending in "Revision is needed." or "Revision is not
  needed." and a revision while one is needed, up to ``max_revisions``; the first
  ``enforce_revisions`` rounds always revise, by rewriting "not needed" into "needed" as SelFee's
  revision-enforce inference does.

Seeds derive from (run seed, prompt_id, turn, sample_idx), so a rerun — or a shard redone after a
kill — reproduces every sample.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datagen.config import GenerateConfig
from datagen.records import Prompt

FEEDBACK_PROMPT = (
    "Give feedback on your answer above: check it step by step and point out any error or missing "
    'part. End your feedback with one line, exactly "Revision is needed." if the answer should be '
    'revised, or "Revision is not needed." if it is correct and complete.'
)
REVISION_PROMPT = "Revise your answer based on your feedback. Reply with the complete revised answer."
NOT_NEEDED = re.compile(r"revision is not needed", re.IGNORECASE)


@dataclass(frozen=True)
class Request:
    conversation: list[dict[str, str]]
    n: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish: str


Complete = Callable[[list[Request]], list[list[Completion]]]


def derive_seed(seed: int, prompt_id: str, turn: str, sample_idx: int = -1) -> int:
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{turn}\x1f{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def needs_revision(feedback: str) -> bool:
    """SelFee stops revising only when the feedback says "Revision is not needed"."""
    return NOT_NEEDED.search(feedback) is None


def enforce_revision(feedback: str) -> str:
    return NOT_NEEDED.sub("Revision is needed", feedback)


def _base(prompt: Prompt, cfg: GenerateConfig) -> list[dict[str, str]]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + list(prompt.messages)


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


def _sampling_record(cfg: GenerateConfig) -> str:
    keys = ("mode", "n", "max_tokens", "temperature", "top_p", "top_k", "second_temperature")
    extra = {k: getattr(cfg, k) for k in keys}
    if cfg.mode == "two_attempt":
        extra["review_prompt"] = cfg.review_text()
    if cfg.mode == "selfee":
        extra.update(max_revisions=cfg.max_revisions, enforce_revisions=cfg.enforce_revisions)
    return json.dumps(extra, sort_keys=True)


def _row(prompt: Prompt, idx: int, cfg: GenerateConfig, model: str, seed: int) -> dict[str, Any]:
    return {
        "prompt_id": prompt.prompt_id,
        "sample_idx": idx,
        "task": prompt.task,
        "messages": prompt.messages,
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
        "sampling": _sampling_record(cfg),
        "seed": seed,
    }


def _first_attempts(
    prompts: list[Prompt], cfg: GenerateConfig, seed: int, complete: Complete
) -> list[list[Completion]]:
    """Attempt 1 for every prompt: n samples from one request (SIMA: one greedy request besides)."""
    requests: list[Request] = []
    for p in prompts:
        conv = _base(p, cfg)
        if cfg.mode == "sima":
            requests.append(Request(conv, 1, 0.0, derive_seed(seed, p.prompt_id, "greedy")))
            requests.append(Request(conv, cfg.n - 1, cfg.temperature, derive_seed(seed, p.prompt_id, "a1")))
        else:
            requests.append(Request(conv, cfg.n, cfg.temperature, derive_seed(seed, p.prompt_id, "a1")))
    outputs = complete(requests)
    if cfg.mode == "sima":
        return [outputs[i] + outputs[i + 1] for i in range(0, len(outputs), 2)]
    return outputs


def generate_rows(
    prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, *, model: str, seed: int
) -> list[dict[str, Any]]:
    """All sample rows of ``prompts``, in (prompt, sample_idx) order."""
    firsts = _first_attempts(prompts, cfg, seed, complete)
    rows: list[dict[str, Any]] = []
    for p, outs in zip(prompts, firsts, strict=True):
        for idx, out in enumerate(outs):
            row = _row(p, idx, cfg, model, seed)
            row.update(
                attempt1=out.text,
                attempt1_tokens=out.tokens,
                attempt1_finish=out.finish,
                greedy=cfg.mode == "sima" and idx == 0,
                generated_tokens=out.tokens,
                conversation=_base(p, cfg) + _turns(("assistant", out.text)),
            )
            rows.append(row)
    second_t = cfg.temperature if cfg.second_temperature is None else cfg.second_temperature
    if cfg.mode == "two_attempt":
        review = cfg.review_text()
        for row in rows:
            row["conversation"] += _turns(("user", review))
            row["review_prompt"] = review
        outs2 = complete(
            [
                Request(r["conversation"], 1, second_t, derive_seed(seed, r["prompt_id"], "a2", r["sample_idx"]))
                for r in rows
            ]
        )
        for row, (out,) in zip(rows, outs2, strict=True):
            row.update(attempt2=out.text, attempt2_tokens=out.tokens, attempt2_finish=out.finish)
            row["generated_tokens"] += out.tokens
            row["conversation"] += _turns(("assistant", out.text))
    elif cfg.mode == "selfee":
        _selfee_rounds(rows, cfg, second_t, seed, complete)
    return rows


def _selfee_rounds(
    rows: list[dict[str, Any]], cfg: GenerateConfig, temperature: float, seed: int, complete: Complete
) -> None:
    active = list(rows)
    for rnd in range(1, cfg.max_revisions + 1):
        if not active:
            break
        for row in active:
            row["conversation"] += _turns(("user", FEEDBACK_PROMPT))
        feedback = complete(
            [
                Request(
                    r["conversation"], 1, temperature, derive_seed(seed, r["prompt_id"], f"fb{rnd}", r["sample_idx"])
                )
                for r in active
            ]
        )
        revising = []
        for row, (out,) in zip(active, feedback, strict=True):
            text = out.text
            if rnd <= cfg.enforce_revisions:
                text = enforce_revision(text)
            row["feedbacks"].append(text)
            row["generated_tokens"] += out.tokens
            row["conversation"] += _turns(("assistant", text))
            if needs_revision(text) and out.finish != "context":
                row["conversation"] += _turns(("user", REVISION_PROMPT))
                revising.append(row)
        revisions = (
            complete(
                [
                    Request(
                        r["conversation"],
                        1,
                        temperature,
                        derive_seed(seed, r["prompt_id"], f"rev{rnd}", r["sample_idx"]),
                    )
                    for r in revising
                ]
            )
            if revising
            else []
        )
        for row, (out,) in zip(revising, revisions, strict=True):
            row["revisions"].append(out.text)
            row["generated_tokens"] += out.tokens
            row["conversation"] += _turns(("assistant", out.text))
            row.update(attempt2=out.text, attempt2_tokens=out.tokens, attempt2_finish=out.finish)
        active = [r for r in revising if r["attempt2_finish"] != "context"]
