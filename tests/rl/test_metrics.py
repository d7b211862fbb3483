"""The eval metrics against numbers worked out by hand."""

import math

import pytest

from rl import metrics
from rl.metrics import Outcome

# Six problems, one sample each, with every transition kind:
#   p1 c->c, p2 c->c, p3 c->i, p4 i->c, p5 i->i, p6 i->c
SIX = [
    Outcome("p1", 0, True, True),
    Outcome("p2", 0, True, True),
    Outcome("p3", 0, True, False),
    Outcome("p4", 0, False, True),
    Outcome("p5", 0, False, False),
    Outcome("p6", 0, False, True),
]


def test_six_problems_every_transition():
    m = metrics.two_attempt(SIX, seed=0)
    assert m["acc_t1"]["value"] == pytest.approx(3 / 6)
    assert m["acc_t2"]["value"] == pytest.approx(4 / 6)
    assert m["delta"]["value"] == pytest.approx(1 / 6)
    assert m["delta_i2c"]["value"] == pytest.approx(2 / 6)
    assert m["delta_c2i"]["value"] == pytest.approx(1 / 6)
    assert m["delta"]["value"] == pytest.approx(m["delta_i2c"]["value"] - m["delta_c2i"]["value"])
    assert metrics.transitions(SIX) == {"c2c": 2, "c2i": 1, "i2c": 2, "i2i": 1}
    # Wilson for 3/6 by hand: centre (0.5 + z²/12) / (1 + z²/6) = 0.5,
    # half-width z/(1 + z²/6) * sqrt(0.25/6 + z²/144) = 1.19493 * 0.26143 = 0.31239
    assert m["acc_t1"]["low"] == pytest.approx(0.5 - 0.31239, abs=1e-4)
    assert m["acc_t1"]["high"] == pytest.approx(0.5 + 0.31239, abs=1e-4)
    for key in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i"):
        assert m[key]["low"] <= m[key]["value"] <= m[key]["high"], key


def test_wilson_known_value():
    # Newcombe (1998), Statistics in Medicine 17:857, example 81/263: Wilson 0.2553 to 0.3662
    low, high = metrics.wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert metrics.wilson(0, 10)[0] == 0.0 and metrics.wilson(10, 10)[1] == 1.0
    assert metrics.wilson(0, 0) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [1, 0, 0, -1, 0, 1, 1, 0, 0, 1, 0.5, -0.25]
    a = metrics.bootstrap_mean(values, seed=3)
    assert a == metrics.bootstrap_mean(values, seed=3)
    assert a != metrics.bootstrap_mean(values, seed=4)
    assert a["value"] == pytest.approx(0.27083333)
    assert -1 <= a["low"] < a["value"] < a["high"] <= 1
    assert metrics.bootstrap_mean([0.25] * 5) == {"value": 0.25, "low": 0.25, "high": 0.25}


