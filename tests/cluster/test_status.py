"""`selfcorrect status` on a run directory laid out by hand with the stages' own writers."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pyarrow as pa
from s3_server import BUCKET

from cluster.cli import _write_config, main
from cluster.config import load_config
from cluster.status import last_error
from datagen import storage
from datagen.shards import StageDir, atomic_write_json
from datagen.storage import ObjectPath

ROOT = Path(__file__).parents[2]
OVERRIDES = ["prompts.limit=5", "generate.shard_size=2"]  # 5 prompts: 3 generate shards

TRACEBACKS = """\
INFO some library noise
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: an earlier failure
2026-11-25 01:00:00 WARNING worker.py -- noise after it
Traceback (most recent call last):
  File "a.py", line 3, in run
    raise KeyError("k")
KeyError: 'k'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "b.py", line 9, in main
    summary = stage.run(cfg, plan, overwrite)
ray.exceptions.RayTaskError(RuntimeError): generate shard 2 failed
  more detail on the next line
(raylet) some shutdown noise
"""


def shards(out: StageDir, indices: list[int], fingerprint: dict | None = None) -> None:
    out.start(fingerprint or {"stage": out.path.name})
    for i in indices:
        out.write_shard(i, pa.table({"prompt_id": [f"p{i}"], "sample_idx": [0]}))


def make_run(tmp_path: Path) -> Path:
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path / 'run'}", *OVERRIDES])
    run = Path(cfg.run_dir)
    _write_config(cfg)
    gen = StageDir(run / "generate")
    shards(gen, [0, 1, 2])
    gen.mark_done({"prompts": 5, "samples": 20, "shards": 3})
    shards(StageDir(run / "judge"), [0])
    train = run / "train"
    StageDir(train).start({"train": "x"})
    (train / "ray" / "checkpoint_2026-11-25_01-00-00.000000").mkdir(parents=True)
    atomic_write_json(train / "_progress.json", {"step": 3, "max_steps": 5})
    base = StageDir(run / "eval" / "base" / "generate")
    shards(base, [0, 1])
    base.mark_done({"shards": 2})
    shards(StageDir(run / "eval" / "base" / "judge"), [1])
    (run / "logs").mkdir()
    (run / "logs" / "driver.log").write_text(TRACEBACKS)
    return run


def test_last_error_is_the_last_tracebacks_exception(tmp_path):
    log = tmp_path / "driver.log"
    log.write_text(TRACEBACKS)
    assert last_error(log) == "ray.exceptions.RayTaskError(RuntimeError): generate shard 2 failed"
    log.write_text("noise\nerror: prompts.jsonl line 3: empty prompt\nmore noise\n")  # no traceback
    assert last_error(log) == "error: prompts.jsonl line 3: empty prompt"
    log.write_text("all fine\n")
    assert last_error(log) is None and last_error(tmp_path / "missing.log") is None


def test_status_of_a_partial_run(tmp_path, capsys):
    run = make_run(tmp_path)
    started = time.perf_counter()
    assert main(["status", str(run)]) == 0
    seconds = time.perf_counter() - started
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()[1:] if line.startswith("  ")}
    assert out.splitlines()[0] == f"run {run}"
    assert lines["generate"][0] == "done" and lines["generate"][1].startswith(f"3 shards  {run / 'generate'}")
    assert lines["judge"] == ["partial", f"1/3 shards  {run / 'judge'}"]
    assert lines["build"] == ["not", "started"]
    assert lines["train"] == ["partial", f"step 3/5, 1 checkpoint(s), last checkpoint_2026-11-25_01-00-00.000000  "
                                         f"{run / 'train'}"]
    assert lines["eval"] == ["partial", f"base: generate done, judge 1/2 shards  {run / 'eval'}"]
    assert lines["report"] == ["not", "started"] and "export" not in lines  # export: only run by name
    assert "last error: ray.exceptions.RayTaskError(RuntimeError): generate shard 2 failed\n" in out
    assert str(run / "logs" / "driver.log") in out
    assert seconds < 10  # no Ray started

    # the same from the config and its overrides; before generate finished, its total comes from the prompts
    (run / "generate" / "_SUCCESS.json").unlink()
    (run / "generate" / "part-00002.parquet").unlink()
    assert main(["status", str(ROOT / "configs/quickstart.yaml"), f"run_dir={run}", *OVERRIDES]) == 0
    out = capsys.readouterr().out
    assert f"generate  partial      2/3 shards  {run / 'generate'}" in out
    assert f"judge     partial      1/3 shards  {run / 'judge'}" in out


def test_status_of_a_finished_run_shows_no_old_error(tmp_path, capsys):
    run = make_run(tmp_path)
    for stage in ("judge", "build", "train", "eval"):
        (run / stage).mkdir(exist_ok=True)
        StageDir(run / stage).mark_done({"shards": 3, "steps": 5, "model": str(run / "train" / "model"),
                                         "models": {"base": {}, "trained": {}}})
    (run / "report").mkdir()
    (run / "report" / "report.html").write_text("<html></html>")
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["done"] * 6
    assert f"train     done         5 steps, model {run / 'train' / 'model'}" in out
    assert f"eval      done         base, trained; metrics {run / 'eval' / 'metrics.json'}" in out
    assert "last error" not in out
    assert json.loads((run / "judge" / "_SUCCESS.json").read_text())["shards"] == 3


def test_a_score_run_shows_the_offline_stages_as_skipped(tmp_path):
    from cluster.config import load_config
    from cluster.status import stage_states

    cfg = load_config(Path(__file__).parents[2] / "configs/score_quickstart.yaml", [f"run_dir={tmp_path}"])
    states = {name: (state, detail) for name, state, detail, _ in stage_states(cfg)}
    for name in ("generate", "judge", "build"):
        assert states[name][0] == "skipped" and "not part of this run" in states[name][1]
    assert states["train"][0] == "not started"


def test_status_of_a_run_on_object_storage_reads_as_the_same_run_on_disk(s3, tmp_path, capsys, monkeypatch):
    """The partial run, in a bucket as the stages write it there, with its driver log on the local disk of
    the machine that drove it (where a run on object storage keeps its logs): the same states."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = make_run(tmp_path)
    # object storage has no empty folders: the checkpoint holds a file
    (run / "train" / "ray" / "checkpoint_2026-11-25_01-00-00.000000" / "model.pt").write_bytes(b"w")
    assert main(["status", str(run)]) == 0
    local = capsys.readouterr().out
    uri = f"s3://{BUCKET}/status/run"
    storage.upload_folder(run, ObjectPath(uri), skip=("logs",))
    log = storage.local_cache(ObjectPath(uri), "logs") / "driver.log"
    log.parent.mkdir(parents=True)
    log.write_text(TRACEBACKS)

    assert main(["status", uri]) == 0
    out = capsys.readouterr().out
    assert out == local.replace(str(run / "logs"), str(log.parent)).replace(str(run), uri)
    assert "train     partial      step 3/5, 1 checkpoint(s)" in out and "last error: ray.exceptions" in out

    assert main(["status", f"s3://{BUCKET}/status/none"]) == 0  # nothing there yet: every stage not started
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"run s3://{BUCKET}/status/none (does not exist yet)"
    assert all(line.split(None, 1)[1].strip() == "not started" for line in out.splitlines()[1:])


