"""`selfcorrect generate` end to end: real Ray, real vLLM on CPU, the tiny random Llama.

The resume test kills the whole process group with SIGKILL (driver, Ray and the engine actor, as
a lost machine would) at several points, then kills the last run's vLLM engine process under its
actor, and checks that the finished output is exactly the output of an uninterrupted run: every
(prompt_id, sample_idx) once, every text the same.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from cluster.cli import main

ROOT = Path(__file__).parents[2]
PROMPTS = 16  # one shard each: enough that a restarted run cannot write them all between two polls


def args(run_dir, model):
    return [
        "configs/quickstart.yaml",
        f"run_dir={run_dir}",
        f"model={model}",
        f"prompts.limit={PROMPTS}",
        "generate.n=2",
        "generate.max_tokens=8",
        "generate.shard_size=1",
        "generate.engine.max_model_len=512",
        "ray.num_cpus=2",
        "ray.include_dashboard=false",
    ]


def start(run_dir, model, *extra):
    cmd = [sys.executable, "-m", "cluster.cli", "generate", *args(run_dir, model), *extra]
    log = open(Path(run_dir).parent / f"{Path(run_dir).name}.log", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def finish(proc, timeout=300):
    assert proc.wait(timeout=timeout) == 0


def wait_while_running(proc, condition, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)


def kill_when(proc, condition, timeout=300):
    wait_while_running(proc, condition, timeout)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def shards(run_dir):
    return sorted(Path(run_dir, "generate").glob("part-*.parquet"))


def read_sorted(run_dir):
    return (
        pads.dataset(str(Path(run_dir, "generate")), format="parquet")
        .to_table()
        .sort_by([("prompt_id", "ascending"), ("sample_idx", "ascending")])
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("gen") / "reference"
    finish(start(run_dir, tiny_model_dir, "-v"))  # what -v puts on the terminal: the test below
    return run_dir


def test_output_has_every_sample_once_with_both_attempts(reference):
    table = read_sorted(reference)
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == PROMPTS * 2
    assert {"prompt_id", "sample_idx", "attempt1", "attempt2", "attempt1_tokens", "sampling"} <= set(table.column_names)
    assert all(table["attempt1"].to_pylist()) and None not in table["attempt2"].to_pylist()
    summary = __import__("json").loads((reference / "generate" / "_SUCCESS.json").read_text())
    assert summary["samples"] == PROMPTS * 2 and summary["shards"] == PROMPTS
    assert summary["generated_tokens"] == sum(table["generated_tokens"].to_pylist()) > 0


def test_with_v_the_workers_and_the_engines_output_reach_the_terminal(reference):
    terminal = (reference.parent / f"{reference.name}.log").read_text(errors="replace")
    assert "pid=" in terminal and "WARNING" in terminal  # Ray's workers and vLLM
    # the engine's own lines (its config, its load), which a quiet run keeps in RUN_DIR/logs/
    assert "vllm" in "".join(line.lower() for line in terminal.splitlines() if "pid=" in line), terminal[-3000:]
    assert f"generate: {PROMPTS} prompts -> {PROMPTS * 2} samples" in terminal


def test_a_finished_stage_is_skipped(reference, tiny_model_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in shards(reference)}
    assert main(["generate", *args(reference, tiny_model_dir)]) == 0
    assert "done already" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in shards(reference)} == before


def engine_cores(pid):
    import psutil

    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def test_killed_at_any_point_then_restarted_gives_every_sample_exactly_once(reference, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "killed"
    # 1) during start-up, before any shard
    p = start(run_dir, tiny_model_dir)
    time.sleep(6)
    kill_when(p, lambda: True)
    assert len(shards(run_dir)) == 0
    # 2) as soon as the first shard lands, 3) once the restarted run adds another
    p = start(run_dir, tiny_model_dir)
    kill_when(p, lambda: len(shards(run_dir)) >= 1)
    seen = len(shards(run_dir))
    p = start(run_dir, tiny_model_dir)
    kill_when(p, lambda: len(shards(run_dir)) > seen)
    assert len(shards(run_dir)) < PROMPTS, "the run finished before the kill; the test proves nothing"
    assert not (run_dir / "generate" / "_SUCCESS.json").exists()
    # 4) the last start completes, though its vLLM engine dies under it: the engine core in a process of
    # its own (the default with GPUs; on CPU it runs in the actor, whose death Ray handles as any actor's),
    # killed once it has written a shard. The actor must notice that process die and end itself; Ray starts
    # it again and the shard it held is retried.
    p = start(run_dir, tiny_model_dir, "generate.engine.multiprocessing=true")
    deadline = time.monotonic() + 300  # for both waits together
    wait_while_running(p, lambda: engine_cores(p.pid))
    seen = len(shards(run_dir))  # counted with this run's engine up: a shard the killed run left landing is in
    wait_while_running(p, lambda: len(shards(run_dir)) > seen, deadline - time.monotonic())
    for core in engine_cores(p.pid):
        core.kill()  # a real crash of the vLLM engine process
    assert len(shards(run_dir)) < PROMPTS, "the run finished before the engine died; the test proves nothing"
    finish(p)
    assert not list((run_dir / "generate").glob(".*"))
    killed, ref = read_sorted(run_dir), read_sorted(reference)
    assert killed.num_rows == PROMPTS * 2
    # Seeds depend on (seed, prompt_id, turn, sample_idx) alone: the resumed run reproduces the
    # uninterrupted one text for text.
    assert killed.equals(ref)


def test_other_settings_on_a_finished_run_are_refused(reference, tiny_model_dir, capsys):
    assert main(["generate", *args(reference, tiny_model_dir), "generate.temperature=0.1"]) == 2
    err = capsys.readouterr().err
    assert "other settings (changed: generate)" in err and "--overwrite" in err
