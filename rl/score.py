"""SCoRe on Ray Train: two-stage multi-turn RL on on-policy rollouts from vLLM engine actors (the driver).

``plan_score`` checks before Ray starts what can be refused (the judge, the weight-sync backend, the
LoRA targets, every prompt against the context) and fingerprints the settings; ``run_score`` starts
``train.score.rollout_actors`` engine actors (``rl.rollout.RolloutWorker``, each on a placement group
of its own) and a ``TorchTrainer`` whose workers run ``rl.score_recipe.ScoreRecipe``. At the end the
kept weights (the best training reward over ``select_window`` steps, as the paper keeps its best
checkpoint, or the last) are saved as a Hugging Face folder in ``OUT/model`` (and the adapter in
``OUT/adapter``). ``OUT`` may be on object storage (``run_score`` says what goes there when).

pi_ref is the starting model: with LoRA, the same weights with the adapter disabled; otherwise a
frozen copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from datagen import storage
from datagen.config import GenerateConfig
from datagen.records import Prompt
from datagen.shards import STAGE_FILE, SUCCESS_FILE, StageDir, StageInputError, atomic_write_bytes
from judges.config import JudgeSettings
from rl.config import TrainConfig, TrainInputs
from rl.raytrain import METRICS_FILE, PROGRESS_FILE, local_folder, make_trainer, publish_final, step_bar
from rl.score_recipe import ROLLOUT_DIR, ScoreLoopConfig, _pull_metrics, score_loop


def sync_backend(cfg: TrainConfig) -> str:
    s = cfg.score
    if s.weight_sync != "auto":
        return s.weight_sync
    return "nccl" if cfg.use_gpu else "blob"


def check_score(cfg: TrainConfig, judges: dict[str, JudgeSettings], model_path: str, generate: GenerateConfig) -> None:
    """What can be refused before Ray starts (``StageInputError``: exit 2), naming the key."""
    from rl.checks import check_lora_targets

    s = cfg.score
    if s.judge not in judges:
        raise StageInputError(
            f"train.score.judge: {s.judge!r} is not one of this config's judges ({', '.join(judges) or 'none'}); "
            f"add judges.{s.judge} or name one of those"
        )
    sync = sync_backend(cfg)
    if sync == "adapter" and not cfg.lora.enabled:
        raise StageInputError("train.score.weight_sync: adapter syncs a LoRA adapter; train.lora.enabled is false")
    if sync == "nccl" and not (cfg.use_gpu and generate.engine.num_gpus):
        raise StageInputError(
            "train.score.weight_sync: nccl needs GPUs on both sides (train.use_gpu and generate.engine.num_gpus); "
            "use blob on CPU"
        )
    # the trainer's log-probs are of the whole softmax(logits / temperature): a truncated sampler is another policy
    if generate.top_p < 1:
        raise StageInputError(f"generate.top_p {generate.top_p:g}: SCoRe trains on untruncated sampling; set it to 1")
    if generate.top_k > 0:
        raise StageInputError(f"generate.top_k {generate.top_k}: SCoRe trains on untruncated sampling; set it to -1")
    check_lora_targets(cfg, model_path)


def score_fingerprint(
    cfg: TrainConfig, model_path: str, prompts: list[Prompt], judge_name: str, judge: JudgeSettings,
    generate: GenerateConfig,
) -> dict[str, Any]:  # fmt: skip
    """The settings and inputs that shape the trained model: a finished run with others is refused."""
    from datagen.judging import PLACEMENT_KEYS, judge_versions

    ids = hashlib.sha256("\n".join(p.prompt_id for p in prompts).encode()).hexdigest()
    fp = {
        "train": cfg.model_dump(mode="json"),
        "model": model_path,
        "prompt_ids_sha256": ids,
        "judge": {judge_name: judge.model_dump(mode="json", exclude=PLACEMENT_KEYS)},
        "judge_version": judge_versions({judge_name: judge}),
        "system_prompt": generate.system_prompt,
        "top_p": generate.top_p,
        "top_k": generate.top_k,
        "max_tokens": generate.max_tokens,
    }
    return json.loads(json.dumps(fp))


@dataclass(frozen=True)
class ScorePlan:
    """What ``run_score`` needs, checked before Ray starts."""

    train: TrainConfig
    model_path: str
    model_name: str  # as the config names it
    prompts: list[Prompt]
    generate: GenerateConfig  # max_tokens: the attempts'
    judge_name: str
    judge: JudgeSettings
    seed: int
    fingerprint: dict[str, Any]


def plan_score(inputs: TrainInputs, prompts: list[Prompt]) -> ScorePlan:
    """Refuse what can be refused before Ray starts (``StageInputError``: exit 2): the judge, the weight
    sync, the LoRA targets, every prompt against the context; the plan otherwise."""
    from datagen.generate import check_lengths

    cfg = inputs.train
    s = cfg.score
    check_score(cfg, inputs.judges, inputs.model_path, inputs.generate)
    if any(p.images for p in prompts):
        raise StageInputError("train.algorithm: score samples text prompts only; these prompts carry images")
    generate = inputs.generate.model_copy(update={"max_tokens": s.max_tokens or inputs.generate.max_tokens})
    check_lengths(prompts, inputs.model_path, generate)
    judge = inputs.judges[s.judge]
    if getattr(judge, "cache_dir", "set") is None:
        judge = judge.model_copy(update={"cache_dir": str(inputs.judge_cache / f"score_{s.judge}")})
    fingerprint = score_fingerprint(cfg, inputs.model_path, prompts, s.judge, judge, generate)
    return ScorePlan(cfg, inputs.model_path, inputs.model, prompts, generate, s.judge, judge, inputs.seed, fingerprint)


def _start_actors(cfg: TrainConfig, plan: ScorePlan, sync: str):
    """The rollout engines, each on a placement group of its own; refused clearly when they cannot be placed."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from datagen.engine import engine_env
    from rl.rollout import RolloutWorker

    s = cfg.score
    engine = plan.generate.engine
    bundle = {"CPU": engine.num_cpus, **({"GPU": engine.num_gpus} if engine.num_gpus else {})}
    worker = ray.remote(RolloutWorker)
    actors, groups = [], []
    for i in range(s.rollout_actors):
        pg = placement_group([bundle], name=f"selfcorrect-rollout-{i}")
        groups.append(pg)
        try:
            ray.get(pg.ready(), timeout=s.sync_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise StageInputError(
                f"rollout engine {i} of train.score.rollout_actors={s.rollout_actors} needs {bundle} "
                f"(generate.engine.num_cpus/num_gpus); the cluster could not place it within "
                f"{s.sync_timeout_s:g} s (it has {ray.cluster_resources()})"
            ) from None
        actors.append(
            worker.options(
                num_cpus=engine.num_cpus,
                num_gpus=engine.num_gpus,
                max_restarts=engine.max_restarts,
                max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg),
                runtime_env={"env_vars": engine_env(engine)},
            ).remote(
                plan.model_path,
                engine.model_dump(),
                plan.generate.model_dump(),
                plan.seed,
                plan.generate.max_tokens,
                sync,
                cfg.lora.r if cfg.lora.enabled else None,
                plan.model_name,
            )
        )
    ray.get([a.ready.remote() for a in actors], timeout=s.sync_timeout_s * 2)
    return actors, groups


