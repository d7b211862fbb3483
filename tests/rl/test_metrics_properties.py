"""Properties of the eval metrics and the report over seeded random eval tables, edges included.

Each case is a table of judged eval rows per model, drawn from a seeded ``random.Random`` (case i uses
seed i, so a failure names the case that reproduces it): 1 to 20 problems, n = 1 to 5 samples each,
one to three models (with or without ``base`` and ``trained``), attempt-1 accuracies and transition
probabilities drawn from {0, 1, anything} so that 0% and 100% models and empty transition rows come up
often, unjudgeable rows (a judge error, or a score missing) from none to all, code rows (pass@k for
k = 1, 5, 10, so k > n), SelFee rows and pairwise verdicts. Named edge cases come first.

For every case the metrics.json document is built as the eval stage builds it, round-tripped through
strict JSON, and checked: every share in [0, 1] and Δ in [−1, 1], low ≤ value ≤ high, Δ = Acc@t2 −
Acc@t1 = Δi→c − Δc→i, the values equal to an exact computation with fractions, McNemar's b and c
and p in [0, 1], pass@k only for k ≤ n. The report's Markdown and HTML are rendered for every case;
drawing the PNGs takes about a second a case, so the whole report (``write_report``: plots, report.md,
report.html) is written for the named edges and the first ``RENDERED`` random cases only. The
bootstrap interval of Δ is checked on its own over ``BOOTSTRAP_CASES`` more tables.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from report_metrics import md_tables

from rl import metrics
from rl.report import INTERVALS, RunFacts, before_after, render_html, render_markdown, report_blocks, write_report

JUDGE = "verifier"
PASS_K = (1, 5, 10)
SELFEE_K = 2
RANDOM_CASES = 600
BOOTSTRAP_CASES = 5000
RENDERED = 12  # random cases whose whole report (PNGs included) is written, besides the named edges
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Spec:
    """How a case's tables are drawn: per model, P(right at t1), P(right at t2 | right, wrong at t1)."""

    problems: int
    n: int
    models: dict[str, tuple[float, float, float, float]]  # label -> (p1, p_c2c, p_i2c, unjudgeable share)
    code: bool = False
    selfee: bool = False
    pairwise: bool = False
    resamples: int = 2000  # eval.bootstrap: 100 at the least


@dataclass
class Case:
    name: str
    spec: Spec
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    truth: dict[str, dict[tuple[str, int], tuple[bool, bool] | None]] = field(default_factory=dict)
    selfee_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prefs: dict[str, list[int | None]] = field(default_factory=dict)


EDGES = {
    # the run that first showed it: 72 problems, both models wrong at every second attempt
    "acc_t2_zero_two_models": Spec(72, 1, {"base": (0.3, 0.0, 0.0, 0.0), "trained": (0.2, 0.0, 0.0, 0.0)}),
    "zero_percent": Spec(10, 1, {"base": (0.0, 0.0, 0.0, 0.0), "trained": (0.0, 0.0, 0.0, 0.0)}),
    "hundred_percent": Spec(10, 1, {"base": (1.0, 1.0, 1.0, 0.0), "trained": (1.0, 1.0, 1.0, 0.0)}),
    "one_problem": Spec(1, 1, {"base": (1.0, 0.0, 0.0, 0.0), "trained": (0.0, 1.0, 1.0, 0.0)}),
    "n_above_one_code_k_above_n": Spec(3, 4, {"base": (0.5, 0.5, 0.5, 0.0)}, code=True),
    "all_unjudgeable": Spec(5, 2, {"base": (0.5, 0.5, 0.5, 1.0), "trained": (0.5, 0.5, 0.5, 0.0)}),
    "single_model_no_trained": Spec(6, 1, {"base": (0.5, 0.9, 0.1, 0.2)}, selfee=True),
    "trained_only": Spec(6, 2, {"trained": (0.0, 0.0, 1.0, 0.0)}),
    "selfee_and_pairwise_at_zero": Spec(
        4, 1, {"base": (0.0, 0.0, 0.0, 0.0), "trained": (0.0, 0.0, 0.0, 0.0)}, selfee=True, pairwise=True
    ),
}