def finished_run(tmp_path: Path) -> Path:
    """A run whose stages up to eval finished, its metrics.json written by the metrics code from judged
    rows: two models right at no second attempt on 72 problems (an Acc@t2 of 0 that once broke the plots)."""
    from rl import metrics

    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path / 'run'}"])
    run = Path(cfg.run_dir)
    _write_config(cfg)
    for stage in ("generate", "judge", "build", "train"):
        (run / stage).mkdir()
        StageDir(run / stage).mark_done({"shards": 1, "steps": 2, "model": str(run / "train" / "model")})
    models, found = {}, {}
    for label, right in (("base", 16), ("trained", 11)):
        rows = [{"prompt_id": f"q{i}", "sample_idx": 0, "task": "math", "verifier_score1": float(i < right),
                 "verifier_score2": 0.0, "verifier_error": None} for i in range(72)]
        models[label] = metrics.model_metrics(label, rows, judge="verifier")
        found[label] = metrics.outcomes(rows, "verifier")
    eval_dir = StageDir(run / "eval")
    eval_dir.path.mkdir()
    atomic_write_json(eval_dir.path / "metrics.json", {"version": 1, "eval": {"problems": 72}, "models": models,
                                                      "comparisons": metrics.comparisons(found), "pairwise": []})
    eval_dir.mark_done({"models": {"base": {}, "trained": {}}})
    return run


