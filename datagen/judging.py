"""The judge stage: ``RUN_DIR/generate/`` samples in, the same rows plus judge columns out.

Each generate shard becomes the judge shard of the same number (``judge/part-NNNNN.parquet``),
written atomically, so a killed stage resumes with every row once. All samples of a prompt share a
generate shard, so pairwise and near-duplicate judgements stay within one task. Every judge the
config names runs in each of the stage's actors (``judge_pool``; models load once per actor); each
writes its own ``NAME_*`` columns (see ``datagen.records``). API judges cache their answers under
``RUN_DIR/judge_cache/NAME``, outside the stage directory, so even ``--overwrite`` reruns for free.
Rows with images get their bytes from the run's image store beside them (``IMAGE_BYTES``), read once
per image per shard and shared by the rows that show it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from datagen import metrics, storage
from datagen.config import EngineConfig, JudgePoolConfig
from datagen.engine import engine_env, engine_kwargs, with_resolved_dtype
from datagen.hardware import resolve_dtype
from datagen.images import ImageStore, store_location
from datagen.models import resolve_model
from datagen.pipeline import ActorPool, run_shard_stage
from datagen.records import IMAGE_BYTES, judge_column
from datagen.shards import StageDir, StageInputError
from datagen.storage import Location
from datagen.vision import is_vision_model
from judges.base import JudgeResult, build, load
from judges.config import JudgeSettings, judge_settings

COLUMN_TYPES = {
    "score1": pa.float64(),
    "score2": pa.float64(),
    "pref": pa.int8(),
    "dup": pa.bool_(),
    "raw": pa.string(),
    "error": pa.string(),
}
# Settings that change how fast or where a judge runs, not what it says: left out of the fingerprint.
PLACEMENT_KEYS = {
    "batch_size",
    "concurrency",
    "requests_per_min",
    "tokens_per_min",
    "cache_dir",
    "num_gpus",
    "engine",
    "code_workers",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "max_backoff_s",
}


class JudgeStageError(StageInputError):
    pass


@dataclass
class JudgePlan:
    judges: dict[str, JudgeSettings]
    inputs: StageDir
    fingerprint: dict[str, Any]
    num_gpus: float
    env_vars: dict[str, str]
    pool: JudgePoolConfig
    images: Location  # the run's image store


def judge_versions(judges: dict[str, JudgeSettings]) -> dict[str, str | None]:
    """Each judge's ``version``, for fingerprints: verdicts made under older scoring rules are not reused."""
    return {n: getattr(load(s.type), "version", None) for n, s in judges.items()}


def plan_judge(
    judges: dict[str, JudgeSettings],
    run_dir: str | Path,
    model: str,
    model_cache: str,
    engine: EngineConfig,
    seed: int,
    pool: JudgePoolConfig,
    images: Location | None = None,
) -> JudgePlan:
    """Check the judge settings and the generate output, and fill in run-dependent defaults.

    ``images`` is the run's image store (default: ``run_dir/images``)."""
    if not judges:
        raise JudgeStageError("no judges configured: add a 'judges:' section (e.g. judges.verifier={})")
    run = storage.as_location(run_dir)
    run = run.expanduser() if isinstance(run, Path) else run
    inputs = StageDir(run / "generate")
    if not inputs.done():
        raise JudgeStageError(f"{inputs.path} is not complete: run the generate stage first")
    filled: dict[str, JudgeSettings] = {}
    env: dict[str, str] = {}
    num_gpus = 0.0
    for name, settings in judges.items():
        update: dict[str, Any] = {}
        if settings.type == "openai":
            if settings.cache_dir is None:
                # on local disk when the run is on object storage: one small file per request
                update["cache_dir"] = str(storage.local_cache(run, "judge_cache") / name)
            # the limits are the API's, shared by every actor that may be calling it
            for key in ("requests_per_min", "tokens_per_min"):
                if getattr(settings, key) is not None:
                    update[key] = getattr(settings, key) / pool.max_actors
        if settings.type == "self_critic":
            path = settings.model or resolve_model(model, model_cache)
            kwargs = engine_kwargs(engine, path, seed)
            if is_vision_model(path):  # the critic sees each row's images: ready for as many as a row has
                kwargs["limit_mm_per_prompt"] = {"image": most_images(inputs)}
            update.update(
                model=kwargs.pop("model"),
                engine={**kwargs, **settings.engine},
                num_gpus=settings.num_gpus or engine.num_gpus,
            )
            env.update(engine_env(engine))
        settings = settings.model_copy(update=update) if update else settings
        filled[name] = judge_settings(name, settings.model_dump())  # re-validated after the update
        num_gpus = max(num_gpus, float(getattr(filled[name], "num_gpus", 0) or 0))
    fingerprint = {
        "generate": storage.read_json(inputs.path / "_stage.json"),
        "judges": {n: s.model_dump(exclude=PLACEMENT_KEYS) for n, s in filled.items()},
        "versions": judge_versions(filled),
    }
    store = images if images is not None else store_location(run)
    return JudgePlan(filled, inputs, json.loads(json.dumps(fingerprint)), num_gpus, env, pool, store)