def draw_spec(rng: random.Random) -> Spec:
    def share() -> float:
        return rng.choice([0.0, 1.0, rng.random()])

    labels = rng.choice([["base"], ["trained"], ["base", "trained"], ["base", "trained", "other"]])
    return Spec(
        problems=rng.choice([1, 1, 2, 3, 5, 8, 20]),
        n=rng.choice([1, 1, 2, 3, 5]),
        models={
            label: (share(), share(), share(), rng.choice([0.0, 0.0, rng.random() / 2, 1.0])) for label in labels
        },
        code=rng.random() < 0.3,
        selfee=rng.random() < 0.2,
        pairwise=rng.random() < 0.3,
        resamples=rng.choice([100, 400]),
    )


def _score(rng: random.Random, right: bool) -> float:
    return rng.choice([1.0, 0.75, 0.5]) if right else rng.choice([0.0, 0.25, 0.49])  # threshold 0.5


def draw_rows(name: str, spec: Spec, rng: random.Random) -> Case:
    """Rows as the eval's judge stage leaves them (score columns, error column), and what they mean."""
    case = Case(name, spec)
    task = "code" if spec.code else "math"
    for label, (p1, c2c, i2c, bad) in spec.models.items():
        rows, truth = [], {}
        for p in range(spec.problems):
            for s in range(spec.n):
                t1 = rng.random() < p1
                t2 = rng.random() < (c2c if t1 else i2c)
                row = {"prompt_id": f"q{p}", "sample_idx": s, "task": task, f"{JUDGE}_error": None,
                       f"{JUDGE}_score1": _score(rng, t1), f"{JUDGE}_score2": _score(rng, t2)}
                if rng.random() < bad:  # unjudgeable: flagged by the judge, or an attempt left unscored
                    how = rng.choice(["error", "score1", "score2"])
                    if how == "error":
                        row[f"{JUDGE}_error"] = "could not parse the answer"
                    else:
                        row[f"{JUDGE}_{how}"] = None
                    truth[(f"q{p}", s)] = None
                else:
                    truth[(f"q{p}", s)] = (t1, t2)
                rows.append(row)
        case.rows[label], case.truth[label] = rows, truth
        if spec.selfee:
            case.selfee_rows[label] = [
                {"prompt_id": f"q{p}", "sample_idx": k * spec.n + s, f"{JUDGE}_score1": _score(rng, rng.random() < p1),
                 f"{JUDGE}_error": "x" if rng.random() < bad else None}
                for k in range(SELFEE_K + 1) for p in range(spec.problems) for s in range(spec.n)
            ]
        if spec.pairwise:
            case.prefs[label] = [rng.choice([1, 0, -1, None]) for _ in rows]
    return case


NAMES = [*EDGES, *(f"random-{i}" for i in range(RANDOM_CASES))]


def case_named(name: str) -> Case:
    if name in EDGES:
        return draw_rows(name, EDGES[name], random.Random(name))
    rng = random.Random(int(name.removeprefix("random-")))
    return draw_rows(name, draw_spec(rng), rng)


def document(case: Case) -> dict[str, Any]:
    """metrics.json as ``rl.evaluate.run_eval`` assembles it, through strict JSON and back."""
    models, found = {}, {}
    for label, rows in case.rows.items():
        models[label] = metrics.model_metrics(f"model-{label}", rows, judge=JUDGE, pass_k=PASS_K, seconds=1.5,
                                              resamples=case.spec.resamples)
        found[label] = metrics.outcomes(rows, JUDGE)
        if label in case.selfee_rows:
            models[label]["selfee_k"] = metrics.json_safe(
                metrics.selfee_accuracy(case.selfee_rows[label], JUDGE, case.spec.n)
            )
    pairwise = [
        {"model": label, "against": "base", "judge": "openai", **metrics.win_tie_loss(case.prefs[label])}
        for label in models if label != "base" and "base" in models and label in case.prefs
    ]
    doc = {
        "version": 1,
        "eval": {"prompts": case.name, "problems": case.spec.problems, "n": case.spec.n, "temperature": 0.0,
                 "max_tokens": 64, "review_prompt": "Review your answer.", "judge": JUDGE, "interval": "wilson"},
        "models": models,
        "comparisons": metrics.comparisons(found),
        "pairwise": pairwise,
    }
    return json.loads(json.dumps(metrics.json_safe(doc), allow_nan=False))


# --- the properties ------------------------------------------------------------------------------


