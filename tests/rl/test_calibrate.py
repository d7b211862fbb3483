"""Calibration: the maths on hand-counted rows, which prompts it measures, and (slow) a real run whose
pass rates the prompt filter then reads."""

import json
import math
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.config import load_config
from datagen.config import PassRateConfig, PromptsConfig
from datagen.prompts import load_prompts
from rl.calibrate import format_table, level_metrics, level_prompts, mean_pass_at_k, pass_counts, signal
from rl.config import CalibrateConfig

ROOT = Path(__file__).parents[2]


def sample(p, i, score1=None, score2=None, error=""):
    return {"prompt_id": p, "sample_idx": i, "verifier_score1": score1, "verifier_score2": score2,
            "verifier_error": error}  # fmt: skip


def test_pass_counts_leave_out_what_the_judge_could_not_score():
    rows = [sample("a", 0, 1.0), sample("a", 1, 0.0), sample("a", 2, None), sample("a", 3, 1.0, error="x"),
            sample("b", 0, 0.0)]  # fmt: skip
    assert pass_counts(rows, "verifier") == {"a": (2, 1), "b": (1, 0)}


def test_signal_is_the_share_of_prompts_neither_all_right_nor_all_wrong():
    assert signal([(4, 4), (4, 0), (4, 1), (4, 3), (0, 0)]) == {"all_right": 0.25, "all_wrong": 0.25, "mixed": 0.5}
    assert math.isnan(signal([(0, 0)])["mixed"])


def test_mean_pass_at_k_is_chens_estimator_averaged_over_prompts():
    # n=4, c=1: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2; n=4, c=0: 0; n=1 < k=2: left out
    counts = [(4, 1), (4, 0), (1, 1)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert mean_pass_at_k(counts, 2) == pytest.approx((0.5 + 0) / 2)
    assert math.isnan(mean_pass_at_k(counts, 8))


def test_level_metrics_and_the_table():
    greedy = [sample("a", 0, 1.0, 0.0), sample("b", 0, 0.0, 0.0), sample("c", 0, 1.0, 1.0), sample("d", 0, 0.0, 1.0)]
    counts = {"a": (4, 3), "b": (4, 0), "c": (4, 4), "d": (4, 2)}
    m = level_metrics(greedy, counts, "verifier", [1, 4])
    assert m["problems"] == 4 and m["acc_t1"]["value"] == 0.5 and m["acc_t2"]["value"] == 0.5
    assert m["delta_c2i"]["value"] == 0.25 and m["delta_i2c"]["value"] == 0.25
    assert m["pass_at_k"] == {"1": pytest.approx(9 / 16), "4": 0.75}
    assert m["signal"] == {"all_right": 0.25, "all_wrong": 0.25, "mixed": 0.5}
    assert m["pass_rate"]["value"] == pytest.approx(9 / 16)
    doc = {"calibrate": {"n": 4, "temperature": 0.8, "pass_k": [1, 4]}, "levels": {"add_sub_1digit": m}}
    head, row, note = format_table(doc).splitlines()
    assert head.split() == ["level", "problems", "pass@1", "greedy", "pass@1", "T=0.8", "pass@4", "T=0.8", "signal",
                            "Acc@t2", "Δ", "i→c", "c→i"]  # fmt: skip
    assert row.split() == ["add_sub_1digit", "4", "50.0%", "56.2%", "75.0%", "50.0%", "50.0%", "+0.0", "pp", "25.0%",
                           "25.0%"]  # fmt: skip
    assert "4 samples at T=0.8" in note


def test_calibration_measures_the_first_train_problems_of_each_level_unfiltered():
    cfg = load_config(None, ["prompts.limit=4", "prompts.max_operand=9", "prompts.pass_rate={file: x.jsonl}"])
    by_level = level_prompts(CalibrateConfig(size=5), cfg.prompts)
    assert list(by_level) == ["add_sub_1digit", "add_sub_2digit", "word_1step", "word_2step"]
    # the prompts a run with prompts.limit <= 5 trains on, at the config's own max_operand
    assert by_level["word_1step"] == load_prompts(PromptsConfig(max_operand=9, limit=5))
    assert all(len(ps) == 5 and all("-train-" in p.prompt_id for p in ps) for ps in by_level.values())
    only = level_prompts(CalibrateConfig(size=2, levels=["add_sub_2digit"]), cfg.prompts)
    assert list(only) == ["add_sub_2digit"]


@pytest.mark.slow
def test_calibrate_writes_the_table_and_pass_rates_the_prompt_filter_reads(tmp_path, tiny_model_dir, capsys):
    run_dir = tmp_path / "run"
    args = [
        str(ROOT / "configs/quickstart.yaml"), f"run_dir={run_dir}", f"model={tiny_model_dir}", "ray.num_cpus=2",
        "ray.include_dashboard=false", "calibrate.levels=[add_sub_1digit, word_2step]", "calibrate.size=3",
        "calibrate.n=2", "calibrate.pass_k=[1, 2]", "calibrate.max_tokens=8", "generate.engine.max_model_len=512",
    ]  # fmt: skip
    assert main(["calibrate", *args]) == 0
    out = capsys.readouterr().err
    assert "add_sub_1digit" in out and "word_2step" in out and "pass@2 T=" in out, out
    doc = json.loads((run_dir / "calibrate" / "calibration.json").read_text())
    assert list(doc["levels"]) == ["add_sub_1digit", "word_2step"]
    assert doc["calibrate"]["split"] == "train" and doc["levels"]["word_2step"]["samples"] == 6
    lines = [json.loads(x) for x in (run_dir / "calibrate" / "pass_rates.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {x["samples"] for x in lines} == {2}
    # the filter reads what calibration wrote: every measured prompt, by its id
    rates = PassRateConfig(file=str(run_dir / "calibrate" / "pass_rates.jsonl"), above=None, below=None)
    kept = load_prompts(PromptsConfig(level="add_sub_1digit", pass_rate=rates))
    assert [p.prompt_id for p in kept] == [x["prompt_id"] for x in lines if x["level"] == "add_sub_1digit"]
    # done: the same command skips it; other settings are refused without --overwrite
    assert main(["calibrate", *args]) == 0
    assert "done already" in capsys.readouterr().err
    assert main(["calibrate", *args[:-1], "generate.engine.max_model_len=1024", "calibrate.n=3"]) == 2
