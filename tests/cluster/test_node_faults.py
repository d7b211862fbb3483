"""Faults on a real two-node Ray cluster, with run_dir on an S3-compatible server.

One `ray start --head` and a second node joined with `ray start --address` (its own ports, the head's
session) serve the module; jobs go in through `selfcorrect submit`, as a user on a cluster sends them.
The generate job meets, in one run: its driver stopped (then the same job submitted again), an engine
actor SIGKILLed, and the second node lost (every process of it SIGKILLed at once) while its actor holds a
shard; then the run goes on as `run --until build` (judge and build on the bucket). The train job loses a
Ray Train worker to SIGKILL. After each: every record exactly once, the stage finished, no checkpointed
step trained twice.

Figures (records expected/found, duplicates, seconds from each fault to the next record, the whole
stage) are printed and, when ``SELFCORRECT_FAULT_FIGURES`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
from head_node import Head, job_client, ray_head_node, ray_worker_node, stop_node
from s3_server import BUCKET, registered_checkpoint, s3_env, s3_filesystem

from datagen import storage
from datagen.shards import StageDir
from rl.build import run_build
from rl.config import BuildConfig
from rl.export import run_export

ROOT = Path(__file__).parents[2]
PROMPTS = 16
PAIRS = 48  # 12 optimizer steps of 4 pairs (2 workers x batch 1 x grad_accum 2): the kill, once the first
# checkpoint is registered, lands with steps to spare (with 8 it came after step 4, 5 or 6)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Two nodes on one host share its cores, which separate machines would not: each vLLM CPU engine binds
# its OpenMP threads to every core by default, and an engine starting beside one that serves waits
# minutes for CPU. Each node's engines get a core of their own, as on machines of their own.
CORES = "VLLM_CPU_OMP_THREADS_BIND"


class TwoNodes:
    """The head and a second node (1 CPU, resource ``node2``) that a test may stop and the next restarts."""

    def __init__(self, head: Head, logs: Path, stack: ExitStack):
        self.head, self.logs, self.stack = head, logs, stack
        self.node2: subprocess.Popen | None = None

    def ensure_node2(self) -> subprocess.Popen:
        if self.node2 is None or self.node2.poll() is not None:
            self.node2 = self.stack.enter_context(
                ray_worker_node(self.head, self.logs, num_cpus=1, resources={"node2": 1}, env={CORES: "1"})
            )
        return self.node2

    def lose_node2(self) -> None:
        """The machine gone at once: every process of the node SIGKILLed together, no drain. (A graceful
        stop lets the node's actor finish its shard while it drains, and the fault may then cut nothing.)
        Its whole process tree, not its process group: the raylet starts its workers outside the group, and
        the engine actor would go on, even finish its shard, until it noticed the raylet gone."""
        assert self.node2 is not None
        stop_node(self.node2)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_url):
    """The nodes get the S3 server's settings from their environment, as a cluster's nodes would; HOME
    is the module's own, so the local mirror of an S3 run starts empty."""
    with pytest.MonkeyPatch.context() as mp, ExitStack() as stack:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        for key, value in s3_env(s3_url).items():
            mp.setenv(key, value)
        storage._s3.cache_clear()
        logs = tmp_path_factory.mktemp("rayfaults")
        mp.setenv(CORES, "0")
        # The GCS declares a silent node dead after health_check_failure_threshold missed checks, one each
        # health_check_period_ms (5 x 3 s by default); a test cluster can afford to be that much quicker
        mp.setenv("RAY_health_check_period_ms", "1000")
        mp.setenv("RAY_health_check_failure_threshold", "3")
        # Ray Data hands out shards as soon as one engine actor is up; the generate test's faults need both
        # serving, or the head's engine may do every shard while the second node's still starts on its one core
        mp.setenv("RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S", "300")
        head = stack.enter_context(ray_head_node(logs, mp, num_cpus=2))
        yield TwoNodes(head, logs, stack)
    storage._s3.cache_clear()


@pytest.fixture
def run_dir(request) -> str:
    """On S3 only: the bucket is the harder store (listing, no rename, a local mirror for the workers' logs).
    On local disk, generate is SIGKILLed at any point in tests/datagen/test_generate_cli.py. A trainer resumes
    from Ray Train's checkpoint as a local directory wherever it is stored; where, differs in one line
    (rl/raytrain.py's ``_storage_args``)."""
    return f"s3://{BUCKET}/" + re.sub(r"\W+", "-", request.node.name) + "/run"


# --- helpers ----------------------------------------------------------------------------------------


def submit(cluster: TwoNodes, stage: str, overrides: list[str], *flags: str) -> str:
    """`selfcorrect submit --no-wait`; the submission id it chose."""
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "submit", "--stage", stage, *flags, "--no-wait", "--address",
         cluster.head.url, "configs/quickstart.yaml", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return re.search(r"submitted (\S+)", done.stdout).group(1)


def status(cluster: TwoNodes, sid: str) -> str:
    return str(job_client(cluster.head.url).get_job_status(sid))


def wait_job(cluster: TwoNodes, sid: str, timeout: float = 600) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while (st := status(cluster, sid)) not in TERMINAL:
        assert time.monotonic() < deadline, f"job {sid} still {st}"
        time.sleep(1)
    return st, job_client(cluster.head.url).get_job_logs(sid)


def wait_for(what: str, cond: Callable[[], bool], cluster: TwoNodes, sid: str, timeout: float = 400) -> float:
    """Poll ``cond`` while job ``sid`` runs; the moment it held."""
    deadline = time.monotonic() + timeout
    while not cond():
        st = status(cluster, sid)
        if st in TERMINAL:
            logs = job_client(cluster.head.url).get_job_logs(sid)
            raise AssertionError(f"job {sid} {st} before {what}: {logs[-3000:]}")
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)
    return time.monotonic()


