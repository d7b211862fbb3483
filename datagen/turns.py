"""The self-correction turn structures, independent of the engine that completes them.

Each mode turns a shard of prompts into sample rows by issuing *steps*: a step is one batch of
chat requests completed together (so the engine sees the whole shard at once), and the next
step's requests depend on the previous step's answers.

- ``single``: n samples (Self-Contrast).
- ``sima``: sample 0 greedy, samples 1..n-1 sampled (SIMA).
- ``two_attempt``: attempt 1, the review instruction, attempt 2 (SCL, SCoRe).
- ``selfee`` (dialogue): answer, then rounds of feedback (a 1-10 score and "Revision is needed." or
  "Revision is not needed.") and a revision while one is needed, up to ``max_revisions``, with
  SelFee's own data-generation prompts; a teacher model may write the feedback, the revisions and
  the answer (``generate.teacher``). The first ``enforce_revisions`` rounds always revise, by
  rewriting the verdict as SelFee's revision-enforce inference does.
- ``selfee`` (chain): the model writes answer, feedbacks and revisions in one reply, as a model
  trained on SelFee chains does; the chain is stopped at its verdicts and, while fewer than
  ``enforce_revisions`` revisions are written, made to go on.

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

# SelFee's data-generation prompts, as the authors sent them to ChatGPT (kaistAI/SelFee,
# data_augmentation/call_openai_multiprocessing_*.py): the critic sees the question and the proposed
# answer in one message, scores it 1-10 and ends with its verdict; below 9 should be revised.
FEEDBACK_PROMPT = (
    "{question}\nHere is a proposed answer:\n{answer}\n\nAre there any comments or critiques for the above "
    "answer? If so, write one under 100 words. You may score the quality of the answer on the scale of 1-10 "
    "(1: no code/no sense; 10: perfect) Also, classify if revision is needed by responding \"Revision is "
    'needed" or "Revision is not needed" at the end. Normally, score of less than 9 should be revised.'
    "\n\nCritique:"
)
REVISION_PROMPT = (
    "Revise the answer based on your own critique within 500 words. Your revision should be simple and "
    "clear, so do not add any rhetorics such as apology for the past mistake. Write as if the revised answer "
    "is the first try.\nRevision:"
)
NEEDED = "Revision is needed."
NOT_NEEDED = "Revision is not needed."
# A score at or above this, with no verdict sentence, means the answer stands (SelFee: "Normally, score
# of less than 9 should be revised").
PASS_SCORE = 9.0

# "No revision is needed", "Revision is not needed", "no revisions needed", "Revision: not needed",
# "does not need revision", "no need for revision", and the authors' "no critique".
_NOT_NEEDED = re.compile(
    r"\bno\s+(?:further\s+|more\s+)?revisions?\s+(?:(?:is|are)\s+)?(?:needed|required|necessary)"
    r"|\brevisions?\s*(?:(?:is|are)\s+not|isn't|aren't|:\s*not)\s+(?:needed|required|necessary)"
    r"|\b(?:does|do)\s*(?:not|n't)\s+(?:need|require)\s+(?:any\s+|a\s+)?(?:revision|to\s+be\s+revised)"
    r"|\bno\s+need\s+(?:for\s+(?:a\s+|any\s+)?revision|to\s+revise)"
    r"|\bno\s+critiques?\b",
    re.IGNORECASE,
)
_NEEDED = re.compile(
    r"\brevisions?\s*(?:(?:is|are)|:)\s*(?:still\s+)?(?:needed|required|necessary)"
    r"|\b(?:needs|requires)\s+(?:a\s+|some\s+)?(?:revision|to\s+be\s+revised)",
    re.IGNORECASE,
)
_SCORE = re.compile(
    r"\b(?:score|rating|rate|quality)\b[^0-9\n]{0,20}?(\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*10)?"
    r"|\b(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*10\b",
    re.IGNORECASE,
)


def _verdicts(feedback: str) -> tuple[list[re.Match[str]], list[re.Match[str]]]:
    """The "not needed" and the "needed" phrases, a "needed" inside a "not needed" left out."""
    not_needed = list(_NOT_NEEDED.finditer(feedback))
    masked = feedback
    for m in not_needed:
        masked = masked[: m.start()] + " " * (m.end() - m.start()) + masked[m.end() :]
    return not_needed, list(_NEEDED.finditer(masked))


def has_verdict(feedback: str) -> bool:
    """Whether a feedback says in words whether a revision is needed."""
    not_needed, needed = _verdicts(feedback)
    return bool(not_needed or needed)


def feedback_score(feedback: str) -> float | None:
    """The last 1-10 score a feedback gives ("Score: 7", "8/10", "rate it 9 out of 10"), or None."""
    scores = [float(a or b) for a, b in _SCORE.findall(feedback)]
    scores = [s for s in scores if 1 <= s <= 10]
    return scores[-1] if scores else None


def needs_revision(feedback: str) -> bool:
    """Whether a SelFee feedback asks for another revision.

    The verdict sentence decides, the last one when there are several; without one, a score of
    ``PASS_SCORE`` (9) or more lets the answer stand and a lower score revises it (SelFee's "score
    of less than 9 should be revised"); a feedback with neither revises, as the authors' loop does.
    """
    not_needed, needed = _verdicts(feedback)
    if not_needed or needed:
        last_not = max((m.start() for m in not_needed), default=-1)
        last_needed = max((m.start() for m in needed), default=-1)
        return last_needed > last_not
    score = feedback_score(feedback)
    return score is None or score < PASS_SCORE


def enforce_revision(feedback: str) -> str:
    """The feedback with its "no revision" verdict turned into one that asks for a revision.

    Revision-enforce mode (SelFee) rewrites "Revision is not needed" into "Revision is needed" so the
    chain goes on. Every not-needed phrase becomes "Revision is needed" (lower-case inside a
    sentence); a feedback with no verdict left (a bare score, or none) gets " Revision is needed."
    appended, so the chain says why it goes on. ``needs_revision`` of the result is always True.
    """
    not_needed, _ = _verdicts(feedback)
    out, last = [], 0
    for m in not_needed:
        before = feedback[: m.start()].rstrip()
        sentence_start = not before or before[-1] in ".!?:\n"
        phrase = m.group(0).lower()
        if phrase.startswith("do"):  # "it does not need revision" -> "it needs revision"
            replacement = "needs revision" if phrase.startswith("does") else "need revision"
        else:
            replacement = NEEDED[:-1] if sentence_start else "revision is needed"
        out += [feedback[last : m.start()], replacement]
        last = m.end()
    text = "".join(out) + feedback[last:]
    if not has_verdict(text) or not needs_revision(text):
        text = f"{text.rstrip()} {NEEDED}".strip()
    return text


def answer_after_revisions(row: dict[str, Any], k: int) -> str | None:
    """The answer of a SelFee row after ``k`` revisions: ``attempt1`` for k = 0, else revision k.

    A chain that stopped before ``k`` revisions (its feedback said none was needed, or the context
    was full) keeps its last answer, as SelFee's inference returns it. With ``enforce_revisions: K``
    every chain has at least K revisions, so one row gives the accuracy after 0..K revisions.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    revisions = list(row.get("revisions") or [])
    if k == 0 or not revisions:
        return row.get("attempt1")
    return revisions[min(k, len(revisions)) - 1]


@dataclass(frozen=True)
class Request:
    conversation: list[dict[str, str]]
    n: int
    temperature: float
    seed: int
    stop: tuple[str, ...] = ()  # strings that end the completion (left out of its text)
    continue_final: bool = False  # extend the last (assistant) message instead of starting a new one
    images: tuple[str, ...] = ()  # image ids (datagen.records): the pictures of the first user message


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish: str  # stop, length; context: not sent (no room); error: the teacher API gave up
    stop_reason: str | None = None  # the stop string that ended it, if one did


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


def _first_attempts(
    prompts: list[Prompt], cfg: GenerateConfig, seed: int, complete: Complete
) -> list[list[Completion]]:
    """Attempt 1 for every prompt: n samples from one request (SIMA: one greedy request besides)."""
    requests: list[Request] = []
    for p in prompts:
        conv = base_conversation(p, cfg)
        if cfg.mode == "sima":
            requests.append(Request(conv, 1, 0.0, derive_seed(seed, p.prompt_id, "greedy"), images=p.images))
            a1 = derive_seed(seed, p.prompt_id, "a1")
            requests.append(Request(conv, cfg.n - 1, cfg.temperature, a1, images=p.images))
        else:
            a1 = derive_seed(seed, p.prompt_id, "a1")
            requests.append(Request(conv, cfg.n, cfg.temperature, a1, images=p.images))
    outputs = complete(requests)
    if cfg.mode == "sima":
        return [outputs[i] + outputs[i + 1] for i in range(0, len(outputs), 2)]
    return outputs


def generate_rows(
    prompts: list[Prompt],
    cfg: GenerateConfig,
    complete: Complete,
    *,
    model: str,
    seed: int,
    teach: Complete | None = None,
) -> list[dict[str, Any]]:
    """All sample rows of ``prompts``, in (prompt, sample_idx) order.

    ``teach`` completes the teacher's turns (``cfg.teacher``: SelFee's feedback, revisions and, unless
    ``teacher.answers`` is policy, the answer); without a teacher the policy's ``complete`` writes all.
    """
    if cfg.teacher is not None and teach is None:
        raise ValueError("generate.teacher is set but no teacher completer was given")
    if cfg.mode == "selfee" and cfg.selfee_format == "chain":
        return _selfee_chains(prompts, cfg, complete, model, seed)
    teacher_answers = cfg.teacher is not None and cfg.teacher.answers == "teacher"
    firsts = _first_attempts(prompts, cfg, seed, teach if teacher_answers else complete)
    rows: list[dict[str, Any]] = []
    for p, outs in zip(prompts, firsts, strict=True):
        for idx, out in enumerate(outs):
            row = sample_row(p, idx, cfg, model, seed)
            row.update(
                attempt1=out.text,
                attempt1_tokens=out.tokens,
                attempt1_finish=out.finish,
                greedy=cfg.mode == "sima" and idx == 0,
                generated_tokens=out.tokens,
                conversation=base_conversation(p, cfg) + _turns(("assistant", out.text)),
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
                Request(
                    r["conversation"],
                    1,
                    second_t,
                    derive_seed(seed, r["prompt_id"], "a2", r["sample_idx"]),
                    images=tuple(r["images"]),
                )
                for r in rows
            ]
        )
        for row, (out,) in zip(rows, outs2, strict=True):
            row.update(attempt2=out.text, attempt2_tokens=out.tokens, attempt2_finish=out.finish)
            row["generated_tokens"] += out.tokens
            row["conversation"] += _turns(("assistant", out.text))
    elif cfg.mode == "selfee":
        if cfg.teacher is not None and cfg.teacher.temperature is not None:
            second_t = cfg.teacher.temperature
        _selfee_rounds(rows, prompts, cfg, second_t, seed, teach or complete)
    return rows