def most_images(stage: StageDir) -> int:
    """The most images any row of a generate-like stage has."""
    if "images" not in stage.dataset().schema.names:
        return 0
    lengths = pc.list_value_length(stage.read(columns=["images"]).column(0))
    return int(pc.max(lengths).as_py() or 0)


def prompt_batches(rows: list[dict[str, Any]], size: int) -> list[list[int]]:
    """Row indices in batches of about ``size`` that never split a prompt's samples.

    >>> prompt_batches([{"prompt_id": p} for p in "aabbbc"], 3)
    [[0, 1], [2, 3, 4], [5]]
    """
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["prompt_id"], []).append(i)
    batches: list[list[int]] = []
    current: list[int] = []
    for members in groups.values():
        if current and len(current) + len(members) > size:
            batches.append(current)
            current = []
        current.extend(members)
    if current:
        batches.append(current)
    return batches


def on_this_device(settings: JudgeSettings) -> JudgeSettings:
    """A model judge's weights dtype ``auto`` resolved in the actor that loads them.

    The reward model's ``dtype`` and the self-critic's ``engine.dtype`` follow this actor's hardware
    (``datagen.hardware``): bfloat16 where it is native, float32 elsewhere. Judges without weights (the
    verifier, an API judge) are returned as they are, and their actor never imports torch (1.7 s of its start).
    """
    update: dict[str, Any] = {}
    if getattr(settings, "dtype", None) == "auto":
        import torch

        update["dtype"] = resolve_dtype("auto", gpu=torch.cuda.is_available()).name
    engine = getattr(settings, "engine", None)
    if isinstance(engine, dict) and engine.get("dtype", "auto") == "auto":
        update["engine"] = with_resolved_dtype(engine)[0]
    return settings.model_copy(update=update) if update else settings