def test_a_report_that_fails_after_eval_is_shown_failed_with_the_command_that_redoes_it(tmp_path, capsys):
    run = finished_run(tmp_path)
    metrics_json = (run / "eval" / "metrics.json").read_bytes()
    # A real fault while the report is written: a folder where report.md goes (left by an unpacked copy, say).
    (run / "report" / "report.md").mkdir(parents=True)
    (run / "report" / "report.md" / "old.md").write_text("x")
    config = str(ROOT / "configs/quickstart.yaml")
    assert main(["report", config, f"run_dir={run}"]) == 1
    err = capsys.readouterr().err
    failed = next(line for line in err.splitlines() if line.startswith("error: "))
    redo = f"selfcorrect report {config} run_dir={run}"
    assert failed.startswith("error: report failed: IsADirectoryError: ")
    assert failed.endswith(
        f"; the generate, judge, build, train and eval outputs are intact: `{redo}` redoes only the report"
    )
    assert f"(the whole traceback and the libraries' output: {run / 'logs' / 'driver.log'})" in err
    assert (run / "eval" / "metrics.json").read_bytes() == metrics_json  # eval's output untouched
    assert not list((run / "report").glob(".*.tmp"))  # nothing half-written left behind

    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    assert lines["eval"].split()[1] == "done"
    assert lines["report"].split()[1] == "failed" and failed.removeprefix("error: report failed: ") in lines["report"]
    assert "last error" not in out  # the log's last error is that same line

    # the command it names, once the folder is out of the way, redoes the report alone
    shutil.rmtree(run / "report" / "report.md")
    assert main(shlex.split(redo)[1:]) == 0
    assert "report: " in capsys.readouterr().err and (run / "report" / "report.html").exists()
    assert (run / "report" / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["done"] * 6
    assert not (run / "report" / "_FAILED.json").exists()


def test_a_stage_failing_within_run_names_run_to_go_on(tmp_path):
    from cluster.cli import _failure_hint
    from cluster.stages import STAGES

    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"run_dir={tmp_path / 'run'}"])
    for stage in ("generate", "judge"):
        (tmp_path / "run" / stage).mkdir(parents=True)
        StageDir(tmp_path / "run" / stage).mark_done({})
    in_run = [STAGES[n] for n in ("generate", "judge", "build", "train", "eval", "report")]
    hint = _failure_hint(cfg, STAGES["build"], in_run, ["c.yaml", "run_dir=x y"])
    assert hint == ("the generate and judge outputs are intact: `selfcorrect run c.yaml 'run_dir=x y'` "
                    "goes on from the build (finished stages are skipped)")
    # a run cut short with --until: going on stops there too
    hint = _failure_hint(cfg, STAGES["build"], in_run[:4], ["c.yaml"])
    assert hint.endswith("`selfcorrect run --until train c.yaml` goes on from the build (finished stages are skipped)")
    hint = _failure_hint(cfg, STAGES["train"], [STAGES["train"]], ["c.yaml"])
    assert hint == ("the generate and judge outputs are intact: `selfcorrect train c.yaml` "
                    "takes up the train where it stopped")
    assert _failure_hint(cfg, STAGES["generate"], [STAGES["generate"]], ["c.yaml"]).startswith("`selfcorrect generate")


def test_the_train_line_counts_pairs_for_dpo_and_examples_for_sft():
    from cluster.stages.train import TRAIN

    summary = {"steps": 12, "pairs": 24, "seconds": 114.0, "model": "runs/x/train/model"}
    assert "12 steps on 24 pairs" in TRAIN.summary({**summary, "algorithm": "dpo"})
    assert "12 steps on 24 examples" in TRAIN.summary({**summary, "algorithm": "sft"})
