"""The train stage: the algorithm ``train.algorithm`` names (``rl.algorithms``), on Ray Train."""

from __future__ import annotations

from typing import Any

from cluster.config import Config
from cluster.runtime import Demand, num
from cluster.stages.base import Stage, State, seconds
from datagen import storage
from datagen.shards import STAGE_FILE, StageDir
from datagen.storage import as_location, local_cache


def _algorithm(cfg: Config) -> Any:
    from rl.algorithms import ALGORITHMS

    return ALGORITHMS.get(cfg.train.algorithm)


def _prepare(cfg: Config) -> Any:
    """The algorithm's checks before Ray Train starts (``StageInputError``: exit 2), and its plan."""
    from datagen.models import resolve_model
    from rl.config import TrainInputs

    inputs = TrainInputs(
        train=cfg.train,
        model=cfg.model,
        model_path=resolve_model(cfg.model, cfg.model_cache),
        build=StageDir(cfg.stage_dir("build")),
        prompts=cfg.prompts,
        generate=cfg.generate,
        judges=cfg.judges,
        seed=cfg.seed,
        # on local disk when the run is on object storage: one small file per request
        judge_cache=local_cache(as_location(cfg.run_dir), "judge_cache"),
        done=StageDir(cfg.stage_dir("train")).done(),
    )
    return _algorithm(cfg).plan(inputs)


def _run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    return _algorithm(cfg).run(plan, cfg.stage_dir("train"), overwrite)  # local or on object storage


def _demands(cfg: Config) -> list[Demand]:
    """The workers, and the algorithm's rollout engines beside them (with generate.engine's settings)."""
    t = cfg.train
    demands = [
        Demand(
            f"train.use_gpu={str(t.use_gpu).lower()}, train.cpus_per_worker={num(t.cpus_per_worker)}, "
            f"train.num_workers={t.num_workers}",
            {"CPU": t.cpus_per_worker, "GPU": 1.0 if t.use_gpu else 0.0},
            t.num_workers,
        )
    ]
    engines, key = _algorithm(cfg).rollout_engines(t)
    if engines:
        e = cfg.generate.engine
        demands.append(
            Demand(
                f"generate.engine.num_gpus={num(e.num_gpus)}, generate.engine.num_cpus={num(e.num_cpus)} per "
                f"rollout engine, {key}={engines}",
                {"CPU": e.num_cpus, "GPU": e.num_gpus},
                engines,
            )
        )
    return demands


def _progress(cfg: Config) -> State:
    from rl.raytrain import PROGRESS_FILE, RUN_NAME

    out = StageDir(cfg.stage_dir("train"))
    if out.done():
        s = out.summary()
        return "done", f"{s.get('steps', '?')} steps, model {s.get('model', out.path / 'model')}"
    checkpoints = sorted(n for n in storage.list_names(out.path / RUN_NAME) if n.startswith("checkpoint_"))
    try:  # on object storage the progress file stays beside the driver: none here
        progress = storage.read_json(out.path / PROGRESS_FILE)
    except (OSError, ValueError):
        progress = None
    if not checkpoints and progress is None and not storage.exists(out.path / STAGE_FILE):
        return "not started", ""
    parts = []
    if progress is not None:
        parts.append(f"step {progress.get('step', '?')}/{progress.get('max_steps') or '?'}")
    parts.append(f"{len(checkpoints)} checkpoint(s)" + (f", last {checkpoints[-1]}" if checkpoints else ""))
    return "partial", ", ".join(parts)


def _summary(s: dict[str, Any]) -> str:
    took = seconds(s.get("seconds"))
    dtype = f", {s['dtype']}" if s.get("dtype") else ""
    what = "pairs" if s["algorithm"] == "dpo" else "examples"  # SFT trains on examples, not pairs
    return f"train: {s['algorithm']}, {s['steps']} steps on {s['pairs']} {what}, {took}{dtype} -> {s['model']}"


TRAIN = Stage(
    "train",
    "DPO, SFT or SCoRe on Ray Train with LoRA; checkpoints, resume, final model in RUN_DIR/train/model",
    _prepare,
    _run,
    demands=_demands,
    progress=_progress,
    summary=_summary,
    object_storage=True,
)
