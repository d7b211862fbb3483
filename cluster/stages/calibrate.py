"""The calibrate stage: where the model stands before training (``rl.calibrate``), run by name only."""

from __future__ import annotations

from typing import Any

from cluster.config import Config
from cluster.runtime import engine_demand
from cluster.stages.base import Stage, seconds
from datagen.shards import StageDir


def _prepare(cfg: Config) -> Any:
    from rl.algorithms import ALGORITHMS
    from rl.calibrate import plan_calibrate

    return plan_calibrate(
        cfg.calibrate,
        prompts=cfg.prompts,
        # measured as training samples the model: SCoRe with its own instruction, temperature and length
        generate=ALGORITHMS.get(cfg.train.algorithm).sampling(cfg.train, cfg.generate),
        model=cfg.model,
        model_cache=cfg.model_cache,
        seed=cfg.seed,
        judges=cfg.judges,
        pool=cfg.judge_pool,
        run_dir=cfg.run_dir,
    )


def _run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.calibrate import run_calibrate

    return run_calibrate(plan, StageDir(cfg.stage_dir("calibrate")), overwrite=overwrite)


def _summary(s: dict[str, Any]) -> str:
    return f"calibrate: {seconds(s['seconds'])}\n\n{s['table']}\n\ncalibrate: {s['calibration']}, {s['pass_rates']}"


CALIBRATE = Stage(
    "calibrate",
    "where the model stands before training: per level of the arithmetic ladder, pass@1 greedy, pass@k "
    "sampled, Acc@t1/Acc@t2 under the review prompt, and each prompt's pass rate (RUN_DIR/calibrate/)",
    _prepare,
    _run,
    demands=lambda cfg: [engine_demand("generate.engine", cfg.generate.engine)],
    summary=_summary,
    in_run=False,
    object_storage=True,
)
