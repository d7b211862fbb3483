"""The offline data stages: generate (prompts -> samples), judge (samples -> scored rows), build (scored
rows -> a training set), export (the training set for other trainers)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.config import Config, ConfigError
from cluster.runtime import Demand, engine_demand, num
from cluster.stages.base import Fingerprint, Stage, State, seconds, shard_state
from datagen.shards import StageDir
from rl.config import BuildConfig


def offline_data_unused(cfg: Config) -> str | None:
    """An algorithm that samples its own episodes on-policy does not use the offline data."""
    from rl.algorithms import ALGORITHMS

    if ALGORITHMS.get(cfg.train.algorithm).offline_data:
        return None
    return (f"train.algorithm {cfg.train.algorithm} samples its own rollouts during train; run it by name to get "
            "the base model's samples")  # fmt: skip


# --- generate ------------------------------------------------------------------------------------


def _generate_prepare(cfg: Config) -> Any:
    from datagen.generate import plan_generate

    return plan_generate(cfg.prompts, cfg.generate, cfg.model, cfg.model_cache, cfg.seed)


def _generate_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from datagen.generate import run_generate

    return run_generate(plan, StageDir(cfg.stage_dir("generate")), overwrite=overwrite)


def generate_total(cfg: Config) -> int | None:
    """Shards of the generate stage: ceil(prompts / generate.shard_size); None when the prompts cannot be read."""
    from datagen.prompts import load_prompts

    try:
        return math.ceil(len(load_prompts(cfg.prompts)) / cfg.generate.shard_size)
    except Exception:  # a prompt file only the cluster sees, say: the total is unknown, not an error here
        return None


def _generate_summary(s: dict[str, Any]) -> str:
    rate = s.get("tokens_per_s_this_run")
    speed = f" ({rate:.0f} tokens/s)" if rate else ""
    dtype = f", {s['dtype']}" if s.get("dtype") else ""
    left_out = ", ".join(f"{k} {v}" for k, v in (s.get("prompt_selection") or {}).items() if k != "kept" and v)
    left_out = f"; pass rate filter left out {left_out}" if left_out else ""
    return (f"generate: {s['prompts']} prompts -> {s['samples']} samples, {s['generated_tokens']:,} tokens{speed}, "
            f"{seconds(s.get('wall_seconds_this_run'))}{dtype}{left_out}")  # fmt: skip


GENERATE = Stage(
    "generate",
    "prompts -> samples with self-correction turns (RUN_DIR/generate/)",
    _generate_prepare,
    _generate_run,
    demands=lambda cfg: [engine_demand("generate.engine", cfg.generate.engine)],
    progress=lambda cfg: shard_state(StageDir(cfg.stage_dir("generate")), generate_total(cfg)),
    summary=_generate_summary,
    skip_in_run=offline_data_unused,
    object_storage=True,
)


# --- judge ---------------------------------------------------------------------------------------


def _judge_prepare(cfg: Config) -> Any:
    from datagen.judging import plan_judge

    return plan_judge(
        cfg.judges, cfg.run_dir, cfg.model, cfg.model_cache, cfg.generate.engine, cfg.seed, cfg.judge_pool
    )


def _judge_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from datagen.judging import run_judge

    return run_judge(plan, StageDir(cfg.stage_dir("judge")), overwrite=overwrite)


def judge_demands(cfg: Config) -> list[Demand]:
    """The judge pool at min_actors, each actor with the GPUs of the judge that needs most."""
    gpus = {}
    for name, s in cfg.judges.items():
        # a self_critic without num_gpus of its own takes generate.engine's (datagen.judging.plan_judge)
        g = float(getattr(s, "num_gpus", 0) or (cfg.generate.engine.num_gpus if s.type == "self_critic" else 0))
        if g:
            gpus[f"judges.{name}.num_gpus"] = g
    need = max(gpus.values(), default=0.0)
    keys = ", ".join(f"{k}={num(v)}" for k, v in gpus.items() if v == need)
    pool = cfg.judge_pool
    return [
        Demand(
            (f"{keys}, " if keys else "") + f"judge_pool.num_cpus={num(pool.num_cpus)} per judge actor, "
            f"judge_pool.min_actors={pool.min_actors}",
            {"CPU": pool.num_cpus, "GPU": need},
            pool.min_actors,
        )
    ]


def _judge_progress(cfg: Config) -> State:
    gen = StageDir(cfg.stage_dir("generate"))
    total = gen.summary().get("shards") if gen.done() else generate_total(cfg)
    return shard_state(StageDir(cfg.stage_dir("judge")), total)


def _judge_summary(s: dict[str, Any]) -> str:
    judges = s.get("judges", {})
    flagged = ", ".join(f"{n} {j.get('rows_flagged', 0)}" for n, j in judges.items())
    return (f"judge: {s['rows']} rows judged by {', '.join(judges) or 'no judge'} (flagged: {flagged or 'none'}), "
            f"{seconds(s.get('wall_seconds_this_run'))}")  # fmt: skip


JUDGE = Stage(
    "judge",
    "samples -> the same rows with each judge's score, raw output and error columns (RUN_DIR/judge/)",
    _judge_prepare,
    _judge_run,
    demands=judge_demands,
    progress=_judge_progress,
    summary=_judge_summary,
    skip_in_run=offline_data_unused,
    object_storage=True,
)


# --- build ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    fingerprint: dict[str, Any]
    build: BuildConfig  # with the run's seed, and the judge's pass mark where build.min_score is unset


def _build_prepare(cfg: Config) -> BuildPlan:
    from rl.build import build_fingerprint
    from rl.builders import get_builder, selfee_threshold

    try:
        get_builder(cfg.build.builder)  # an unknown builder fails before anything runs
    except (ValueError, TypeError) as e:
        raise ConfigError(f"build.builder: {e}") from None
    build = cfg.build if cfg.build.seed is not None else cfg.build.model_copy(update={"seed": cfg.seed})
    fingerprint = build_fingerprint(build, StageDir(cfg.stage_dir("judge")))
    if build.builder == "selfee" and build.min_score is None and build.judge is not None:
        # the builder sees the judge's pass mark in its units; the fingerprint keeps the setting as given
        build = build.model_copy(update={"min_score": selfee_threshold(build, cfg.judges)})
    return BuildPlan(fingerprint, build)


def _build_run(cfg: Config, plan: BuildPlan, overwrite: bool) -> dict[str, Any]:
    from rl.build import run_build

    return run_build(
        plan.build, StageDir(cfg.stage_dir("judge")), StageDir(cfg.stage_dir("build")), overwrite, echo=False
    )


def _build_summary(s: dict[str, Any]) -> str:
    noun = "pairs" if s.get("kind") == "pairs" else "examples"
    dropped = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items() if v)
    of = f" of {s['prompts_in']}" if "prompts_in" in s else ""
    return (f"build: {s['builder']}, {s['rows_in']} rows -> {s['pairs_out']} {noun} ({s['prompts_out']}{of} prompts)"
            + (f"; dropped {dropped}" if dropped else ""))  # fmt: skip


BUILD = Stage(
    "build",
    "judged rows -> preference pairs or SFT chains for the chosen method (RUN_DIR/build/)",
    _build_prepare,
    _build_run,
    summary=_build_summary,
    needs_ray=False,
    skip_in_run=offline_data_unused,
    object_storage=True,
)


# --- export --------------------------------------------------------------------------------------


def _export_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.export import run_export

    return run_export(StageDir(cfg.stage_dir("build")), cfg.stage_dir("export"))


EXPORT = Stage(
    "export",
    "the training set as LLaMA-Factory pairwise and Alpaca JSON (RUN_DIR/export/)",
    lambda cfg: Fingerprint({"build": str(cfg.stage_dir("build"))}),
    _export_run,
    needs_ray=False,
    in_run=False,
    object_storage=True,
)
