"""Run a stage shard by shard over a Ray Data actor pool, writing each shard exactly once.

The input is one small task per pending shard (a shard of prompts, or the path of the previous
stage's shard). Each actor builds its worker once (a vLLM engine, a judge model) and, per task,
computes the shard's table and writes it with ``StageDir.write_shard``: a deterministic name and
an atomic publish (a rename, or one upload on object storage), so a task that Ray retries after an
actor died, or a stage started again after a kill, still leaves every shard once. Only a small
manifest row per shard travels back to the driver, which keeps the driver's memory flat however
many prompts there are.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from datagen.shards import StageDir


class ShardWorker(Protocol):
    def __call__(self, task: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]: ...


class _WriteShards:
    """The Ray Data UDF: build the worker once per actor, then compute and write shards."""

    def __init__(self, worker_cls: type, worker_kwargs: dict[str, Any], out_path: str):
        self.worker: ShardWorker = worker_cls(**worker_kwargs)
        self.out = StageDir(out_path)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        manifest: dict[str, list[Any]] = {"shard": [], "rows": [], "seconds": [], "stats": []}
        for payload in batch["task"]:
            task = json.loads(payload)
            start = time.perf_counter()
            table, stats = self.worker(task)
            self.out.write_shard(task["shard"], table)
            manifest["shard"].append(task["shard"])
            manifest["rows"].append(table.num_rows)
            manifest["seconds"].append(time.perf_counter() - start)
            manifest["stats"].append(json.dumps(stats))
        return manifest


def _named_udf(worker_cls: type) -> type:
    """``_WriteShards`` under the worker's class name: Ray Data names the operator and its actors after
    the UDF class (``MapBatches(GenerationWorker)``, actor class ``MapWorker(MapBatches(GenerationWorker))``
    on the dashboard), which otherwise would read ``_WriteShards`` for every stage."""
    return type(worker_cls.__name__, (_WriteShards,), {"__doc__": _WriteShards.__doc__})


@dataclass(frozen=True)
class ActorPool:
    """The Ray Data actors a stage runs its shards on: how many, what each reserves, its environment, and how
    often a lost one (a crashed engine) is restarted and its shard retried."""

    min_actors: int = 1
    max_actors: int = 1
    num_cpus: float = 1
    num_gpus: float = 0
    env_vars: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 3


def run_shard_stage(
    out: StageDir,
    tasks: list[dict[str, Any]],
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    pool: ActorPool,
    desc: str = "shards",
) -> list[dict[str, Any]]:
    """Compute and write every task's shard on ``pool``; return one manifest row per shard written.

    ``tasks`` are JSON-able dicts with an int ``"shard"``. ``worker_cls(**worker_kwargs)`` runs once
    per actor; calling it with a task returns the shard's table and a dict of stats.
    """
    if not tasks:
        return []
    import ray
    from ray.util.annotations import RayDeprecationWarning

    from datagen import progress

    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = 0  # a failed shard must fail the stage, never vanish
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(
        [{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks)
    )
    with warnings.catch_warnings():
        # Ray 2.60 deprecates free-form remote args but has no named parameter for restarts yet.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        ds = ds.map_batches(
            _named_udf(worker_cls),
            fn_constructor_kwargs={
                "worker_cls": worker_cls,
                "worker_kwargs": worker_kwargs,
                "out_path": str(out.path),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus,
            runtime_env={"env_vars": pool.env_vars} if pool.env_vars else None,
            # A lost actor (a crashed engine) is restarted and its shard retried, a bounded number
            # of times: an input that kills the engine every time fails the stage, not loops.
            max_restarts=pool.max_restarts,
            max_task_retries=pool.max_restarts,
        )
    manifest = []
    with progress.bar(total=len(tasks), desc=desc, unit="shard") as bar:
        for row in ds.iter_rows():
            row = dict(row)
            row["stats"] = json.loads(row["stats"])
            manifest.append(row)
            bar.update(1)
    return manifest