def test_samples_are_averaged_within_a_problem_first():
    found = [
        Outcome("a", 0, True, True),
        Outcome("a", 1, False, True),
        Outcome("a", 2, False, True),
        Outcome("a", 3, False, False),
        Outcome("b", 0, False, False),
        Outcome("b", 1, False, False),
    ]
    m = metrics.two_attempt(found)
    # problem a: t1 1/4, t2 3/4; problem b: 0, 0 -> means over problems, not over the six samples
    assert m["acc_t1"]["value"] == pytest.approx((1 / 4 + 0) / 2)
    assert m["acc_t2"]["value"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["delta_i2c"]["value"] == pytest.approx((2 / 4 + 0) / 2)


def test_mcnemar_exact_on_a_known_table():
    # b = 4, c = 9: p = 2 * sum_{i<=4} C(13, i) / 2^13 = 2 * 1093 / 8192
    assert metrics.mcnemar_exact(4, 9) == pytest.approx(2 * 1093 / 8192)
    assert metrics.mcnemar_exact(9, 4) == metrics.mcnemar_exact(4, 9)
    assert metrics.mcnemar_exact(0, 0) == 1.0
    assert metrics.mcnemar_exact(5, 5) == 1.0
    assert metrics.mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_table_and_comparisons():
    base = SIX
    # the trained model: right on p5 and p3 at attempt 2 too, wrong on p1 at attempt 1
    trained = [
        Outcome("p1", 0, False, True),
        Outcome("p2", 0, True, True),
        Outcome("p3", 0, True, True),
        Outcome("p4", 0, False, True),
        Outcome("p5", 0, True, True),
        Outcome("p6", 0, None, None),  # unjudgeable: not paired
    ]
    assert metrics.paired_table(trained, base, 1) == (1, 1)  # b: p5; c: p1
    assert metrics.paired_table(trained, base, 2) == (2, 0)  # b: p3, p5
    rows = metrics.comparisons({"base": base, "trained": trained})
    assert [(r["model"], r["against"], r["metric"], r["b"], r["c"]) for r in rows] == [
        ("trained", "base", "acc_t1", 1, 1),
        ("trained", "base", "acc_t2", 2, 0),
    ]
    assert rows[1]["p_value"] == pytest.approx(0.5) and rows[0]["test"] == "mcnemar_exact"
    assert metrics.comparisons({"a": base, "b": trained}) == []  # no base to compare with


def test_pass_at_k_matches_the_closed_form():
    # Chen et al. 2021: 1 - C(n-c, k) / C(n, k); their numerically stable form 1 - prod_{i=n-c+1}^{n} (1 - k/i)
    for n, c, k in [(5, 2, 1), (5, 2, 2), (10, 3, 5), (10, 0, 3), (10, 10, 1), (20, 4, 10)]:
        closed = 1 - math.comb(n - c, k) / math.comb(n, k)
        stable = 1 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))
        assert metrics.pass_at_k(n, c, k) == pytest.approx(closed) == pytest.approx(stable)
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert metrics.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.pass_at_k(3, 1, 5)
    found = [Outcome("x", i, i < 2, i < 3) for i in range(5)] + [Outcome("y", i, False, i == 0) for i in range(5)]
    got = metrics.pass_at_ks(found, (1, 2, 10))
    assert got["t1"] == {"1": pytest.approx((2 / 5 + 0) / 2), "2": pytest.approx((0.7 + 0) / 2)}
    assert got["t2"]["1"] == pytest.approx((3 / 5 + 1 / 5) / 2) and "10" not in got["t2"]


def test_win_tie_loss_counts_ties_as_half():
    got = metrics.win_tie_loss([1, 1, 0, -1, None])
    assert got == {"win": 0.5, "tie": 0.25, "loss": 0.25, "score": 0.625, "n": 4}
    assert metrics.win_tie_loss([None])["n"] == 0


def _row(pid, idx, s1, s2, err="", task="math"):
    return {"prompt_id": pid, "sample_idx": idx, "task": task, "v_score1": s1, "v_score2": s2, "v_error": err}


def test_unjudgeable_rows_are_kept_counted_and_left_out_of_accuracy():
    rows = [
        _row("p1", 0, 1.0, 1.0),
        _row("p2", 0, 0.0, 1.0),
        _row("p3", 0, None, None, "no reference"),
        _row("p4", 0, 1.0, None, "attempt 2 missing"),
    ]
    m = metrics.model_metrics("tiny", rows, judge="v", seconds=2.0)
    assert (m["problems"], m["samples"], m["unjudgeable"]) == (4, 4, 2)
    assert m["acc_t1"]["value"] == pytest.approx(0.5) and m["acc_t2"]["value"] == pytest.approx(1.0)
    assert m["transitions"] == {"c2c": 1, "c2i": 0, "i2c": 1, "i2i": 0}
    assert m["pass_at_k"] is None and m["selfee_k"] is None
    assert m["problems_per_s"] == pytest.approx(2.0)
    assert list(m) == [
        "model", "problems", "samples", "unjudgeable", "acc_t1", "acc_t2", "delta", "delta_i2c",
        "delta_c2i", "transitions", "pass_at_k", "selfee_k", "seconds", "problems_per_s",
    ]  # fmt: skip


def test_code_rows_get_pass_at_k_and_nothing_judged_gives_null():
    rows = [_row("h1", i, float(i == 0), 1.0, task="code") for i in range(2)]
    m = metrics.model_metrics("tiny", rows, judge="v", pass_k=(1, 5))
    assert m["pass_at_k"] == {"t1": {"1": 0.5}, "t2": {"1": 1.0}}
    none = metrics.model_metrics("tiny", [_row("p", 0, None, None, "x")], judge="v")
    assert none["acc_t1"]["value"] is None and none["unjudgeable"] == 1


def test_selfee_accuracy_per_k():
    got = metrics.accuracy([("a", True), ("a", False), ("b", True), ("c", None)])
    assert got["value"] == pytest.approx((0.5 + 1) / 2)