def _dedupe_metrics(path: Path) -> int:
    """Keep the last line of each step: a resumed run logs the steps it trained again."""
    if not path.exists():
        return 0
    by_step: dict[int, str] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            by_step[json.loads(line)["step"]] = line
    atomic_write_bytes(path, "".join(by_step[k] + "\n" for k in sorted(by_step)).encode())
    return len(by_step)


def run_score(
    plan: ScorePlan, out_dir: str | os.PathLike[str] | storage.ObjectPath, overwrite: bool = False
) -> dict[str, Any]:
    """Train with SCoRe; the kept model lands in ``out_dir/model``. Needs Ray initialised.

    A finished run is kept; a stopped one resumes from its last checkpoint. ``out_dir`` may be on object
    storage: Ray Train's checkpoints go there directly, so a new driver anywhere resumes from them; each
    step's rollouts are one upload of a whole Parquet file, and the metrics log, appended to on local
    disk, is uploaded whole after each line. A step (sampling, judging, an update) takes seconds to
    minutes and the log is small, so one more PUT per step costs nothing beside it, and a run that moves
    to another machine keeps every step's record. The model and adapter are uploaded at the end.
    """
    import ray
    from ray.util.placement_group import remove_placement_group

    cfg = plan.train
    out = StageDir(out_dir)
    if out.done() and not overwrite:
        out.check(plan.fingerprint)
        return out.summary()
    out.start(plan.fingerprint, overwrite=overwrite)
    remote = isinstance(out.path, storage.ObjectPath)
    local = local_folder(out, overwrite)
    metrics_object = out.path / METRICS_FILE if remote else None
    sync = sync_backend(cfg)
    started = time.perf_counter()
    actors, groups = _start_actors(cfg, plan, sync)
    try:
        loop = ScoreLoopConfig(
            train=cfg, model_path=plan.model_path, model_name=plan.model_name, prompts=plan.prompts,
            generate=plan.generate, judge=plan.judge, actors=actors, sync=sync,
            out_dir=str(out.path) if remote else str(local), local_dir=str(local),
            metrics_object=str(metrics_object) if metrics_object else None,
        )  # fmt: skip
        trainer = make_trainer(score_loop, {"loop": loop}, cfg, out.path)
        with step_bar(local / PROGRESS_FILE):
            result = trainer.fit()
    finally:
        try:
            ray.get([a.close.remote() for a in actors], timeout=60)
        except Exception:  # a dead or stuck engine: killing the actor below is enough
            pass
        for a in actors:
            ray.kill(a)
        for pg in groups:
            remove_placement_group(pg)
    if result.checkpoint is None:
        raise RuntimeError("training ended without a final checkpoint")
    final = publish_final(result.checkpoint, local)
    if metrics_object is not None:
        _pull_metrics(str(metrics_object), local / METRICS_FILE)  # rank 0 may have run on another machine
    steps = _dedupe_metrics(local / METRICS_FILE)
    log = [json.loads(x) for x in (local / METRICS_FILE).read_text().splitlines()] if steps else []
    if remote:
        storage.upload_folder(local, out.path, skip=(STAGE_FILE, SUCCESS_FILE, ROLLOUT_DIR))
    summary = {
        "algorithm": "score",
        "steps": final["step"],
        "stage1_steps": cfg.score.stage1_steps,
        "stage2_steps": cfg.score.stage2_steps,
        "kept": final.get("kept"),
        "kept_step": final.get("kept_step"),
        "kept_reward": final.get("kept_reward"),
        "weight_sync": sync,
        "prompts": len(plan.prompts),
        "episodes": sum(r.get("episodes", 0) for r in log),
        "flagged": sum(r.get("flagged", 0) for r in log),
        "first": {k: log[0].get(k) for k in ("reward_t1", "reward_t2")} if log else None,
        "last": {k: log[-1].get(k) for k in ("reward_t1", "reward_t2")} if log else None,
        "seconds": round(time.perf_counter() - started, 2),
        "model": str(out.path / "model"),
        "adapter": str(out.path / "adapter") if cfg.lora.enabled else None,
        "rollouts": str(out.path / ROLLOUT_DIR),
    }
    for key in ("sync_seconds", "sync_bytes", "rollout_tokens_per_s", "train_seconds", "step_seconds"):
        values = [r[key] for r in log if isinstance(r.get(key), (int, float)) and r.get(key)]
        summary[f"mean_{key}"] = fmean(values) if values else None
    # dynamic sampling: the share of prompts (and of batches) with a gradient, before and after it drew more
    for key in ("gradient_fraction_first_round", "gradient_fraction", "batch_has_gradient", "prompts_drawn"):
        values = [r[key] for r in log if isinstance(r.get(key), (int, float))]
        summary[f"mean_{key}"] = fmean(values) if values else None
    out.mark_done(summary)
    print(f"[score] kept the {summary['kept']} weights (step {summary['kept_step']})", file=sys.stderr)
    return summary