def title(p: psutil.Process) -> str:
    try:
        return (p.cmdline() or [""])[0]
    except psutil.Error:
        return ""


def workers(root: int, cls: str) -> list[psutil.Process]:
    """Ray worker processes running ``cls`` under the node whose `ray start` is ``root`` (Ray titles them
    ``ray::<class>.<method>`` while they run a method)."""
    try:
        tree = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in tree if title(p).startswith("ray::") and cls in title(p)]


def busy(procs: list[psutil.Process], method: str) -> list[psutil.Process]:
    return [p for p in procs if title(p).endswith(f".{method}")]


def shards(out: StageDir) -> int:
    try:
        return len(out.completed_shards())
    except (FileNotFoundError, OSError):
        return 0


def report(figures: dict) -> None:
    print("FAULT", json.dumps(figures))
    path = os.environ.get("SELFCORRECT_FAULT_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


# --- generate ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_survives_a_stopped_driver_a_killed_engine_actor_and_a_lost_node(cluster, run_dir, tiny_model_dir):
    out = StageDir(f"{run_dir}/generate")
    overrides = [
        f"run_dir={run_dir}", f"model={tiny_model_dir}", f"prompts.limit={PROMPTS}", "generate.n=2",
        # 64 tokens, not the usual 8: a shard then takes a second or two, long enough for the test to see
        # which actor holds one and to hit it there (at 8 the 16 shards go by in a few seconds)
        "generate.max_tokens=64", "generate.shard_size=1", "generate.engine.max_model_len=512",
        # one engine actor per node (Ray Data spreads its actors); the head's 2 CPUs can hold both
        "generate.engine.min_actors=2", "generate.engine.max_actors=2",
    ]
    head = cluster.head.proc.pid
    node2 = cluster.ensure_node2().pid
    actor = "GenerationWorker"
    started = time.monotonic()
    recovery: dict[str, float] = {}
    shards_at_fault: dict[str, int] = {}  # how far the stage was at each fault: its margin before the end

    # c) the driver stopped as soon as the first shard is in; the same submission again resumes
    first = submit(cluster, "generate", overrides)
    wait_for("a first shard", lambda: shards(out) >= 1, cluster, first)
    job_client(cluster.head.url).stop_job(first)
    fault = time.monotonic()
    assert wait_job(cluster, first, 60)[0] == "STOPPED"
    seen = shards_at_fault["driver_stopped"] = shards(out)
    assert seen < PROMPTS and not out.done(), "the stage finished before the driver stopped: nothing proven"
    second = submit(cluster, "generate", overrides)
    assert second == f"{first}-2"
    recovery["driver_stopped"] = wait_for("the resumed job's first shard", lambda: shards(out) > seen, cluster,
                                          second) - fault

    # a) and d), in the order the two engines come up: the first engine actor found busy is the first hit
    def actor_busy_on(root: int) -> Callable[[], bool]:
        return lambda: bool(busy(workers(root, actor), "submit"))

    # the order is decided by the poll that saw an actor busy: asking the head again a moment later may find
    # it between shards, and then the node would be waited for while the head's actor does every shard
    first_busy: list[int] = []
    wait_for("a busy engine actor",
             lambda: bool(first_busy.extend(r for r in (head, node2) if actor_busy_on(r)()) or first_busy),
             cluster, second)
    order = ["engine_actor_killed", "node_lost"] if first_busy[0] == head else ["node_lost", "engine_actor_killed"]
    for step in order:
        if step == "engine_actor_killed":
            # the process is taken as the condition sees it busy: between shards its title changes
            hit: list[psutil.Process] = []
            wait_for("a busy engine actor on the head",
                     lambda hit=hit: bool(hit.extend(busy(workers(head, actor), "submit")) or hit), cluster, second)
            n = shards(out)
            hit[0].send_signal(signal.SIGKILL)
        else:
            wait_for("the second node's engine actor busy", actor_busy_on(node2), cluster, second)
            n = shards(out)
            cluster.lose_node2()
        fault = time.monotonic()
        shards_at_fault[step] = n
        assert n < PROMPTS and not out.done(), f"{step}: the stage finished first; nothing proven"
        recovery[step] = wait_for(f"a shard after {step}", lambda n=n: shards(out) > n, cluster, second) - fault

    state, logs = wait_job(cluster, second)
    assert state == "SUCCEEDED", logs[-4000:]
    assert "Started a local Ray instance" not in logs  # it joined the cluster through RAY_ADDRESS
    seconds = time.monotonic() - started
    table = out.read(columns=["prompt_id", "sample_idx", "attempt2"])
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    expected = PROMPTS * 2
    report({
        "stage": "generate", "storage": "s3", "faults": ["driver_stopped", *order],
        "records_expected": expected, "records_found": len(set(keys)), "duplicates": len(keys) - len(set(keys)),
        "recovery_s": {k: round(v, 1) for k, v in recovery.items()}, "shards_at_fault": shards_at_fault,
        "shards": PROMPTS, "stage_s": round(seconds, 1),
    })
    assert out.done() and len(keys) == len(set(keys)) == expected
    assert None not in table["attempt2"].to_pylist()
    assert out.summary()["samples"] == expected

    # the finished stage submitted again, as `run --until build`: generate is found done, judge and build
    # run on its rows in the bucket, and the run stops there
    state, logs = wait_job(cluster, submit(cluster, "run", overrides, "--until", "build"))
    assert state == "SUCCEEDED" and "generate: done already" in logs, logs[-3000:]
    assert f"run: stopped after build (--until); `selfcorrect run configs/quickstart.yaml run_dir={run_dir}" in logs
    judged, built = StageDir(f"{run_dir}/judge"), StageDir(f"{run_dir}/build")
    assert judged.done() and built.done() and not StageDir(f"{run_dir}/train").done()
    assert judged.completed_shards() == out.completed_shards()
    rows = judged.read(columns=["prompt_id", "sample_idx", "verifier_score1"]).to_pylist()
    assert sorted((r["prompt_id"], r["sample_idx"]) for r in rows) == sorted(set(keys))
    assert built.summary()["rows_in"] == expected
    assert f"run_dir: {run_dir}" in storage.read_bytes(storage.as_location(f"{run_dir}/config.yaml")).decode()
    exported = run_export(built, f"{run_dir}/export")
    assert storage.read_json(storage.as_location(f"{run_dir}/export/_SUCCESS.json")) == exported
    # the workers' logs stay in the local mirror of the run, and the job's log says where
    mirror = Path(os.environ["HOME"], ".cache/selfcorrect/objects/s3", run_dir.removeprefix("s3://"), "logs")
    assert f"logs: {mirror}" in logs and (mirror / "driver.log").exists()


# --- train ------------------------------------------------------------------------------------------


def _rl_rows():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_rows", ROOT / "tests" / "rl" / "rl_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_log(folder: Path) -> dict[int, list[tuple[int, list[tuple[int, list[str]]]]]]:
    """Each rank's attempts in the order they ran: the step each started from, and its ``(step, pair ids)``
    lines."""
    out: dict[int, list[tuple[int, list[tuple[int, list[str]]]]]] = {}
    for rank in (0, 1):
        attempts = out.setdefault(rank, [])
        for line in map(json.loads, (folder / f"rank{rank}.jsonl").read_text().splitlines()):
            if "start" in line:
                attempts.append((line["start"], []))
            else:
                attempts[-1][1].append((line["step"], line["ids"]))
    return out


@pytest.mark.slow
def test_train_worker_killed_resumes_from_the_last_checkpoint(cluster, run_dir, tiny_model_dir, s3_url):
    rows = _rl_rows()
    # PAIRS / 2 prompts x 2 pairs (a prompt's pairs share a step): 4 pairs per optimizer step over 2 workers
    judged = rows.write_judged(f"{run_dir}/judge", [
        rows.judged_row(f"p{p}", i, attempt1=f"wrong {p} {i}", attempt2=f"right {p}", verifier_score1=0.0,
                        verifier_score2=1.0)
        for p in range(PAIRS // 2) for i in range(2)
    ])
    run_build(BuildConfig(), judged, StageDir(f"{run_dir}/build"), echo=False)
    out = StageDir(f"{run_dir}/train")
    # where the workers append their logs: the stage's local mirror
    local = storage.local_cache(out.path.parent, "train")
    overrides = [
        f"run_dir={run_dir}", f"model={tiny_model_dir}", "train.num_workers=2", "train.batch_size=1",
        "train.grad_accum=2", "train.max_length=128", "train.checkpoint_every=2", "train.log_samples=true",
        "train.max_failures=1", "train.log_every=1", "train.lr=1e-3", "train.cpus_per_worker=1", "train.epochs=1",
    ]
    head, node2 = cluster.head.proc.pid, cluster.ensure_node2().pid

    def step() -> int:
        try:
            return json.loads((local / "_progress.json").read_text())["step"]
        except (OSError, ValueError):
            return 0

    def checkpoints() -> list[str]:
        try:
            return [n for n in storage.list_names(out.path / "ray") if n.startswith("checkpoint_")]
        except (FileNotFoundError, OSError):
            return []

    started = time.monotonic()
    sid = submit(cluster, "train", overrides)
    # registered, not only on storage: a kill before that would fairly start again from step 0
    fs, experiment = s3_filesystem(s3_url), f"{run_dir.removeprefix('s3://')}/train/ray"
    wait_for("a registered checkpoint", lambda: registered_checkpoint(fs, experiment) is not None, cluster, sid)
    victims = workers(node2, "RayTrainWorker") or workers(head, "RayTrainWorker")
    assert victims, "no Ray Train worker found"
    at = step()
    victims[0].send_signal(signal.SIGKILL)
    fault = time.monotonic()
    assert not out.done() and at < PAIRS // 4, "training finished before the kill: nothing proven"
    resumed = wait_for("a step after the kill", lambda: step() != at, cluster, sid) - fault
    state, logs = wait_job(cluster, sid)
    assert state == "SUCCEEDED", logs[-4000:]
    seconds = time.monotonic() - started

    steps = PAIRS // 4
    log = sample_log(local / "samples")
    final: dict[tuple[int, int], list[str]] = {}
    for rank, attempts in log.items():
        for _, lines in attempts:
            for s, ids in lines:
                final[(rank, s)] = ids  # a step trained again after the kill replaces the lost attempt
    seen = [i for ids in final.values() for i in ids]
    expected = sorted(f"p{p}:{i}" for p in range(PAIRS // 2) for i in range(2))
    # each attempt says which checkpoint it resumed from: a restart is seen even when the kill came between
    # a checkpoint and the next step, so that no step is trained twice
    resumed_from = {r: attempts[1][0] for r, attempts in log.items() if len(attempts) > 1}
    twice = {r: [s for _, lines in attempts[1:] for s, _ in lines if s <= attempts[1][0]]
             for r, attempts in log.items()}
    metrics = [json.loads(x)["step"] for x in storage.read_bytes(out.path / "metrics.jsonl").decode().splitlines()]
    report({
        "stage": "train", "storage": "s3", "faults": ["train_worker_killed"], "killed_after_step": at,
        "resumed_from_step": resumed_from, "records_expected": len(expected), "records_found": len(set(seen)),
        "duplicates": len(seen) - len(set(seen)), "recovery_s": {"train_worker_killed": round(resumed, 1)},
        "stage_s": round(seconds, 1),
    })
    assert out.done() and out.summary()["steps"] == steps
    assert [len(a) for a in log.values()] == [2, 2], log  # one worker-group restart, seen by both ranks
    assert [a[0][0] for a in log.values()] == [0, 0]
    assert set(resumed_from.values()) and all(s >= 2 and s % 2 == 0 for s in resumed_from.values()), resumed_from
    assert twice == {0: [], 1: []}, twice  # no step before the resumed checkpoint trained again
    assert sorted(seen) == expected  # every pair exactly once in the steps that count
    assert sorted({s for _, s in final}) == list(range(1, steps + 1))
    assert metrics == list(range(1, steps + 1))  # the lost steps, logged twice, are in the metrics once
    for s in range(1, steps + 1):  # both pairs of a prompt in one optimizer step, after the resume too
        assert set(Counter(i.split(":")[0] for r in (0, 1) for i in final[(r, s)]).values()) == {2}
    history = json.loads(storage.read_bytes(out.path / "log_history.json"))
    assert math.isfinite(history[-1]["train_loss"])
    # the trained model, its adapter and Ray Train's checkpoints are in the bucket
    assert out.summary()["model"] == f"{run_dir}/train/model"
    assert {"model", "adapter", "metrics.jsonl", "ray", "_stage.json"} <= set(storage.list_names(out.path))
    assert storage.exists(out.path / "model" / "config.json") and checkpoints()
