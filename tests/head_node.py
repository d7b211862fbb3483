"""A real `ray start --head` cluster (with the dashboard's job server) for the job tests, and its client."""

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
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))


@contextlib.contextmanager
def ray_head_cluster(log_dir: Path, mp: pytest.MonkeyPatch, num_cpus: int = 2) -> Iterator[str]:
    """A head node in its own process group; yields the job server's URL.

    Ray's token authentication runs with a token of the test's own: the head, the job clients and
    the jobs' drivers read it from the environment, and ~/.ray is left alone.
    """
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    # Every port of its own: another Ray on the machine holding a default one (the dashboard agent's
    # 52365, the client server's 10001) would leave this head without a job agent.
    ports = [
        f"--{name}={free_port()}"
        for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                     "runtime-env-agent-port", "ray-client-server-port")
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A job's entrypoint says `python`, as on a cluster whose nodes have the project's environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # A temp dir of its own: `ray start` records itself in <temp-dir>/ray_current_cluster, and a
    # record left in the shared /tmp/ray would draw later address-less ray.init() calls to a dead
    # head. Short, because Ray's socket paths under it must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-")
    log_path = log_dir / "ray-head.log"
    log = open(log_path, "w")
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={port}",
            f"--dashboard-port={dashboard}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}",
            "--num-gpus=0", "--disable-usage-stats", *ports,
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
                assert head.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the dashboard's job server did not come up"
                time.sleep(1)
        yield url
    finally:
        # `ray stop` would also stop the session's other local Ray: end this head only. SIGTERM to
        # `ray start` alone, which drains the node through the GCS and stops its processes (a SIGTERM
        # to the whole group kills the GCS first, and the drain waits 30 s for it); then whatever of
        # the group is left.
        with contextlib.suppress(ProcessLookupError):
            head.send_signal(signal.SIGTERM)
            try:
                head.wait(15)  # its drain can wait 30 s on idle workers; the group is killed below
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_client(url: str):
    """The SDK client with the token passed by hand, as from a machine off the cluster: this process
    may have read Ray's settings before the fixture set RAY_AUTH_MODE."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url, headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
