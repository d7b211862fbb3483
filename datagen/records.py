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

*Images.* A prompt may carry images (``images``): they belong to its first user message, before
that message's text, as TRL's ``prepare_multimodal_messages`` and LLaVA's "<image>\\n{question}"
place them (``vision_messages`` turns text messages into content parts by that rule). A row never
holds pixels: ``images`` lists *image ids*, the SHA-256 of the image file's bytes plus its format
(``"<64 hex>.png"``), and the bytes live once per run in the run's image store
(``RUN_DIR/images/<id>``, written by the generate stage, read through ``datagen.images``), however
many samples, pairs, judges or eval models refer to them. The same picture in two prompts is
stored once. ``Prompt.image_sources`` says where a prompt source found each image (a file path,
or the bytes a Parquet row or the built-in task held) until the generate stage copies it into the
store; it is never part of a row. Judges get the bytes beside the row, under ``IMAGE_BYTES``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

TASKS = ("math", "code", "open")
ROLES = ("system", "user", "assistant")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
IMAGES = pa.list_(pa.string())  # image ids, in the order the images come before the first user text

PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages", MESSAGES),
        ("images", IMAGES),
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
        ("images", IMAGES),
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

# Rows handed to a judge carry the bytes of their images under this key (a list in the order of
# ``images``; rows of one prompt share the same bytes objects). It is never written to Parquet.
IMAGE_BYTES = "_image_bytes"


def image_id(data: bytes, fmt: str) -> str:
    """The id of an image file: the SHA-256 of its bytes and its format (``"<64 hex>.png"``).

    >>> image_id(b"x", "PNG")[-4:], len(image_id(b"x", "png"))
    ('.png', 68)
    """
    return f"{hashlib.sha256(data).hexdigest()}.{fmt.lower()}"


def image_mime(iid: str) -> str:
    """The media type of an image by its id (``image/png``, ``image/jpeg`` ...), for data URLs.

    >>> image_mime("ab12.jpeg"), image_mime("ab12.mpo")
    ('image/jpeg', 'image/jpeg')
    """
    fmt = iid.rsplit(".", 1)[-1]
    return "image/jpeg" if fmt in ("jpeg", "jpg", "mpo") else f"image/{fmt}"


@dataclass(frozen=True)
class ImageSource:
    """Where a prompt source found one image: a file (``path``) or bytes it held (``data``)."""

    image_id: str
    width: int
    height: int
    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def read(self) -> bytes:
        return self.data if self.data is not None else Path(str(self.path)).read_bytes()


@dataclass(frozen=True)
class Prompt:
    """One prompt as every source yields it."""

    prompt_id: str
    messages: list[dict[str, str]]
    reference: str | None = None
    task: str = "open"
    metadata: dict[str, Any] = field(default_factory=dict)
    images: tuple[str, ...] = ()  # image ids (see the module docstring)
    # where the source found each image, until the generate stage stores it; not part of any row
    image_sources: tuple[ImageSource, ...] = field(default=(), compare=False, repr=False)
    origin: str = field(default="", compare=False)  # the file and line (or row) it came from, for errors

    def to_row(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "messages": self.messages,
            "images": list(self.images),
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
            images=tuple(row.get("images") or ()),
        )


def vision_messages(messages: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """``messages`` as chat content parts, with ``n_images`` image parts before the first user text.

    The placement every stage uses (generation, judges, training). Messages already in parts are
    kept as they are.

    >>> vision_messages([{"role": "user", "content": "What is it?"}], 1)[0]["content"]
    [{'type': 'image'}, {'type': 'text', 'text': 'What is it?'}]
    """
    out: list[dict[str, Any]] = []
    placed = n_images == 0
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
            if not placed and m["role"] == "user":
                parts = [{"type": "image"} for _ in range(n_images)] + parts
                placed = True
            content = parts
        out.append({**m, "content": content})
    if not placed:
        raise ValueError("images need a user message to go with")
    return out


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
