"""`ray job submit` to a real `ray start --head` cluster, as the README says to run on a cluster.

The stage runs as a Ray job from an uploaded working directory and joins the cluster through
``RAY_ADDRESS``; Ray does not retry jobs, so a resubmitted job must find the finished stage and
skip it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from head_node import RAY, job_client

ROOT = Path(__file__).parents[2]


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