def _ended(finish: str | None) -> bool:
    """A turn after which the chain cannot go on: no room left, or the teacher API gave up."""
    return finish in ("context", "error")


def _selfee_rounds(
    rows: list[dict[str, Any]],
    prompts: list[Prompt],
    cfg: GenerateConfig,
    temperature: float,
    seed: int,
    complete: Complete,
) -> None:
    """SelFee's data-generation loop: feedback on the latest answer, and a revision while one is needed.

    The critic's dialogue starts from ``FEEDBACK_PROMPT`` (the question and the answer in one message)
    and grows by feedback, ``REVISION_PROMPT``, revision, ``FEEDBACK_PROMPT`` on the revision, ...;
    ``conversation`` keeps the original question and answer in front of it. The first
    ``enforce_revisions`` feedbacks are rewritten to ask for a revision (revision-enforce mode).
    """
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    questions = {p.prompt_id: next((m["content"] for m in reversed(p.messages) if m["role"] == "user"), "")
                 for p in prompts}  # fmt: skip
    dialogues: dict[int, list[dict[str, str]]] = {id(r): list(system) for r in rows}
    answers = {id(r): r["attempt1"] for r in rows}
    active = [r for r in rows if not _ended(r["attempt1_finish"])]

    def say(row: dict[str, Any], role: str, text: str) -> None:
        dialogues[id(row)] += _turns((role, text))
        row["conversation"] += _turns((role, text))

    def ask(rows_: list[dict[str, Any]], turn: str) -> list[list[Completion]]:
        if not rows_:
            return []
        return complete(
            [
                Request(
                    dialogues[id(r)],
                    1,
                    temperature,
                    derive_seed(seed, r["prompt_id"], turn, r["sample_idx"]),
                    images=tuple(r["images"]),
                )
                for r in rows_
            ]
        )

    for rnd in range(1, cfg.max_revisions + 1):
        for row in active:
            say(row, "user", FEEDBACK_PROMPT.format(question=questions[row["prompt_id"]], answer=answers[id(row)]))
        revising = []
        for row, (out,) in zip(active, ask(active, f"fb{rnd}"), strict=True):
            text = out.text
            if rnd <= cfg.enforce_revisions and not _ended(out.finish):
                text = enforce_revision(text)
            row["feedbacks"].append(text)
            row["generated_tokens"] += out.tokens
            say(row, "assistant", text)
            if needs_revision(text) and not _ended(out.finish):
                say(row, "user", REVISION_PROMPT)
                revising.append(row)
        for row, (out,) in zip(revising, ask(revising, f"rev{rnd}"), strict=True):
            row["revisions"].append(out.text)
            row["generated_tokens"] += out.tokens
            say(row, "assistant", out.text)
            answers[id(row)] = out.text
            row.update(attempt2=out.text, attempt2_tokens=out.tokens, attempt2_finish=out.finish)
        active = [r for r in revising if not _ended(r["attempt2_finish"])]


