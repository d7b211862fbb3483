"""Training sets from judged rows: preference pairs and SFT chains, one builder per method.

Every builder is a pure function of the judged rows (plain dicts with the sample and judge columns
of ``datagen.records``) and the build config. It returns the examples and, for every row it did
not use, the reason, so a run can say why it trained on fewer pairs than it generated.

Pairs are conversational as TRL's ``DPOTrainer`` loads them: ``prompt`` is the original chat,
``chosen``/``rejected`` are one assistant message each. SFT examples are ``messages``. Each example
also carries ``prompt_id``, a ``group`` (the pairs that must share an optimizer step) and a unique
``pair_id``, and the prompt's ``images`` (ids in the run's image store; TRL's trainers get the
pictures when a batch is made, ``rl.vision``).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from datagen.records import IMAGES, MESSAGES, judge_column
from datagen.registry import Registry
from datagen.selfee import selfee_chain
from datagen.shards import StageInputError
from judges.base import REGISTRY as JUDGE_TYPES
from judges.base import load as judge_class
from rl.config import BuildConfig

Row = dict[str, Any]

PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("group", pa.string()),
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("chosen_source", pa.string()),
        ("rejected_source", pa.string()),
        ("images", IMAGES),
    ]
)
SFT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt_id", pa.string()),
        ("group", pa.string()),
        ("messages", MESSAGES),
        ("images", IMAGES),
    ]
)


@dataclass
class BuildResult:
    kind: Literal["pairs", "sft"]
    examples: list[Row]
    dropped: Counter = field(default_factory=Counter)  # rows not used, by reason
    notes: Counter = field(default_factory=Counter)  # events worth counting that drop nothing

    def table(self) -> pa.Table:
        schema = PAIR_SCHEMA if self.kind == "pairs" else SFT_SCHEMA
        return pa.Table.from_pylist(self.examples, schema=schema)


Builder = Callable[[list[Row], BuildConfig], BuildResult]


def _callable_builder(spec: str, obj: Any) -> Builder:
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"builder {spec!r} is not callable")
    return obj


BUILDERS: Registry[Builder] = Registry("builder", adapt=_callable_builder)


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _pair(row: Row, pair_id: str, chosen: str, rejected: str, chosen_src: str, rejected_src: str) -> Row:
    return {
        "pair_id": pair_id,
        "prompt_id": row["prompt_id"],
        "group": row["prompt_id"],
        "prompt": [dict(m) for m in row["messages"]],
        "chosen": _assistant(chosen),
        "rejected": _assistant(rejected),
        "chosen_source": chosen_src,
        "rejected_source": rejected_src,
        "images": list(row.get("images") or []),
    }


def _error(row: Row, judge: str) -> bool:
    return bool(row.get(f"{judge}_error"))


def _by_prompt(rows: Iterable[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row["prompt_id"]].append(row)
    for members in groups.values():
        members.sort(key=lambda r: r["sample_idx"])
    return dict(sorted(groups.items()))


def require_columns(columns: Iterable[str], needed: Iterable[str], builder: str) -> None:
    """Fail with the missing column names (and the judges present) rather than on a KeyError later."""
    have = set(columns)
    missing = [c for c in needed if c not in have]
    if missing:
        judges = sorted({c.rsplit("_", 1)[0] for c in have if c.endswith("_error")})
        raise StageInputError(
            f"builder {builder!r} needs the columns {missing}; the judged rows have judges {judges} "
            "(set build.judge to one of them)"
        )


def _need(rows: list[Row], judge: str, suffixes: tuple[str, ...], builder: str) -> None:
    if rows:
        require_columns(rows[0].keys(), [judge_column(judge, s) for s in suffixes], builder)


def _unusable_pair_of_attempts(row: Row, judge: str) -> str | None:
    """Why a row's two attempts cannot be compared (no attempt 2, a judge error, a missing score), or None."""
    if not row.get("attempt2"):
        return "no_attempt2"
    if _error(row, judge):
        return "judge_error"
    if row.get(f"{judge}_score1") is None or row.get(f"{judge}_score2") is None:
        return "not_scored"
    return None


# --- SCL: correctness flips between attempts ---------------------------------------------------


def review_turn(row: Row) -> list[dict[str, str]]:
    """The conversation up to the review instruction: question, attempt 1, review prompt."""
    return [dict(m) for m in row["messages"]] + [
        {"role": "assistant", "content": row["attempt1"]},
        {"role": "user", "content": row["review_prompt"]},
    ]


