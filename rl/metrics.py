"""Self-correction metrics: pure functions of judged eval rows (no ray, vllm or torch).

The eval stage (``rl.evaluate``) calls them on the judged rows of each model and writes their
results to ``RUN_DIR/eval/metrics.json``; the report reads that file, so everything here can be
recomputed anywhere from the Parquet rows alone.

An *outcome* is one judged sample: its problem id, its sample index, and whether attempt 1 and
attempt 2 were right (``None`` where the judge could not score the attempt: such samples are
counted as unjudgeable and left out of every accuracy). With ``n`` samples per problem, each
problem's accuracy is the mean over its judged samples, and a metric is the mean over problems,
so every problem weighs the same however many of its samples were judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


@dataclass(frozen=True)
class Outcome:
    """One sample of one problem: was attempt 1 right, was attempt 2 right (None: not judged)."""

    problem: str
    sample: int
    t1: bool | None
    t2: bool | None

    @property
    def judged(self) -> bool:
        return self.t1 is not None and self.t2 is not None


def interval(value: float, low: float, high: float) -> dict[str, float]:
    """An estimate and its interval, which always holds it: low ≤ value ≤ high.

    Rounding can leave a Wilson bound a hair past its estimate (a low of 3.5e-18 over a share of 0),
    and a percentile bootstrap over few problems or resamples can miss the mean; the interval is
    widened to the estimate then, so that error bars drawn from it are never negative. A NaN value
    (a metric over nothing) keeps the bounds given.
    """
    value, low, high = float(value), float(low), float(high)
    if not math.isnan(value):
        low, high = min(low, value), max(high, value)
    return {"value": value, "low": low, "high": high}


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson, 1927).

    With p = successes / n:  centre = (p + z²/2n) / (1 + z²/n),
    half-width = z / (1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).  ``successes`` may be fractional (a mean
    over samples times the number of problems). n = 0 gives the uninformative (0, 1). The bounds
    hold p, and at p = 0 the low bound is exactly 0, at p = 1 the high bound exactly 1 (in exact
    arithmetic centre − half = 0 there; in floating point it can come out as 3.5e-18).
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    low = 0.0 if p == 0.0 else min(max(0.0, centre - half), p)
    high = 1.0 if p == 1.0 else max(min(1.0, centre + half), p)
    return low, high


def proportion(values: Sequence[float]) -> dict[str, float]:
    """The mean of per-problem shares in [0, 1] with its 95% Wilson interval over the problems."""
    n = len(values)
    if n == 0:
        return interval(math.nan, 0.0, 1.0)
    mean = float(sum(values)) / n
    low, high = wilson(mean * n, n)
    return interval(mean, low, high)


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, resamples: int = 2000, level: float = 0.95):
    """The mean of per-problem values with a seeded percentile-bootstrap interval over problems (Efron, 1979).

    Draw ``resamples`` samples of the problems with replacement, take each one's mean, and report the
    (1-level)/2 and (1+level)/2 quantiles of those means (widened to the mean where they miss it,
    see ``interval``).
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return interval(math.nan, -1.0, 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    means = arr[idx].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return interval(arr.mean(), low, high)


def _per_problem(outcomes: Iterable[Outcome]) -> dict[str, list[Outcome]]:
    by: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.judged:
            by.setdefault(o.problem, []).append(o)
    return by


def transitions(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Counts of judged samples by (attempt 1, attempt 2): c2c, c2i, i2c, i2i (c: correct, i: incorrect)."""
    counts = {"c2c": 0, "c2i": 0, "i2c": 0, "i2i": 0}
    for o in outcomes:
        if o.judged:
            counts[("c" if o.t1 else "i") + "2" + ("c" if o.t2 else "i")] += 1
    return counts


def two_attempt(outcomes: Sequence[Outcome], *, seed: int = 0, resamples: int = 2000) -> dict[str, dict[str, float]]:
    """SCoRe's self-correction metrics (Kumar et al., 2024, "Training Language Models to Self-Correct
    via Reinforcement Learning", Section 3/Table 2), each a mean over problems p of the per-problem
    share over its judged samples s:

    - Acc@t1 = mean_p mean_s 1[y1 correct];  Acc@t2 = mean_p mean_s 1[y2 correct]
    - Δi→c = mean_p mean_s 1[y1 wrong, y2 correct] (a share of *all* problems, as in the paper)
    - Δc→i = mean_p mean_s 1[y1 correct, y2 wrong]
    - Δ(t1,t2) = Acc@t2 − Acc@t1 = Δi→c − Δc→i

    Acc and the Δ shares carry 95% Wilson intervals over the problems; Δ, a difference that can be
    negative, a seeded bootstrap interval over problems.
    """
    by = _per_problem(outcomes)
    t1, t2, i2c, c2i, delta = [], [], [], [], []
    for samples in by.values():
        k = len(samples)
        a1 = sum(bool(o.t1) for o in samples) / k
        a2 = sum(bool(o.t2) for o in samples) / k
        t1.append(a1)
        t2.append(a2)
        i2c.append(sum((not o.t1) and bool(o.t2) for o in samples) / k)
        c2i.append(sum(bool(o.t1) and not o.t2 for o in samples) / k)
        delta.append(a2 - a1)
    return {
        "acc_t1": proportion(t1),
        "acc_t2": proportion(t2),
        "delta": bootstrap_mean(delta, seed=seed, resamples=resamples),
        "delta_i2c": proportion(i2c),
        "delta_c2i": proportion(c2i),
    }


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test (McNemar, 1947) on the discordant pairs of a paired 2x2 table.

    Under H0 the b + c discordant pairs split as Binomial(b + c, 1/2):
    p = min(1, 2 · Σ_{i=0}^{min(b,c)} C(b+c, i) / 2^(b+c)); no discordant pair gives p = 1.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_table(model: Sequence[Outcome], against: Sequence[Outcome], attempt: int) -> tuple[int, int]:
    """Discordant counts for McNemar at attempt 1 or 2, pairing samples by (problem, sample index).

    b = pairs where ``model`` is right and ``against`` wrong; c = ``model`` wrong, ``against`` right.
    Only pairs judged on both sides count. With n = 1 a pair is a problem; with n > 1 the samples
    of a problem are treated as separate pairs (an approximation that ignores their correlation).
    """
    def side(o: Outcome) -> bool | None:
        return o.t1 if attempt == 1 else o.t2

    theirs = {(o.problem, o.sample): side(o) for o in against if o.judged}
    b = c = 0
    for o in model:
        other = theirs.get((o.problem, o.sample))
        if not o.judged or other is None:
            continue
        mine = side(o)
        b += int(mine and not other)
        c += int(other and not mine)
    return b, c


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator of Chen et al., 2021 ("Evaluating Large Language Models Trained
    on Code", Eq. 1) for one problem with n samples of which c pass: 1 − C(n−c, k) / C(n, k).
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_ks(outcomes: Sequence[Outcome], ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Mean over problems of pass@k at attempt 1 ("t1") and attempt 2 ("t2"), for every k ≤ the
    fewest judged samples of any problem (Chen et al., 2021)."""
    by = _per_problem(outcomes)
    if not by:
        return {"t1": {}, "t2": {}}
    fewest = min(len(s) for s in by.values())
    out: dict[str, dict[str, float]] = {}
    for name, attr in (("t1", "t1"), ("t2", "t2")):
        out[name] = {
            str(k): float(np.mean([pass_at_k(len(s), sum(bool(getattr(o, attr)) for o in s), k) for s in by.values()]))
            for k in ks
            if k <= fewest
        }
    return out


def win_tie_loss(prefs: Sequence[int | None]) -> dict[str, float]:
    """Win/tie/loss shares of a pairwise judge and the score win + tie/2 (ties count ½, as in
    AlpacaEval and SIMA's pairwise comparisons).

    ``prefs`` holds one verdict per compared pair: 1 the model wins, -1 it loses, 0 a tie; None
    (no verdict) is left out of n.
    """
    votes = [p for p in prefs if p is not None]
    n = len(votes)
    if n == 0:
        return {"win": math.nan, "tie": math.nan, "loss": math.nan, "score": math.nan, "n": 0}
    win = sum(p > 0 for p in votes) / n
    tie = sum(p == 0 for p in votes) / n
    loss = sum(p < 0 for p in votes) / n
    return {"win": win, "tie": tie, "loss": loss, "score": win + tie / 2, "n": n}


def accuracy(correct: Sequence[tuple[str, bool | None]]) -> dict[str, float]:
    """Accuracy over problems of (problem, correct) samples, unjudged (None) left out, with its
    Wilson interval: the per-K accuracy of SelFee's revision-enforce inference (Ye et al., 2023,
    "SelFee: Iterative Self-Revising LLM Empowered by Self-Feedback Generation")."""
    by: dict[str, list[bool]] = {}
    for problem, ok in correct:
        if ok is not None:
            by.setdefault(problem, []).append(ok)
    return proportion([sum(v) / len(v) for v in by.values()])


def json_safe(value):
    """NaN (a metric over no judged sample) becomes null, so metrics.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


# --- from judged rows to the metrics.json document ------------------------------------------------


def outcomes(rows: Iterable[dict], judge: str, threshold: float = 0.5) -> list[Outcome]:
    """One ``Outcome`` per judged eval row: an attempt is right when the judge's score is at least
    ``threshold``. A row the judge flagged (``NAME_error`` set) or left unscored is unjudgeable."""
    out = []
    for r in rows:
        s1, s2, err = r.get(f"{judge}_score1"), r.get(f"{judge}_score2"), r.get(f"{judge}_error")
        if err or s1 is None or s2 is None:
            out.append(Outcome(r["prompt_id"], int(r["sample_idx"]), None, None))
        else:
            out.append(Outcome(r["prompt_id"], int(r["sample_idx"]), s1 >= threshold, s2 >= threshold))
    return out


def model_metrics(
    model: str,
    rows: Sequence[dict],
    *,
    judge: str,
    threshold: float = 0.5,
    pass_k: Sequence[int] = (1, 5, 10),
    seconds: float | None = None,
    seed: int = 0,
    resamples: int = 2000,
) -> dict:
    """One model's entry of metrics.json from its judged eval rows (see ``two_attempt``)."""
    found = outcomes(rows, judge, threshold)
    problems = len({o.problem for o in found})
    code = any(r.get("task") == "code" for r in rows)
    entry = {
        "model": model,
        "problems": problems,
        "samples": len(found),
        "unjudgeable": sum(not o.judged for o in found),
        **two_attempt(found, seed=seed, resamples=resamples),
        "transitions": transitions(found),
        "pass_at_k": pass_at_ks(found, pass_k) if code else None,
        "selfee_k": None,
        "seconds": seconds,
        "problems_per_s": problems / seconds if seconds else None,
    }
    return json_safe(entry)


def comparisons(by_label: dict[str, list[Outcome]], against: str = "base") -> list[dict]:
    """McNemar's exact test of every other model against ``against`` at attempt 1 and attempt 2."""
    if against not in by_label:
        return []
    out = []
    for label, found in by_label.items():
        if label == against:
            continue
        for attempt in (1, 2):
            b, c = paired_table(found, by_label[against], attempt)
            out.append(
                {
                    "model": label,
                    "against": against,
                    "metric": f"acc_t{attempt}",
                    "b": b,
                    "c": c,
                    "p_value": mcnemar_exact(b, c),
                    "test": "mcnemar_exact",
                }
            )
    return out


def pref_vote(row: dict, judge: str) -> int | None:
    """A pairwise judge's verdict on (the other model's answer, this model's answer) as this model's
    vote: response 2 preferred is a win (1), response 1 a loss (-1), 0 a tie; a flagged row none."""
    pref, err = row.get(f"{judge}_pref"), row.get(f"{judge}_error")
    if err or pref is None:
        return None
    return {2: 1, 1: -1, 0: 0}[int(pref)]


def selfee_accuracy(rows: Iterable[dict], judge: str, n: int, threshold: float = 0.5) -> dict[str, dict]:
    """Accuracy after k enforced revisions for each k (see ``accuracy``), from rows whose sample index
    is k * n + sample and whose attempt 1 is the answer after k revisions."""
    by_k: dict[int, list[tuple[str, bool | None]]] = {}
    for r in rows:
        score, err = r.get(f"{judge}_score1"), r.get(f"{judge}_error")
        ok = None if err or score is None else score >= threshold
        by_k.setdefault(int(r["sample_idx"]) // n, []).append((r["prompt_id"], ok))
    return {str(k): accuracy(by_k[k]) for k in sorted(by_k)}