# --- SelFee chains in one reply: how a model trained on SelFee chains answers ------------------------

FEEDBACK_HEADER = "\n\n### Feedback {n}:\n"
REVISION_HEADER = "\n\n### Revision {n}:\n"
_HEADER = re.compile(r"\s*### (Feedback|Revision) (\d+):[ \t]*\n?")
# The verdicts SelFee's inference stops on (inference/inference.py), and two more spellings.
CHAIN_STOPS = (
    "Revision is not needed",
    "revision is not needed",
    "No revision is needed",
    "no revision is needed",
    "No revisions needed",
    "no revisions needed",
    "No revision needed",
    "no revision needed",
    "Revision: not needed",
)


def format_chain(answer: str, feedbacks: list[str], revisions: list[str]) -> str:
    """SelFee's training target: the answer, then each feedback and the revision that follows it.

    ``{answer}\\n\\n### Feedback 1:\\n{feedback}\\n\\n### Revision 1:\\n{revision}\\n\\n### Feedback 2:...``
    (kaistAI/SelFee, train/feedback_utils.py ``make_full_target``).
    """
    parts = [answer.strip()]
    for i, feedback in enumerate(feedbacks):
        parts.append(FEEDBACK_HEADER.format(n=i + 1) + feedback.strip())
        if i < len(revisions):
            parts.append(REVISION_HEADER.format(n=i + 1) + revisions[i].strip())
    return "".join(parts)