@BUILDERS.register("scl")
def build_scl(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """Keep samples whose verifier verdict flips between attempt 1 and attempt 2.

    The correct attempt is ``chosen`` and the wrong one ``rejected`` (SCL, He et al. 2024). With
    ``scl_prompt: question`` both answer the original prompt, as the seed stores its pairs
    (github.com/ivy3h/SCL, data_construction.py). With ``review`` they answer the review turn
    (question, attempt 1, review prompt): a right→wrong flip teaches to keep a right answer when asked
    to review it, wrong→right to replace a wrong one, so the pair trains the turn the second attempt is
    made in. ``both`` gives each flip as both pairs.
    """
    judge = cfg.judge or "verifier"
    _need(rows, judge, ("score1", "score2", "error"), "scl")
    out = BuildResult("pairs", [])
    for row in rows:
        s1, s2 = row.get(f"{judge}_score1"), row.get(f"{judge}_score2")
        if unusable := _unusable_pair_of_attempts(row, judge):
            out.dropped[unusable] += 1
        elif (s1 >= 0.5) == (s2 >= 0.5):
            out.dropped["both_correct" if s1 >= 0.5 else "both_wrong"] += 1
        else:
            good, bad = ("attempt1", "attempt2") if s1 >= 0.5 else ("attempt2", "attempt1")
            out.notes["right_to_wrong" if s1 >= 0.5 else "wrong_to_right"] += 1
            pid = f"{row['prompt_id']}:{row['sample_idx']}"
            if cfg.scl_prompt in ("question", "both"):
                out.examples.append(_pair(row, pid, row[good], row[bad], good, bad))
            if cfg.scl_prompt in ("review", "both"):
                pair = _pair(row, f"{pid}:review", row[good], row[bad], good, bad)
                pair["prompt"] = review_turn(row)
                out.examples.append(pair)
    return out


# --- STaR: SFT on the model's own successful corrections ----------------------------------------


@BUILDERS.register("star")
def build_star(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """SFT examples of the model's own successful second attempts (STaR, Zelikman et al. 2022, as the
    self-correction baseline of SCoRe, Kumar et al. 2024, Section 4).

    A sample whose attempt 1 is wrong and attempt 2 right becomes the conversation question, attempt 1,
    review prompt, attempt 2; SFT learns attempt 2 alone (the turns before it are the prompt). With
    ``star_correct_to_correct`` right→right samples are kept too (SCoRe's D+_STaR), which teaches the
    model to leave a right answer as it is — and, SCoRe finds, to leave attempt 1 unchanged in general.
    """
    judge = cfg.judge or "verifier"
    _need(rows, judge, ("score1", "score2", "error"), "star")
    out = BuildResult("sft", [])
    for row in rows:
        s1, s2 = row.get(f"{judge}_score1"), row.get(f"{judge}_score2")
        if unusable := _unusable_pair_of_attempts(row, judge):
            out.dropped[unusable] += 1
        elif s2 < 0.5:
            out.dropped["attempt2_wrong"] += 1
        elif s1 >= 0.5 and not cfg.star_correct_to_correct:
            out.dropped["both_correct"] += 1
        else:
            out.notes["right_to_right" if s1 >= 0.5 else "wrong_to_right"] += 1
            out.examples.append(
                {
                    "pair_id": f"{row['prompt_id']}:{row['sample_idx']}",
                    "prompt_id": row["prompt_id"],
                    "group": row["prompt_id"],
                    "messages": review_turn(row) + _assistant(row["attempt2"]),
                }
            )
    return out


# --- Self-Contrast: the reference against many dissimilar negatives -----------------------------


def negatives_rng(seed: int, prompt_id: str) -> random.Random:
    """The random source of one prompt's negatives: a function of (seed, prompt_id) alone, so the
    pick does not depend on row order, shards or the other prompts."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


@BUILDERS.register("self_contrast")
def build_self_contrast(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """The reference as ``chosen`` against k negatives drawn at random from the filtered responses.

    Self-Contrast (Liu et al., 2024, "Extensive Self-Contrast Enables Feedback-Free Language Model
    Alignment", arXiv 2404.00604; its ``construct_synthetic_data.py``, mode ``lastdedup-75``): per
    prompt, drop near-duplicates (the embedding judge's ``_dup``), then the ``drop_similar_fraction``
    of the remaining responses most similar to the reference (``_score1`` is the cosine to the
    reference), then draw ``negatives`` of the rest uniformly at random, seeded by (``seed``,
    prompt_id). A prompt with fewer than k responses left gives no pairs, as in the seed.
    """
    judge = cfg.judge or "embedding"
    _need(rows, judge, ("score1", "dup", "error"), "self_contrast")
    seed = cfg.seed or 0
    out = BuildResult("pairs", [])
    for prompt_id, members in _by_prompt(rows).items():
        reference = members[0].get("reference")
        if not reference:
            out.dropped["no_reference"] += len(members)
            continue
        kept: list[Row] = []
        for row in members:
            if not (row.get("attempt1") or "").strip():
                out.dropped["empty_response"] += 1
            elif _error(row, judge) or row.get(f"{judge}_score1") is None:
                out.dropped["judge_error"] += 1
            elif row.get(f"{judge}_dup"):
                out.dropped["near_duplicate"] += 1
            elif row["attempt1"].strip() == reference.strip():
                out.dropped["equals_reference"] += 1
            else:
                kept.append(row)
        kept.sort(key=lambda r: (r[f"{judge}_score1"], r["sample_idx"]))  # least similar first
        n_similar = round(len(kept) * cfg.drop_similar_fraction)
        if n_similar:
            out.dropped["too_similar"] += n_similar
            kept = kept[: len(kept) - n_similar]
        if len(kept) < cfg.negatives:
            out.dropped["fewer_than_k"] += len(kept)
            continue
        kept.sort(key=lambda r: r["sample_idx"])
        picked = sorted(negatives_rng(seed, prompt_id).sample(range(len(kept)), cfg.negatives))
        out.dropped["not_drawn"] += len(kept) - len(picked)
        for row in (kept[i] for i in picked):
            pid = f"{prompt_id}:{row['sample_idx']}"
            out.examples.append(_pair(row, pid, reference, row["attempt1"], "reference", "attempt1"))
    return out


# --- SIMA: the model's own pick ----------------------------------------------------------------


@BUILDERS.register("sima")
def build_sima(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """The self-critic's pick is ``chosen`` (SIMA).

    ``_pref`` 1 means the first response of the pair, 2 the second. The pair is (attempt1, attempt2)
    on rows that have an attempt 2, else (sample 0's attempt1, this row's attempt1).
    """
    judge = cfg.judge or "self_critic"
    _need(rows, judge, ("pref", "error"), "sima")
    out = BuildResult("pairs", [])
    for prompt_id, members in _by_prompt(rows).items():
        greedy = next((r for r in members if r["sample_idx"] == 0), None)
        for row in members:
            if row.get("attempt2"):
                first, second, src = row["attempt1"], row["attempt2"], ("attempt1", "attempt2")
            elif row["sample_idx"] == 0:
                out.dropped["greedy_row"] += 1
                continue
            elif greedy is None:
                out.dropped["no_greedy_sample"] += 1
                continue
            else:
                first, second, src = greedy["attempt1"], row["attempt1"], ("sample0.attempt1", "attempt1")
            pref = row.get(f"{judge}_pref")
            if _error(row, judge) or pref is None:
                out.dropped["judge_error"] += 1
            elif pref == 0:
                out.dropped["tie"] += 1
            elif (first or "").strip() == (second or "").strip():
                out.dropped["identical"] += 1
            else:
                chosen, rejected = (first, second) if pref == 1 else (second, first)
                c_src, r_src = src if pref == 1 else src[::-1]
                pid = f"{prompt_id}:{row['sample_idx']}"
                out.examples.append(_pair(row, pid, chosen, rejected, c_src, r_src))
    return out


# --- SelFee: answer, feedback, revision chains ---------------------------------------------------

def selfee_threshold(cfg: BuildConfig, judges: dict[str, Any] | None = None) -> float | None:
    """The final-answer score a SelFee chain needs, in ``build.judge``'s units (None: no filter).

    ``build.min_score`` when set, else the pass mark the judge's class declares (``pass_mark``); the
    judge's type is its settings' in ``judges`` (instance name -> settings), else ``build.judge`` itself.
    ``ValueError`` (naming ``build.min_score``) for a judge with neither, and for a threshold outside
    the judge's declared scale: it would keep every chain or none.
    """
    if cfg.judge is None:
        return None
    settings = (judges or {}).get(cfg.judge)
    kind = settings.type if settings is not None else cfg.judge
    cls = judge_class(kind) if settings is not None or kind in JUDGE_TYPES else None
    threshold = cfg.min_score if cfg.min_score is not None else getattr(cls, "pass_mark", None)
    if threshold is None:
        known = ", ".join(
            f"{name} {c.score_scale[0]:g}-{c.score_scale[1]:g}" for name, c in JUDGE_TYPES.items() if c.score_scale
        )
        raise ValueError(f"build.min_score: judge {cfg.judge!r} has no known score scale: set build.min_score in "
                         f"its units (known: {known})")  # fmt: skip
    low, high = getattr(cls, "score_scale", None) or (float("-inf"), float("inf"))
    if not low < threshold <= high:
        # at or below the scale's bottom keeps every chain; above its top keeps none
        raise ValueError(
            f"build.min_score: {threshold:g} is outside the {cfg.judge} judge's scale ({low:g}-{high:g}): "
            "it would keep every chain or none"
        )
    return threshold


@BUILDERS.register("selfee")
def build_selfee(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """SFT examples of the whole answer -> feedback -> revision chain (SelFee, Ye et al. 2023).

    With ``build.judge`` set, a chain is kept when the judge's score of its final answer (the last
    revision, else the answer) is at least ``selfee_threshold`` (``build.min_score``, or the judge's
    pass mark). The paper keeps every teacher chain; the filter is for chains a weaker model wrote.
    """
    threshold = selfee_threshold(cfg) if cfg.min_score is None else cfg.min_score
    if cfg.judge is not None:
        _need(rows, cfg.judge, ("score1", "error"), "selfee")
    out = BuildResult("sft", [])
    for row in rows:
        feedbacks = list(row.get("feedbacks") or [])
        revisions = list(row.get("revisions") or [])
        if not (row.get("attempt1") or "").strip():
            out.dropped["empty_answer"] += 1
        elif not feedbacks:
            out.dropped["no_feedback"] += 1
        elif len(revisions) > len(feedbacks):
            out.dropped["revision_without_feedback"] += 1
        elif not all(r.strip() for r in revisions) or not all(f.strip() for f in feedbacks):
            out.dropped["empty_turn"] += 1
        elif cfg.selfee_only_revised and not revisions:
            out.dropped["not_revised"] += 1
        elif cfg.judge is not None and (_error(row, cfg.judge) or _final_score(row, cfg.judge) is None):
            out.dropped["judge_error"] += 1
        elif threshold is not None and _final_score(row, cfg.judge) < threshold:
            out.dropped["final_below_min_score"] += 1
        else:
            chain = selfee_chain(row["attempt1"], feedbacks, revisions)
            out.examples.append(
                {
                    "pair_id": f"{row['prompt_id']}:{row['sample_idx']}",
                    "prompt_id": row["prompt_id"],
                    "group": row["prompt_id"],
                    "messages": [dict(m) for m in row["messages"]] + _assistant(chain),
                    "images": list(row.get("images") or []),
                }
            )
    return out


def _final_score(row: Row, judge: str | None) -> float | None:
    """The judge's score of the chain's final answer: attempt 2 (the last revision), else attempt 1."""
    if row.get("attempt2") is not None:
        return row.get(f"{judge}_score2")
    return row.get(f"{judge}_score1")


# --- best vs worst by any scalar judge ------------------------------------------------------------


def _scored_response(row: Row, judge: str, which: str) -> tuple[str | None, float | None, str]:
    if which == "attempt2" or (which == "last" and row.get("attempt2")):
        return row.get("attempt2"), row.get(f"{judge}_score2"), "attempt2"
    return row.get("attempt1"), row.get(f"{judge}_score1"), "attempt1"


@BUILDERS.register("best_vs_worst")
def build_best_vs_worst(rows: list[Row], cfg: BuildConfig) -> BuildResult:
    """Per prompt, the best-scored response is ``chosen`` and the worst ``rejected``.

    Rows the judge could not score are dropped (counted); among equal scores the lowest
    ``sample_idx`` wins, so the output does not depend on row order.
    """
    judge = cfg.judge or "reward_model"
    _need(rows, judge, ("score1", "error"), "best_vs_worst")
    out = BuildResult("pairs", [])
    for prompt_id, members in _by_prompt(rows).items():
        scored = []
        for row in members:
            text, score, src = _scored_response(row, judge, cfg.score_attempt)
            if not (text or "").strip():
                out.dropped["empty_response"] += 1
            elif _error(row, judge) or score is None:
                out.dropped["judge_error"] += 1
            else:
                scored.append((score, row, text, src))
        if len(scored) < 2:
            out.dropped["too_few_scored"] += len(scored)
            continue
        best = max(scored, key=lambda s: (s[0], -s[1]["sample_idx"]))
        worst = min(scored, key=lambda s: (s[0], s[1]["sample_idx"]))
        if best[0] == worst[0]:
            out.dropped["all_tied"] += len(scored)
        elif best[0] - worst[0] <= cfg.min_margin:
            out.dropped["small_margin"] += len(scored)
        elif best[2].strip() == worst[2].strip():
            out.dropped["identical"] += len(scored)
        else:
            out.dropped["not_extreme"] += len(scored) - 2
            ties = sum(1 for s in scored if s[0] == best[0]) - 1
            if ties:
                out.notes["best_tie_broken"] += 1
            if sum(1 for s in scored if s[0] == worst[0]) > 1:
                out.notes["worst_tie_broken"] += 1
            pid = f"{prompt_id}:{best[1]['sample_idx']}-{worst[1]['sample_idx']}"
            row = best[1]
            out.examples.append(
                _pair(
                    row,
                    pid,
                    best[2],
                    worst[2],
                    f"sample{best[1]['sample_idx']}.{best[3]}",
                    f"sample{worst[1]['sample_idx']}.{worst[3]}",
                )
            )
    return out


def get_builder(name: str) -> Builder:
    """A builder by registry name, or ``"package.module:Name"`` for a user's own callable (a class is
    instantiated)."""
    return BUILDERS.get(name)
