"""A real `ray start --head` cluster (with the dashboard's job server) for the job tests, and its client."""

from __future__ import annotations

import contextlib
import json
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
from typing import NamedTuple

import psutil
import pytest
from vllm_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# Every port of its own: another Ray on the machine holding a default one (the dashboard agent's
# 52365, the client server's 10001) would leave a head without a job agent.
HEAD_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
              "runtime-env-agent-port", "ray-client-server-port")


def port_flags(names: tuple[str, ...]) -> list[str]:
    """``--NAME=PORT`` with a free port for each of ``names``."""
    return [f"--{name}={free_port()}" for name in names]


class Head(NamedTuple):
    url: str  # the job server (dashboard)
    gcs: str  # what `ray start --address` joins
    temp_dir: str
    proc: subprocess.Popen


@contextlib.contextmanager
def ray_head_cluster(log_dir: Path, mp: pytest.MonkeyPatch, num_cpus: int = 2) -> Iterator[str]:
    """A head node in its own process group; yields the job server's URL (``ray_head_node`` for more)."""
    with ray_head_node(log_dir, mp, num_cpus) as head:
        yield head.url


@contextlib.contextmanager
def ray_head_node(log_dir: Path, mp: pytest.MonkeyPatch, num_cpus: int = 2) -> Iterator[Head]:
    """A head node in its own process group.

    Ray's token authentication runs with a token of the test's own: the head, the job clients and
    the jobs' drivers read it from the environment, and ~/.ray is left alone.
    """
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port, dashboard = free_port(), free_port()
    ports = port_flags(HEAD_PORTS)
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
        yield Head(url, f"127.0.0.1:{port}", temp_dir, head)
    finally:
        stop_node(head)  # this head only: `ray stop` would also stop the session's other local Ray
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_node(proc: subprocess.Popen, wait_s: float = 15) -> None:
    """End a node started by `ray start --block` (in a session of its own) at once, as a lost machine ends:
    SIGKILL to its process group and to every process under it, then wait for them. A test's teardown, and
    the node-loss fault.

    No drain: a node's drain (SIGTERM to `ray start`) waits up to 30 s while a detached actor lives on it,
    and Ray Data and Ray Train each leave one (an autoscaling coordinator, a placement group cleaner). Not
    the group alone: workers the raylet started may have left it, and they would go only once they notice
    the raylet gone, seconds later.
    """
    if proc.returncode is not None:  # stopped and reaped already: its pid may be another process's by now
        return
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()  # the group's leader: the SIGKILL above reached it
    psutil.wait_procs(tree, timeout=wait_s)


@contextlib.contextmanager
def ray_worker_node(
    head: Head,
    log_dir: Path,
    num_cpus: int = 1,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """A second node joined to ``head``, on this host, in its own process group; yields its `ray start`.

    Two raylets share one host only with ports of their own (the defaults belong to the head) and the
    head's session (``--temp-dir``: the session's folder is the head's). ``stop_node`` ends it early
    (a lost machine); the teardown stops whatever is left.
    """
    manager = free_port()
    ports = port_flags(("object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                        "metrics-export-port", "runtime-env-agent-port"))
    chosen = {manager, *(int(p.rsplit("=", 1)[1]) for p in ports)}
    while (low := free_port()) > 65000 or chosen & set(range(low, low + 101)):
        pass  # Ray refuses a worker port range that holds another of the node's ports
    node_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    node_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{node_env.get('PATH', '')}"
    log_path = log_dir / "ray-node2.log"
    log = open(log_path, "w")
    node = subprocess.Popen(
        [
            RAY, "start", "--block", f"--address={head.gcs}", f"--temp-dir={head.temp_dir}",
            f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={json.dumps(resources or {})}",
            f"--node-manager-port={manager}", f"--min-worker-port={low}", f"--max-worker-port={low + 100}",
            "--disable-usage-stats", *ports,
        ],
        stdout=log, stderr=subprocess.STDOUT, env=node_env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while manager not in alive_nodes(head.url):
            assert node.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        yield node
    finally:
        stop_node(node)
        log.close()


def alive_nodes(url: str) -> set[int]:
    """The node manager ports of the cluster's live nodes, as the dashboard's REST API lists them (a
    stopped node may read alive for a few seconds)."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/nodes?view=summary", headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            summary = json.load(r)["data"]["summary"]
    except OSError:
        return set()
    return {n["raylet"]["nodeManagerPort"] for n in summary if n["raylet"]["state"] == "ALIVE"}


def job_client(url: str):
    """The SDK client with the token passed by hand, as from a machine off the cluster: this process
    may have read Ray's settings before the fixture set RAY_AUTH_MODE."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(url, headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"})