def exact_means(truth: dict[tuple[str, int], tuple[bool, bool] | None]) -> dict[str, Fraction] | None:
    """Acc@t1, Acc@t2, Δi→c, Δc→i as exact means over problems of per-problem shares; None: nothing judged."""
    by: dict[str, list[tuple[bool, bool]]] = {}
    for (problem, _), v in truth.items():
        if v is not None:
            by.setdefault(problem, []).append(v)
    if not by:
        return None
    shares = {
        "acc_t1": lambda s: s[0],
        "acc_t2": lambda s: s[1],
        "delta_i2c": lambda s: not s[0] and s[1],
        "delta_c2i": lambda s: s[0] and not s[1],
    }
    return {
        key: sum(Fraction(sum(bool(f(x)) for x in xs), len(xs)) for xs in by.values()) / len(by)
        for key, f in shares.items()
    }


def check_interval(where: str, iv: dict[str, Any], lo: float, hi: float) -> list[str]:
    value, low, high = iv["value"], iv["low"], iv["high"]
    problems = []
    for name, x in (("value", value), ("low", low), ("high", high)):
        if x is not None and not lo <= x <= hi:
            problems.append(f"{where}: {name} {x!r} outside [{lo}, {hi}]")
    if low is None or high is None or low > high:
        problems.append(f"{where}: interval [{low!r}, {high!r}]")
    elif value is not None and not low <= value <= high:
        problems.append(f"{where}: value {value!r} outside its interval [{low!r}, {high!r}]")
    return problems


def check_document(case: Case, doc: dict[str, Any]) -> list[str]:
    problems = []
    for label, m in doc["models"].items():
        where = f"{case.name} {label}"
        for key in INTERVALS:
            problems += check_interval(f"{where} {key}", m[key], -1.0 if key == "delta" else 0.0, 1.0)
        exact = exact_means(case.truth[label])
        judged = [v for v in case.truth[label].values() if v is not None]
        if exact is None:
            shown = [k for k in INTERVALS if m[k]["value"] is not None]
            problems += [f"{where} {k}: {m[k]['value']!r} with nothing judged" for k in shown]
        else:
            for key, want in exact.items():
                if abs(m[key]["value"] - float(want)) > 1e-12:
                    problems.append(f"{where} {key}: {m[key]['value']!r}, exactly {want}")
            delta = m["delta"]["value"]
            d_acc = m["acc_t2"]["value"] - m["acc_t1"]["value"]
            d_trans = m["delta_i2c"]["value"] - m["delta_c2i"]["value"]
            if abs(delta - d_acc) > 1e-12 or abs(delta - d_trans) > 1e-12:
                problems.append(f"{where}: Δ {delta!r}, Acc@t2 − Acc@t1 {d_acc!r}, Δi→c − Δc→i {d_trans!r}")
        counts = {"c2c": 0, "c2i": 0, "i2c": 0, "i2i": 0}
        for t1, t2 in judged:
            counts[("c" if t1 else "i") + "2" + ("c" if t2 else "i")] += 1
        if m["transitions"] != counts:
            problems.append(f"{where}: transitions {m['transitions']}, expected {counts}")
        if (m["samples"], m["unjudgeable"]) != (len(case.truth[label]), len(case.truth[label]) - len(judged)):
            problems.append(f"{where}: samples {m['samples']}, unjudgeable {m['unjudgeable']}")
        problems += check_pass_at_k(where, case, label, m)
        for k, iv in (m["selfee_k"] or {}).items():
            problems += check_interval(f"{where} selfee K={k}", iv, 0.0, 1.0)
    for c in doc["comparisons"]:
        mine, theirs = case.truth[c["model"]], case.truth[c["against"]]
        t = 0 if c["metric"] == "acc_t1" else 1
        both = [(mine[k][t], theirs[k][t]) for k in mine if mine[k] is not None and theirs.get(k) is not None]
        expected = (sum(a and not b for a, b in both), sum(b and not a for a, b in both))
        if (c["b"], c["c"]) != expected or not 0.0 <= c["p_value"] <= 1.0:
            problems.append(f"{case.name} McNemar {c['model']} {c['metric']}: b, c, p = {c['b']}, {c['c']}, "
                            f"{c['p_value']!r}; expected b, c = {expected}")
    labels = list(doc["models"])
    expected_pairs = [(x, a) for x in labels if x != "base" for a in (1, 2)] if "base" in labels else []
    if [(c["model"], int(c["metric"][-1])) for c in doc["comparisons"]] != expected_pairs:
        problems.append(f"{case.name}: comparisons {doc['comparisons']}")
    for p in doc["pairwise"]:
        if p["n"] == 0:
            continue
        shares = [p[k] for k in ("win", "tie", "loss", "score")]
        if not all(0.0 <= x <= 1.0 for x in shares) or abs(p["win"] + p["tie"] + p["loss"] - 1) > 1e-12:
            problems.append(f"{case.name} pairwise {p}")
    return problems


