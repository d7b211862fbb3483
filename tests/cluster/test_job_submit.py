"""`ray job submit` to a real `ray start --head` cluster, as the README says to run on a cluster.

The stage runs as a Ray job from an uploaded working directory and joins the cluster through
``RAY_ADDRESS``; Ray does not retry jobs, so a resubmitted job must find the finished stage and
skip it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from vllm_server import free_port

ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A head node with the dashboard (the job server), in its own process group."""
    # Ray's token authentication, with a token of the test's own: the head, `ray job submit` and the
    # job's driver read it from the environment, and ~/.ray is left alone.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A temp dir of its own: `ray start` records itself in <temp-dir>/ray_current_cluster, and a
    # record left in the shared /tmp/ray would draw later address-less ray.init() calls to a dead
    # head. Short, because Ray's socket paths under it must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-")
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={port}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
            "--disable-usage-stats",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                job_client(url).list_jobs()
                break
            except Exception:
                assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the dashboard's job server did not come up"
                time.sleep(1)
        yield url
    finally:
        # `ray stop` would also stop the session's other local Ray: end this head's group only.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_client(url: str):
    """The SDK client with the token passed by hand, as from a machine off the cluster: this process
    may have read Ray's settings before the fixture set RAY_AUTH_MODE."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url, headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})


def submit_and_wait(url: str, submission_id: str, entrypoint: list[str], timeout: float = 600) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    submitted = subprocess.run(
        [RAY, "job", "submit", "--address", url, "--working-dir", str(ROOT), "--submission-id", submission_id,
         "--no-wait", "--", *entrypoint],
        capture_output=True, text=True, timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    client = job_client(url)
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(submission_id)) not in {
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED
    }:
        assert time.monotonic() < deadline, f"job {submission_id} still {status}"
        time.sleep(2)
    return str(status), client.get_job_logs(submission_id)


@pytest.mark.slow
def test_generate_as_a_ray_job_then_resubmit(ray_head, tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    entrypoint = [
        sys.executable, "-m", "cluster.cli", "generate", "configs/quickstart.yaml",
        f"run_dir={run_dir}", f"model={tiny_model_dir}", "prompts.limit=4", "generate.n=2",
        "generate.max_tokens=8", "generate.shard_size=2", "generate.engine.max_model_len=512",
    ]
    status, logs = submit_and_wait(ray_head, "generate-1", entrypoint)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "Started a local Ray instance" not in logs  # it joined the cluster through RAY_ADDRESS
    table = pads.dataset(str(run_dir / "generate"), format="parquet").to_table()
    keys = set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    assert table.num_rows == len(keys) == 8
    assert all(table["attempt2"].to_pylist())

    status, logs = submit_and_wait(ray_head, "generate-2", entrypoint)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "done already" in logs
