"""The data contract shared by every stage: prompts, samples and their Parquet schemas.

This module is a leaf: it imports nothing from the project and neither ray nor vllm, so that
judges (which only read records) stay light enough to run anywhere.

A *prompt* has a stable ``prompt_id``, chat ``messages`` (a plain-text prompt becomes one user
message), an optional ``reference`` answer, a ``task`` type (``math``, ``code`` or ``open``) and a
JSON ``metadata`` string (a code prompt's stub, tests and entry point live there, under ``CODE_*``).

A *sample* is one row of the generate stage, keyed by ``(prompt_id, sample_idx)``; its turns are
kept both as named columns (``attempt1``, ``critique``, ``attempt2``, ``feedbacks``,
``revisions``) and as the full conversation (``conversation``) so later stages never have to
re-derive what the model saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

TASKS = ("math", "code", "open")
ROLES = ("system", "user", "assistant")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("reference", pa.string()),
        ("task", pa.string()),
        ("metadata", pa.string()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("task", pa.string()),
        ("messages", MESSAGES),
        ("reference", pa.string()),
        ("metadata", pa.string()),
        ("mode", pa.string()),
        # attempt 1: the first answer (SelFee: the initial answer; SIMA: greedy at sample_idx 0)
        ("attempt1", pa.string()),
        ("attempt1_tokens", pa.int32()),
        ("attempt1_finish", pa.string()),
        # the instruction that asked for a second attempt (two-attempt mode)
        ("review_prompt", pa.string()),
        # attempt 2: the corrected answer (two-attempt), or the last revision (SelFee)
        ("attempt2", pa.string()),
        ("attempt2_tokens", pa.int32()),
        ("attempt2_finish", pa.string()),
        # SelFee chains: feedback i judges the answer before revision i+1
        ("feedbacks", pa.list_(pa.string())),
        ("revisions", pa.list_(pa.string())),
        ("greedy", pa.bool_()),
        ("conversation", MESSAGES),
        ("prompt_tokens", pa.int32()),
        ("generated_tokens", pa.int32()),
        ("model", pa.string()),
        ("sampling", pa.string()),
        ("seed", pa.int64()),
    ]
)

KEY = ("prompt_id", "sample_idx")

# Metadata keys of a code prompt (HumanEval style): prompt sources write them, the verifier reads them.
CODE_PROMPT = "code_prompt"  # the stub the answer completes: imports, signature, docstring
CODE_TEST = "test"  # defines check(candidate)
CODE_ENTRY_POINT = "entry_point"  # the function check() is called with


@dataclass(frozen=True)
class Prompt:
    """One prompt as every source yields it."""

    prompt_id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    task: str = "open"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "messages": self.messages,
            "reference": self.reference,
            "task": self.task,
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Prompt:
        meta = row.get("metadata") or "{}"
        return cls(
            prompt_id=row["prompt_id"],
            messages=[dict(m) for m in row["messages"]],
            reference=row.get("reference"),
            task=row.get("task") or "open",
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Return ``messages`` as a list of ``{"role", "content"}`` dicts or raise ``ValueError``.

    A conversation must be non-empty, use known roles, end with a user turn, and have no empty
    user content (an empty prompt is refused rather than sent to the model).
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise ValueError("prompt must be a non-empty string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; expected one of {ROLES}")
        content = m.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] != "user":
        raise ValueError("the last message must come from the user")
    if not out[-1]["content"].strip():
        raise ValueError("prompt is empty")
    return out


def sample_columns() -> list[str]:
    return SAMPLE_SCHEMA.names


# --- judge columns -----------------------------------------------------------------------------
# The judge stage keeps every sample column and adds, for each judge NAME in the config:
#   NAME_score1  float64, null when not scored: score of attempt1 (verifier: 1.0 right / 0.0 wrong;
#                reward model: its scalar; API pointwise: 1-10; embedding: cosine to the reference)
#   NAME_score2  float64, null when the row has no attempt2 or it was not scored
#   NAME_pref    int8, pairwise judges only: 1 or 2 for the preferred response, 0 for a tie or no
#                verdict, null where no pair exists. The pair is (attempt1, attempt2) on rows that
#                have an attempt2; otherwise (sample 0's attempt1, this row's attempt1) for
#                sample_idx >= 1 — SIMA compares each sampled response with the greedy one.
#   NAME_dup     bool, embedding judges only: a near-duplicate of a lower sample_idx of the prompt
#   NAME_raw     string: the judge's raw output (JSON text when there are several parts)
#   NAME_error   string: "" when the judge scored the row, else why not (the row is kept)
JUDGE_SUFFIXES = ("score1", "score2", "pref", "dup", "raw", "error")


def judge_column(name: str, suffix: str) -> str:
    if suffix not in JUDGE_SUFFIXES:
        raise ValueError(f"unknown judge column suffix {suffix!r}")
    return f"{name}_{suffix}"
