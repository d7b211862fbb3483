"""The eval stage: bad input refused before anything runs, and a real two-model eval (Ray, vLLM on
CPU, the tiny random Llama) killed part way and resumed with every (model, prompt, sample) once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from cluster.cli import main
from datagen.records import SAMPLE_SCHEMA
from datagen.shards import StageDir
from rl import metrics
from rl.evaluate import EvalInputError, resolve_labels

ROOT = Path(__file__).parents[2]
PROMPTS = 12  # one shard each: enough that the second model cannot write them all between two polls


def base_args(run_dir, model, *extra):
    return [
        str(ROOT / "configs/quickstart.yaml"),
        f"run_dir={run_dir}",
        f"model={model}",
        "ray.num_cpus=2",
        "ray.include_dashboard=false",
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["eval.models={base: null, trained: null}"], "the train stage has not finished"),
        (["eval.models={base: null, mine: null}"], "unknown model label 'mine'"),
        # the training prompts are the first 40 of the train split
        (["eval.prompts.split=train"], "shares 40 problem(s) with the training"),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(tmp_path, tiny_model_dir, capsys, extra, expected):
    run_dir = tmp_path / "run"
    assert main(["eval", *base_args(run_dir, tiny_model_dir, *extra)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not run_dir.exists()


def test_a_model_folder_without_weights_is_refused(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    for name in os.listdir(tiny_model_dir):
        if not name.endswith((".safetensors", ".bin")):
            shutil.copy(tiny_model_dir / name, empty / name)
    run_dir = tmp_path / "run"
    assert main(["eval", *base_args(run_dir, tiny_model_dir, f"eval.models={{broken: {empty}}}")]) == 2
    err = capsys.readouterr().err
    assert f"eval.models.broken: {empty} has config.json but no weights" in err
    assert not run_dir.exists()


def test_default_models_are_base_then_trained_once_training_finished(tmp_path):
    assert resolve_labels(None, "base-model", tmp_path) == [("base", "base-model")]
    model = tmp_path / "train" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert resolve_labels(None, "base-model", tmp_path) == [("base", "base-model")]  # not finished yet
    with pytest.raises(EvalInputError, match="has not finished"):
        resolve_labels({"trained": None}, "base-model", tmp_path)
    StageDir(tmp_path / "train").mark_done({"steps": 1})
    assert resolve_labels(None, "base-model", tmp_path) == [("base", "base-model"), ("trained", str(model))]
    assert resolve_labels({"mine": "/m", "base": None}, "b", tmp_path) == [("mine", "/m"), ("base", "b")]


# --- end to end ----------------------------------------------------------------------------------


def e2e_args(run_dir, model):
    return base_args(
        run_dir,
        model,
        f"eval.models={{base: null, two: {model}}}",  # the same model under a second label
        f"eval.prompts.size={PROMPTS}",
        "eval.max_tokens=8",
        "generate.shard_size=1",
        "generate.engine.max_model_len=512",
    )


def start(run_dir, model):
    cmd = [sys.executable, "-m", "cluster.cli", "eval", *e2e_args(run_dir, model)]
    log = open(Path(run_dir).parent / "eval.log", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def shards(path):
    return sorted(Path(path).glob("part-*.parquet"))


def table(path):
    return (
        pads.dataset(str(path), format="parquet")
        .to_table()
        .sort_by([("prompt_id", "ascending"), ("sample_idx", "ascending")])
    )


@pytest.mark.slow
def test_two_models_killed_mid_way_resume_exactly_once(tmp_path, tiny_model_dir, capsys):
    run_dir = tmp_path / "run"
    ev = run_dir / "eval"
    # Kill the whole process group (driver, Ray, engine) once the second model has a shard, not all.
    p = start(run_dir, tiny_model_dir)
    deadline = time.monotonic() + 1200
    while not shards(ev / "two" / "generate"):
        assert p.poll() is None, (tmp_path / "eval.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert len(shards(ev / "two" / "generate")) < PROMPTS, "the run finished before the kill; the test proves nothing"
    assert (ev / "base" / "judge" / "_SUCCESS.json").exists() and not (ev / "_SUCCESS.json").exists()
    before = {f: f.stat().st_mtime_ns for f in shards(ev / "base" / "generate") + shards(ev / "base" / "judge")}

    assert start(run_dir, tiny_model_dir).wait(timeout=1200) == 0, (tmp_path / "eval.log").read_text()[-3000:]
    # the finished model was not run again
    assert {f: f.stat().st_mtime_ns for f in before} == before
    assert json.loads((ev / "base" / "generate" / "_SUCCESS.json").read_text())["shards_this_run"] == PROMPTS
    assert not list(ev.rglob(".*.tmp"))
    tables = {}
    for label in ("base", "two"):
        for stage in ("generate", "judge"):
            t = table(ev / label / stage)
            keys = list(zip(t["prompt_id"].to_pylist(), t["sample_idx"].to_pylist(), strict=True))
            assert len(keys) == len(set(keys)) == PROMPTS, (label, stage)
        tables[label] = t
    # greedy decoding of one model: the resumed model's rows are the uninterrupted model's, text for text
    for column in ("attempt1", "attempt2", "verifier_score1", "verifier_score2"):
        assert tables["two"][column].equals(tables["base"][column]), column
    assert set(tables["base"]["review_prompt"].to_pylist()) == {
        json.loads(tables["base"]["sampling"][0].as_py())["review_prompt"]
    }

    doc = json.loads((ev / "metrics.json").read_text())
    assert list(doc) == ["version", "eval", "models", "comparisons", "pairwise"]
    assert list(doc["models"]) == ["base", "two"]
    assert doc["eval"]["problems"] == PROMPTS and doc["eval"]["temperature"] == 0.0
    assert doc["eval"]["max_tokens"] == 8 and doc["eval"]["judge"] == "verifier"
    for m in doc["models"].values():
        assert (m["problems"], m["samples"]) == (PROMPTS, PROMPTS)
        assert sum(m["transitions"].values()) + m["unjudgeable"] == PROMPTS
        assert m["seconds"] > 0 and m["problems_per_s"] > 0
    assert doc["models"]["base"]["acc_t1"] == doc["models"]["two"]["acc_t1"]
    assert [(c["metric"], c["b"], c["c"], c["p_value"]) for c in doc["comparisons"]] == [
        ("acc_t1", 0, 0, 1.0),
        ("acc_t2", 0, 0, 1.0),
    ]
    summary = json.loads((ev / "_SUCCESS.json").read_text())
    assert summary["seconds"] > 0 and set(summary["models"]) == {"base", "two"}

    capsys.readouterr()
    assert main(["eval", *e2e_args(run_dir, tiny_model_dir)]) == 0
    assert "done already" in capsys.readouterr().err


# --- the stage on rows made by hand (real Ray and judge stage, no engine) --------------------------

RIGHT, WRONG = "The answer is {}.", "The answer is 99999."
# per problem (attempt 1 right?, attempt 2 right?)
BASE = [(True, True), (True, False), (False, True), (False, False)]
TWO = [(True, True), (True, True), (False, True), (False, True)]


def write_rows(stage: StageDir, plan, outcomes, unjudgeable=()):
    from datagen.turns import sample_row

    stage.start(plan.fingerprint)
    for i, shard in enumerate(plan.shards()):
        rows = []
        for p in shard:
            k = [q.prompt_id for q in plan.prompts].index(p.prompt_id)
            row = sample_row(p, 0, plan.cfg, plan.model, plan.seed)
            a1, a2 = (RIGHT.format(p.reference) if ok else WRONG for ok in outcomes[k])
            row.update(attempt1=a1, attempt2=a2, attempt1_finish="stop", attempt2_finish="stop")
            if k in unjudgeable:
                row["task"] = "open"  # the verifier has no check for it: the row is flagged, kept
            rows.append(row)
        stage.write_shard(i, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    stage.mark_done({"wall_seconds_this_run": 2.0, "generated_tokens": 40, "startup_seconds": 1.0})


def test_stage_on_hand_made_rows_gives_hand_computed_metrics(tmp_path, tiny_model_dir, ray_local):
    from cluster.config import load_config
    from cluster.stages import STAGES

    run_dir = tmp_path / "run"
    cfg = load_config(
        ROOT / "configs/quickstart.yaml",
        [
            f"run_dir={run_dir}",
            f"model={tiny_model_dir}",
            f"eval.models={{base: null, two: {tiny_model_dir}}}",
            "eval.prompts.size=4",
            "generate.shard_size=2",
            "eval.judges={verifier: {}, right: {type: 'tests.rl.eval_judges:PreferRight'}}",
        ],
    )
    stage = STAGES["eval"]
    plan = stage.prepare(cfg)
    assert [m.label for m in plan.models] == ["base", "two"] and list(plan.pairwise) == ["right"]
    write_rows(StageDir(run_dir / "eval/base/generate"), plan.models[0].generate, BASE)
    write_rows(StageDir(run_dir / "eval/two/generate"), plan.models[1].generate, TWO, unjudgeable={3})
    summary = stage.run(cfg, plan, False)

    doc = json.loads((run_dir / "eval" / "metrics.json").read_text())
    base, two = doc["models"]["base"], doc["models"]["two"]
    value = {k: base[k]["value"] for k in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")}
    assert value == pytest.approx({"acc_t1": 0.5, "acc_t2": 0.5, "delta": 0, "delta_i2c": 0.25, "delta_c2i": 0.25})
    assert base["transitions"] == {"c2c": 1, "c2i": 1, "i2c": 1, "i2i": 1} and base["unjudgeable"] == 0
    # problem 3 of "two" is unjudgeable: kept, counted, and out of every share
    assert (two["problems"], two["samples"], two["unjudgeable"]) == (4, 4, 1)
    value = {k: two[k]["value"] for k in ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")}
    assert value == pytest.approx({"acc_t1": 2 / 3, "acc_t2": 1, "delta": 1 / 3, "delta_i2c": 1 / 3, "delta_c2i": 0})
    assert two["seconds"] > 2.0 and two["pass_at_k"] is None and two["selfee_k"] is None
    # McNemar on the problems both judged: attempt 2 right only for "two" on problem 1
    assert [(c["metric"], c["b"], c["c"], c["p_value"]) for c in doc["comparisons"]] == [
        ("acc_t1", 0, 0, 1.0),
        ("acc_t2", 1, 0, 1.0),
    ]
    # the pairwise judge on (base's attempt 2, two's attempt 2): wins on problems 1 and 3, ties on 0 and 2
    assert doc["pairwise"] == [
        {"model": "two", "against": "base", "judge": "right", "win": 0.5, "tie": 0.5, "loss": 0.0, "score": 0.75,
         "n": 4}  # fmt: skip
    ]
    assert summary["models"]["two"]["acc_t2"] == 1.0
    assert (run_dir / "eval" / "two" / "vs_base" / "judge" / "_SUCCESS.json").exists()


def test_selfee_rows_hold_the_answer_after_each_k():
    from rl.evaluate import selfee_rows

    row = {"prompt_id": "p", "sample_idx": 1, "attempt1": "a0", "attempt1_finish": "stop",
           "attempt2": "r1", "attempt2_finish": "length", "revisions": ["r1"]}  # fmt: skip

    out = selfee_rows([row], 2, n=2)  # a chain that stopped after one revision keeps its last answer
    assert [(r["sample_idx"], r["attempt1"], r["attempt1_finish"], r["attempt2"]) for r in out] == [
        (1, "a0", "stop", None),
        (3, "r1", "length", None),
        (5, "r1", "length", None),
    ]
    judged = [{**r, "v_score1": float(r["attempt1"] == "r1"), "v_error": ""} for r in out]
    judged.append({"prompt_id": "q", "sample_idx": 0, "v_score1": None, "v_error": "no reference"})
    got = metrics.selfee_accuracy(judged, "v", n=2)
    assert {k: v["value"] for k, v in got.items()} == {"0": 0.0, "1": 1.0, "2": 1.0}