def parse_chain(text: str) -> tuple[str, list[str], list[str]]:
    """(answer, feedbacks, revisions) of a chain written as ``format_chain`` writes it.

    Sections are taken in the order they appear, whatever their numbers; text after a header that
    is out of turn (a revision with no feedback before it) stays with the section before.
    """
    answer, feedbacks, revisions = "", [], []
    pos, current = 0, None
    for m in _HEADER.finditer(text):
        kind = m.group(1)
        expected = "Feedback" if current in (None, "Revision") else "Revision"
        if kind != expected:
            continue
        body = text[pos : m.start()].strip()
        if current is None:
            answer = body
        else:
            (feedbacks if current == "Feedback" else revisions).append(body)
        current, pos = kind, m.end()
    body = text[pos:].strip()
    if current is None:
        answer = body
    else:
        (feedbacks if current == "Feedback" else revisions).append(body)
    return answer, feedbacks, revisions


def _selfee_chains(
    prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, model: str, seed: int
) -> list[dict[str, Any]]:
    """SelFee's inference: the model writes the whole chain, and the chain is steered at its verdicts.

    Generation stops at any ``CHAIN_STOPS`` verdict and at the header of revision
    ``max_revisions + 1``. At a verdict after fewer than ``enforce_revisions`` revisions the verdict
    becomes "Revision is needed." and the next revision header is written for the model to continue
    (revision-enforce mode, as SelFee's inference replaces the tokens); otherwise the verdict is put
    back and the chain ends there (autonomous mode stops on the model's own verdict).
    """
    cap = REVISION_HEADER.format(n=cfg.max_revisions + 1).strip()
    stops = (*CHAIN_STOPS, cap)
    rows: list[dict[str, Any]] = []
    texts: dict[int, str] = {}
    firsts = complete(
        [
            Request(
                base_conversation(p, cfg),
                cfg.n,
                cfg.temperature,
                derive_seed(seed, p.prompt_id, "a1"),
                stops,
                images=p.images,
            )
            for p in prompts
        ]
    )
    pending: list[tuple[dict[str, Any], Completion]] = []
    for p, outs in zip(prompts, firsts, strict=True):
        for idx, out in enumerate(outs):
            row = sample_row(p, idx, cfg, model, seed)
            row.update(attempt1_tokens=out.tokens, conversation=base_conversation(p, cfg))
            rows.append(row)
            texts[id(row)] = ""
            pending.append((row, out))
    step = 0
    while pending:
        step += 1
        going = []
        for row, out in pending:
            text = texts[id(row)] + out.text
            row["generated_tokens"] += out.tokens
            row["attempt1_finish"] = out.finish
            if out.stop_reason in CHAIN_STOPS:
                _, feedbacks, revisions = parse_chain(text)
                # The phrase is a verdict only inside a feedback; in an answer it is put back and writing goes on.
                in_feedback = len(feedbacks) > len(revisions)
                if in_feedback and len(revisions) < cfg.enforce_revisions:
                    before = text.rstrip()
                    verdict = NEEDED if not before or before[-1] in ".!?:\n" else NEEDED.lower()
                    text = f"{before} {verdict}".lstrip() + REVISION_HEADER.format(n=len(revisions) + 1)
                    going.append(row)
                else:
                    text += out.stop_reason
                    if not in_feedback:
                        going.append(row)
            texts[id(row)] = text
        pending = []
        # Enforced revisions take one step each; the bound also ends a chain that keeps quoting verdicts.
        if going and step <= 3 * (cfg.max_revisions + 1):
            outs = complete(
                [
                    Request(
                        r["conversation"] + _turns(("assistant", texts[id(r)])),
                        1,
                        cfg.temperature,
                        derive_seed(seed, r["prompt_id"], f"chain{step}", r["sample_idx"]),
                        stops,
                        continue_final=True,
                        images=tuple(r["images"]),
                    )
                    for r in going
                ]
            )
            pending = [(r, o) for r, (o,) in zip(going, outs, strict=True)]
    for row in rows:
        text = texts[id(row)]
        answer, feedbacks, revisions = parse_chain(text)
        row.update(
            attempt1=answer,
            feedbacks=feedbacks,
            revisions=revisions,
            attempt2=revisions[-1] if revisions else None,
            conversation=row["conversation"] + _turns(("assistant", text)),
        )
    return rows
