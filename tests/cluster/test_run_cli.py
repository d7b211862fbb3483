"""`selfcorrect run`: every stage in order on real parts (Ray, vLLM on CPU, MiniLM, TRL), then a
second run that skips them all."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.dataset as pads
from vllm_server import free_port

ROOT = Path(__file__).parents[2]
def test_run_every_stage_then_skip_them(tmp_path, tiny_model_dir):
    # run_dir relative to where the command runs, as in the quickstart: Ray Train's workers run
    # in a directory of their own and must still find the build stage's files
    run_dir = tmp_path / "run"
    argv = [
        sys.executable, "-m", "cluster.cli", "run", str(ROOT / "configs/quickstart.yaml"),
        "run_dir=run", f"model={tiny_model_dir}",
        "prompts.limit=4", "generate.n=3", "generate.max_tokens=8", "generate.shard_size=2",
        "generate.engine.max_model_len=512", "ray.num_cpus=2", "ray.include_dashboard=false",
        "judges.verifier=false", "judges.embedding={}",
        "build.builder=best_vs_worst", "build.judge=embedding",
        "train.max_steps=2", "train.batch_size=2", "train.max_length=128", "train.checkpoint_every=1",
        "eval.prompts.size=2",
    ]
    # The record a killed `ray start --head` leaves behind: a run with no address must still start
    # its own Ray, not try to join the dead head. (A short dir: Ray's socket paths go under it.)
    ray_tmp = tempfile.mkdtemp(prefix="raytmp-")
    (Path(ray_tmp) / "ray").mkdir()
    (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        first = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=1200, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    err = first.stderr.decode()  # bytes: a bar redrawn with carriage returns stays one line
    assert first.returncode == 0, err[-4000:]
    for stage in ("generate", "judge", "build", "train", "eval"):
        assert (run_dir / stage / "_SUCCESS.json").exists(), stage
    # The terminal gets a bar and a line per stage and the before/after table; the libraries' output
    # (vLLM, Ray, Ray Train, TRL) is in RUN_DIR/logs/.
    assert err.count("\n") <= 25 and first.stdout == b"", err
    for noise in ("Traceback", "WARNING", "Warning", "INFO", "pid="):
        assert noise not in err, err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("ray: started a local Ray"), err
    assert any(line.startswith("generate: 4 prompts -> 12 samples") for line in lines), err
    assert f"report: {run_dir / 'report' / 'report.html'}" in err
    logs = run_dir / "logs"
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    workers = "".join(p.read_text(errors="replace") for p in (logs / "ray").glob("session_*/worker-*"))
    assert "vLLM" in workers or "vllm" in workers  # the engine's own output, kept with the run
    assert (run_dir / "config.yaml").exists()
    judged = pads.dataset(str(run_dir / "judge"), format="parquet").to_table()
    assert judged.num_rows == 12 and judged["embedding_error"].to_pylist() == [""] * 12
    built = json.loads((run_dir / "build" / "_SUCCESS.json").read_text())
    assert built["pairs_out"] == 4  # one best-vs-worst pair per prompt
    trained = json.loads((run_dir / "train" / "_SUCCESS.json").read_text())
    assert trained["steps"] == 2 and (run_dir / "train" / "model" / "config.json").exists()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "trained"] and metrics["eval"]["problems"] == 2
    # the trained model, merged, loaded and sampled by vLLM
    trained = metrics["models"]["trained"]
    assert Path(trained["model"]).parts[-2:] == ("train", "model") and trained["samples"] == 2

    # The same command again skips the five finished stages and builds the report anew, every time; here
    # that fails (a folder where report.md goes): the eval's output is kept, the error names the command
    # that redoes only the report, and status shows it failed.
    metrics_json = (run_dir / "eval" / "metrics.json").read_bytes()
    (run_dir / "report" / "report.md").unlink()
    (run_dir / "report" / "report.md").mkdir()
    broken = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1 and broken.stderr.count("done already") == 5, broken.stderr[-4000:]
    redo = shlex.join(["selfcorrect", "report", *argv[4:]])
    assert "error: report failed: IsADirectoryError: " in broken.stderr
    intact = "the generate, judge, build, train and eval outputs are intact"
    assert f"{intact}: `{redo}` redoes only the report" in broken.stderr
    assert (run_dir / "eval" / "metrics.json").read_bytes() == metrics_json
    status = [sys.executable, "-m", "cluster.cli", "status", "run"]
    shown = subprocess.run(status, cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    states = {line.split()[0]: line.split()[1] for line in shown.splitlines()[1:] if line.startswith("  ")}
    assert states == {**{s: "done" for s in ("generate", "judge", "build", "train", "eval")}, "report": "failed"}
    assert f"`{redo}` redoes only the report" in shown
    (run_dir / "report" / "report.md").rmdir()
    fixed = subprocess.run([sys.executable, "-m", "cluster.cli", *shlex.split(redo)[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0 and "done already" not in fixed.stderr, fixed.stderr[-4000:]
    assert f"report: {run_dir / 'report' / 'report.html'}" in fixed.stderr
    shown = subprocess.run(status, cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    assert [line.split()[1] for line in shown.splitlines()[1:]] == ["done"] * 6, shown