class JudgeWorker:
    """One per actor: builds every judge once, then turns a generate shard into a judge shard."""

    def __init__(
        self, judges: dict[str, dict[str, Any]], tags: dict[str, str] | None = None, image_dir: str | None = None
    ):
        self.judges = {name: build(name, on_this_device(judge_settings(name, raw))) for name, raw in judges.items()}
        self.tags = tags or {"stage": "judge", "run": ""}  # the Ray metrics' tags
        self.images = ImageStore(image_dir) if image_dir else None

    def __call__(self, task: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
        table = storage.read_table(task["path"])
        return self.judge_table(table)

    def _attach_images(self, rows: list[dict[str, Any]]) -> None:
        """Put each row's image bytes beside it, read once per image for the shard."""
        read: dict[str, bytes] = {}
        for row in rows:
            ids = row.get("images") or []
            if not ids:
                continue
            if self.images is None:
                raise ValueError(f"row {row['prompt_id']!r} has images but the judge stage has no image store")
            for i in ids:
                if i not in read:
                    read[i] = self.images.read(i)
            row[IMAGE_BYTES] = [read[i] for i in ids]

    def judge_table(self, table: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
        rows = table.to_pylist()
        self._attach_images(rows)
        stats: dict[str, Any] = {}
        for name, judge in self.judges.items():
            started = time.perf_counter()
            results: list[JudgeResult | None] = [None] * len(rows)
            for batch in prompt_batches(rows, judge.settings.batch_size):
                for i, res in zip(batch, judge.judge([rows[i] for i in batch]), strict=True):
                    results[i] = res
            for suffix in judge.suffixes:
                column = pa.array([getattr(r, suffix) for r in results], type=COLUMN_TYPES[suffix])
                table = table.append_column(judge_column(name, suffix), column)
            taken = judge.stats.take()
            metrics.record_judge(self.tags, name, taken)
            latencies = taken.pop("latencies")
            scores = taken.pop("scores")
            stats[name] = {
                **taken,
                "seconds": time.perf_counter() - started,
                "latency_sum": sum(latencies),
                "latency_n": len(latencies),
                "score_sum": sum(scores),
                "score_n": len(scores),
            }
        return table, stats


def run_judge(
    plan: JudgePlan, out: StageDir, overwrite: bool = False, tags: dict[str, str] | None = None
) -> dict[str, Any]:
    """Judge every pending generate shard, check that every row is there once, mark the stage done.

    ``tags`` label the stage's Ray metrics (``datagen.metrics.stage_tags``; default: from ``out``'s path).
    """
    out.start(plan.fingerprint, overwrite=overwrite)
    done = out.completed_shards()
    shards = sorted(plan.inputs.completed_shards())
    tasks = [
        {"shard": i, "path": str(plan.inputs.path / f"part-{i:05d}.parquet")} for i in shards if i not in done
    ]
    started = time.perf_counter()
    manifest = run_shard_stage(
        out,
        tasks,
        JudgeWorker,
        {
            "judges": {n: s.model_dump() for n, s in plan.judges.items()},
            "tags": tags or metrics.stage_tags(out.path),
            "image_dir": str(plan.images),
        },
        ActorPool(plan.pool.min_actors, plan.pool.max_actors, plan.pool.num_cpus, plan.num_gpus, plan.env_vars or {},
                  plan.pool.max_restarts),
        desc="judge",
    )
    expected = plan.inputs.read(columns=["prompt_id", "sample_idx"])
    got = out.read(columns=["prompt_id", "sample_idx"])
    keys = set(zip(got["prompt_id"].to_pylist(), got["sample_idx"].to_pylist(), strict=True))
    if got.num_rows != expected.num_rows or len(keys) != got.num_rows:
        raise RuntimeError(
            f"{out.path}: expected {expected.num_rows} unique rows, found {got.num_rows} rows "
            f"with {len(keys)} unique keys"
        )
    summary: dict[str, Any] = {
        "rows": got.num_rows,
        "shards": len(shards),
        "shards_this_run": len(manifest),
        "wall_seconds_this_run": time.perf_counter() - started,
        "judges": {},
    }
    for name in plan.judges:
        per = [m["stats"][name] for m in manifest]
        total = {
            k: sum(p[k] for p in per)
            for k in (
                "rows",
                "errors",
                "calls",
                "cache_hits",
                "prompt_tokens",
                "completion_tokens",
                "retries",
            )
        }
        n = sum(p["score_n"] for p in per)
        total["mean_score_this_run"] = sum(p["score_sum"] for p in per) / n if n else None
        answered = sum(p["latency_n"] for p in per)
        total["mean_latency_s"] = sum(p["latency_sum"] for p in per) / answered if answered else None
        error_col = out.read(columns=[judge_column(name, "error")]).column(0).to_pylist()
        total["rows_flagged"] = sum(1 for e in error_col if e)
        summary["judges"][name] = total
    out.mark_done(summary)
    return summary
