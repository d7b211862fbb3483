"""SelFee (Ye et al. 2023, kaistAI/SelFee): its text rules and its two ways of writing a chain.

The rules: the authors' data-generation prompts, how a feedback's verdict is read ("Revision is
needed" / "Revision is not needed", or a 1-10 score below 9), how revision-enforce mode rewrites a
verdict, and the chain format a model trained on SelFee writes (answer, ``### Feedback n:``,
``### Revision n:``). The modes: ``_selfee_rounds`` asks for each feedback and revision in a turn of its
own (the paper's data generation, with an optional teacher); ``_selfee_chains`` lets the model write
the whole chain in one reply and steers it at its verdicts (the paper's inference).
"""

from __future__ import annotations

import re
from typing import Any

from datagen.config import GenerateConfig
from datagen.modes import MODES
from datagen.records import Prompt
from datagen.turns import (
    Complete,
    Completion,
    Request,
    _turns,
    base_conversation,
    derive_seed,
    sample_row,
    single,
)

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
                Request(dialogues[id(r)], 1, temperature, derive_seed(seed, r["prompt_id"], turn, r["sample_idx"]),
                        images=tuple(r["images"]))
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
            Request(base_conversation(p, cfg), cfg.n, cfg.temperature, derive_seed(seed, p.prompt_id, "a1"), stops,
                    images=p.images)
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


def selfee_chain(answer: str, feedbacks: list[str], revisions: list[str]) -> str:
    """One SelFee completion in the paper's format, each feedback's verdict agreeing with the chain.

        {answer}\n\n### Feedback 1:\n{feedback}\n\n### Revision 1:\n{revision}\n\n### Feedback 2:\n...

    A feedback followed by a revision must ask for it: a "no revision is needed" verdict there is
    rewritten as revision-enforce mode writes it ("Revision is needed."), and a feedback with no
    verdict at all gets one appended — "needed" when a revision follows or its score is below 9,
    else "Revision is not needed." — so a trained model learns where a chain goes on and stops.
    """
    fixed = []
    for i, feedback in enumerate(feedbacks):
        text = feedback.strip()
        revised = i < len(revisions)
        if revised and not needs_revision(text):
            text = enforce_revision(text)
        elif not has_verdict(text):
            text = f"{text} {NEEDED if revised or needs_revision(text) else NOT_NEEDED}".strip()
        fixed.append(text)
    return format_chain(answer, fixed, revisions)


@MODES.register("selfee")
def selfee(prompts: list[Prompt], cfg: GenerateConfig, complete: Complete, *, model: str, seed: int,
           teach: Complete | None = None, tag: str = "{turn}") -> list[dict[str, Any]]:  # fmt: skip
    """SelFee's chains: in one reply (``selfee_format: chain``), or answer, then feedback and revision turns
    (``dialogue``), which a teacher may write (``generate.teacher``)."""
    if cfg.selfee_format == "chain":
        return _selfee_chains(prompts, cfg, complete, model, seed)
    teacher_answers = cfg.teacher is not None and cfg.teacher.answers == "teacher"
    rows = single(prompts, cfg, teach if teacher_answers and teach else complete, model=model, seed=seed)
    temperature = cfg.temperature if cfg.second_temperature is None else cfg.second_temperature
    if cfg.teacher is not None and cfg.teacher.temperature is not None:
        temperature = cfg.teacher.temperature
    _selfee_rounds(rows, prompts, cfg, temperature, seed, teach or complete)
    return rows