def check_pass_at_k(where: str, case: Case, label: str, m: dict[str, Any]) -> list[str]:
    if not case.spec.code:
        return [] if m["pass_at_k"] is None else [f"{where}: pass@k on rows that are not code"]
    per_problem: dict[str, int] = {}
    for (problem, _), v in case.truth[label].items():
        if v is not None:
            per_problem[problem] = per_problem.get(problem, 0) + 1
    fewest = min(per_problem.values(), default=0)
    problems = []
    for turn in ("t1", "t2"):
        got = m["pass_at_k"][turn]
        if sorted(got, key=int) != [str(k) for k in PASS_K if k <= fewest]:
            problems.append(f"{where} pass@k {turn}: ks {sorted(got)} with {fewest} judged samples at fewest")
        values = [got[k] for k in sorted(got, key=int)]
        if not all(0.0 <= v <= 1.0 for v in values) or values != sorted(values):
            problems.append(f"{where} pass@k {turn}: {got} (each in [0, 1], rising with k)")
        if "1" in got and abs(got["1"] - m[f"acc_{turn}"]["value"]) > 1e-12:
            problems.append(f"{where} pass@1 {turn} {got['1']!r} is not Acc@{turn} {m[f'acc_{turn}']['value']!r}")
    return problems


def main_table_problems(case: Case, doc: dict[str, Any], md: str) -> list[str]:
    """The report's two-attempt table: a row per model, '–' for a metric over nothing, low ≤ value ≤ high."""
    table = next(t for t in md_tables(md) if t[0][0] == "model" and "Acc@t1 %" in t[0])
    problems = []
    if [r[0] for r in table[1:]] != list(doc["models"]):
        problems.append(f"{case.name}: report rows {[r[0] for r in table[1:]]}")
    for row in table[1:]:
        for cell, key in zip(row[1:6], INTERVALS, strict=True):
            shown = [float(x) for x in re.findall(r"[-+]?\d+\.\d", cell)]
            if doc["models"][row[0]][key]["value"] is None:
                if not cell.startswith("–"):
                    problems.append(f"{case.name} {row[0]} {key}: {cell!r} for a metric over nothing")
                continue
            lo = -100.0 if key == "delta" else 0.0
            if len(shown) != 3 or not lo <= shown[1] <= shown[0] <= shown[2] <= 100.0:
                problems.append(f"{case.name} {row[0]} {key}: report shows {cell!r}")
    return problems


@pytest.fixture(scope="module")
def generated() -> list[tuple[Case, dict[str, Any]]]:
    """Every case with its metrics.json document (built once for the module: about a second)."""
    return [(case, document(case)) for case in map(case_named, NAMES)]


def test_metrics_hold_on_every_generated_table(generated):
    problems = [p for case, doc in generated for p in check_document(case, doc)]
    assert not problems, f"{len(problems)} violations, first: " + "\n".join(problems[:20])


def test_report_tables_hold_on_every_generated_table(generated):
    problems = []
    for case, doc in generated:
        blocks = report_blocks(RunFacts(metrics=doc), {})
        md = render_markdown(blocks)
        html = render_html(blocks, {})
        problems += main_table_problems(case, doc, md)
        if "<table>" not in html or re.search(r"\bnan\b", md + html, re.IGNORECASE):
            problems.append(f"{case.name}: report text {md[:200]!r}")
        if "pass@" in md and not re.search(r"\| pass@1 %", md):
            problems.append(f"{case.name}: a pass@k table without a k")
        lines = before_after(doc).splitlines()
        if len(lines) != 1 + len(doc["models"]):
            problems.append(f"{case.name}: before/after table {lines}")
    assert not problems, f"{len(problems)} violations, first: " + "\n".join(problems[:20])


