"""Actor pools that ask for more than the cluster holds drive Ray's autoscaler, which adds nodes and
releases them when idle.

The cluster is Ray's fake multi-node provider: a head started with ``--autoscaling-config`` whose
autoscaler launches worker nodes as local raylets. ``ray.cluster_utils.AutoscalingCluster`` would
start the same, but it runs ``ray stop --force`` (ending every Ray on the machine, other tests'
heads included) and reads a template the wheel does not ship; the head here is started like
tests/head_node.py's, with ports and a temp dir of its own, and stopped by its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
from head_node import HEAD_PORTS, port_flags, stop_node
from vllm_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
PROMPTS, N = 4, 2
WORKER_TYPE = "cpu1"


def autoscaling_config(gcs_address: str, head_cpus: int, worker_cpus: int, max_workers: int) -> dict:
    """Ray's fake multi-node template (python/ray/autoscaler/_private/fake_multi_node/example.yaml)
    with one worker type; idle nodes go after 6 s."""
    small_store = 100 * 1024**2  # fake nodes share this machine's /dev/shm
    return {
        "cluster_name": "fake_multinode",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # the provider's default is port 6379, which another Ray may hold
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": {"CPU": worker_cpus, "object_store_memory": small_store},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "idle_timeout_minutes": 0.1,
        "upscaling_speed": 1.0,
        "auth": {},
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                           "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


@contextlib.contextmanager
def autoscaling_head(log_dir: Path, head_cpus: int = 1, worker_cpus: int = 1, max_workers: int = 2) -> Iterator[dict]:
    """Yields the GCS address, the dashboard's URL and the environment a driver needs to join."""
    import ray

    port, dashboard = free_port(), free_port()
    ip = ray.util.get_node_ip_address()
    temp_dir = tempfile.mkdtemp(prefix="rayas-")  # short: Ray's socket paths under it must fit in 107 bytes
    config = Path(temp_dir) / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(f"{ip}:{port}", head_cpus, worker_cpus, max_workers)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),  # ~/.ray is left alone
        RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",  # every node imports this checkout
    )
    ports = port_flags(HEAD_PORTS)
    log = open(log_dir / "ray-head.log", "w")
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", f"--port={port}",
            f"--autoscaling-config={config}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--num-cpus={head_cpus}", "--num-gpus=0",
            f"--object-store-memory={100 * 1024**2}", "--disable-usage-stats", *ports,
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    cluster = {"address": f"{ip}:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    try:
        deadline = time.monotonic() + 120
        while not _try_nodes(cluster):
            assert head.poll() is None, (log_dir / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's dashboard did not come up"
            time.sleep(1)
        yield cluster
    finally:
        # the head and its process group (the fake worker nodes are the autoscaler's children, in
        # the same group), then anything that left the group but still runs in this cluster's temp dir
        stop_node(head)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _state(cluster: dict, what: str) -> list[dict]:
    """The state API's rows (dead nodes and actors included) from the dashboard, with the token."""
    request = urllib.request.Request(
        f"{cluster['dashboard']}/api/v0/{what}?detail=1&limit=1000",
        headers={"Authorization": f"Bearer {cluster['env']['RAY_AUTH_TOKEN']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)["data"]["result"]["result"]


def _try_nodes(cluster: dict) -> list[dict]:
    try:
        return _state(cluster, "nodes")
    except Exception:
        return []


def _workers(cluster: dict) -> list[dict]:
    return [n for n in _state(cluster, "nodes") if not n["is_head_node"]]


def _stage(cluster: dict, stage: str, run_dir: Path, model: Path, *extra: str) -> tuple[int, str, set[tuple[str, str]]]:
    """Runs a stage's CLI against the cluster; returns its exit code, its stderr and the (actor class,
    node id) pairs of the actors seen alive while it ran (a dead actor's row may have lost its node)."""
    cmd = [
        sys.executable, "-m", "cluster.cli", stage, "configs/quickstart.yaml", f"run_dir={run_dir}",
        f"model={model}", f"prompts.limit={PROMPTS}", f"generate.n={N}", "generate.max_tokens=8",
        "generate.shard_size=1", "generate.engine.max_model_len=512", f"ray.address={cluster['address']}", *extra,
    ]
    # Ray Data starts work once one actor of the pool is up; a 1-s judge stage could then finish on
    # the head before the added node's actor starts. Waiting for min_actors makes placement certain.
    env = {**cluster["env"], "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "300"}
    seen: set[tuple[str, str]] = set()
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as p:
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.append(p.stderr.read()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 480
        while p.poll() is None:
            assert time.monotonic() < deadline, f"{stage} did not finish"
            with contextlib.suppress(Exception):  # the dashboard may be slow to answer on a busy machine
                seen |= {(a["class_name"], a["node_id"]) for a in _state(cluster, "actors")
                         if a["state"] == "ALIVE" and a.get("node_id")}
            time.sleep(0.5)
        reader.join()
    seen |= {(a["class_name"], a["node_id"]) for a in _state(cluster, "actors") if a.get("node_id")}
    return p.returncode, "".join(stderr), seen


def _keys(stage_dir: Path) -> list[tuple[str, int]]:
    table = pads.dataset(str(stage_dir), format="parquet").to_table()
    return sorted(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))


def _released(cluster: dict, timeout: float = 90) -> None:
    """Idle nodes go after the idle timeout (6 s, checked every second)."""
    deadline = time.monotonic() + timeout
    while any(n["state"] != "DEAD" for n in _workers(cluster)):
        assert time.monotonic() < deadline, f"added nodes still up: {_workers(cluster)}"
        time.sleep(2)


def test_actor_pools_beyond_the_head_add_nodes_that_are_released_after(tmp_path, tiny_model_dir):
    with autoscaling_head(tmp_path) as cluster:
        assert _workers(cluster) == []
        run_dir = tmp_path / "run"
        # the head holds one engine actor (1 CPU); the second needs a node the autoscaler adds
        code, err, actors = _stage(
            cluster, "generate", run_dir, tiny_model_dir,
            "generate.engine.num_cpus=1", "generate.engine.min_actors=2", "generate.engine.max_actors=2",
        )
        assert code == 0, err[-3000:]
        # the resource check saw the autoscaler and let the stage wait for it
        assert "waiting for the autoscaler to add nodes" in err
        added = {n["node_id"] for n in _workers(cluster)}
        assert added, "the autoscaler added no node"
        assert {n for c, n in actors if "GenerationWorker" in c} & added, "no engine actor ran on an added node"
        keys = _keys(run_dir / "generate")
        prompt_ids = {p for p, _ in keys}
        assert len(prompt_ids) == PROMPTS and keys == sorted((p, i) for p in prompt_ids for i in range(N))
        _released(cluster)

        # the judge pool drives it the same way: two 1-CPU judge actors beside a 1-CPU head
        code, err, actors = _stage(
            cluster, "judge", run_dir, tiny_model_dir, "judge_pool.min_actors=2", "judge_pool.max_actors=2"
        )
        assert code == 0, err[-3000:]
        new = {n["node_id"] for n in _workers(cluster)} - added
        assert new, "the autoscaler added no node for the judges"
        assert {n for c, n in actors if "JudgeWorker" in c} & new, "no judge actor ran on an added node"
        assert _keys(run_dir / "judge") == keys
        _released(cluster)