@pytest.mark.filterwarnings("error::UserWarning")  # matplotlib's, e.g. a layout that collapsed
@pytest.mark.parametrize("name", [*EDGES, *(f"random-{i}" for i in range(RENDERED))])
def test_whole_report_is_written(name, tmp_path):
    case = case_named(name)
    doc = document(case)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(doc))
    summary = write_report(run)
    out = run / "report"
    assert (out / "report.md").exists() and (out / "report.html").exists()
    assert {"accuracy.png", "transitions.png"} <= set(summary["plots"])
    assert ("selfee.png" in summary["plots"]) == bool(case.selfee_rows)
    for png in summary["plots"]:
        assert (out / png).read_bytes().startswith(PNG), png
    assert not main_table_problems(case, doc, (out / "report.md").read_text())


def test_bootstrap_interval_holds_its_mean():
    """The bootstrap interval of Δ on its own, for many more tables of per-problem differences (a
    multiple of 1/n in [−1, 1]) and down to a handful of resamples, where its percentiles can miss the mean."""
    problems = []
    for i in range(BOOTSTRAP_CASES):
        rng = random.Random(i)
        n = rng.choice([1, 2, 3, 6, 7])
        values = [(rng.randint(0, n) - rng.randint(0, n)) / n for _ in range(rng.choice([1, 2, 3, 5, 10, 30]))]
        if rng.random() < 0.3:
            values = values[:1] * len(values)  # all problems alike
        iv = metrics.bootstrap_mean(values, seed=i, resamples=rng.choice([5, 10, 50, 100]))
        problems += check_interval(f"bootstrap case {i} {values}", iv, -1.0, 1.0)
        if abs(iv["value"] - float(sum(Fraction(v) for v in values) / len(values))) > 1e-12:
            problems.append(f"bootstrap case {i}: mean {iv['value']!r} of {values}")
    assert not problems, f"{len(problems)} violations, first: " + "\n".join(problems[:10])


def test_report_of_a_metrics_file_whose_bound_passes_its_value(tmp_path):
    """metrics.json as the eval wrote it before its intervals held their estimate (Acc@t2 = 0 with a
    low bound of 3.47e-18 above it): the report draws it all the same, with no negative whisker."""
    doc = document(case_named("acc_t2_zero_two_models"))
    for m in doc["models"].values():
        m["acc_t2"] = {"value": 0.0, "low": 3.469446951953614e-18, "high": 0.05065117259645781}
        m["acc_t1"] = {"value": 1.0, "low": 0.95, "high": 0.9999999999999999}
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(doc))
    summary = write_report(run)
    assert (run / "report" / "accuracy.png").read_bytes().startswith(PNG) and summary["plots"]


def test_the_tables_cover_the_edges(generated):
    """How many cases hit each edge (so that a change to the generator cannot quietly drop one)."""
    def count(f) -> int:
        return sum(bool(f(case, doc)) for case, doc in generated)

    def any_model(f):
        return lambda case, doc: any(f(m) for m in doc["models"].values())

    counts = {
        "a 0% model at attempt 2": count(any_model(lambda m: m["acc_t2"]["value"] == 0)),
        "a 100% model at attempt 1": count(any_model(lambda m: m["acc_t1"]["value"] == 1)),
        "a model with nothing judged": count(any_model(lambda m: m["acc_t1"]["value"] is None)),
        "an empty transition row": count(any_model(lambda m: m["acc_t1"]["value"] == 0)),
        "unjudgeable rows beside judged ones": count(any_model(lambda m: 0 < m["unjudgeable"] < m["samples"])),
        "n > 1": count(lambda case, doc: case.spec.n > 1),
        "pass@k with k > n": count(lambda case, doc: case.spec.code and case.spec.n < max(PASS_K)),
        "one problem": count(lambda case, doc: case.spec.problems == 1),
        "a single model": count(lambda case, doc: len(doc["models"]) == 1),
        "no trained model": count(lambda case, doc: "trained" not in doc["models"]),
        "no discordant pair": count(lambda case, doc: any(c["b"] + c["c"] == 0 for c in doc["comparisons"])),
    }
    assert len(generated) == len(EDGES) + RANDOM_CASES
    print(counts)  # pytest -s shows them
    assert all(n >= 10 for n in counts.values()), counts
