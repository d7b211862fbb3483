"""The eval stage: how well each model corrects itself, before and after training (``RUN_DIR/eval/``).

Where it sits (DESIGN.md's import direction): ``rl`` may import ``datagen`` and ``judges``, and this
module composes their stages rather than copying them — each model's rows are made by the generate
stage (``datagen.generate``: its engine, turns and shards) and scored by the judge stage
(``datagen.judging``), each on a sub-directory of its own; the maths is in ``rl.metrics`` (pure
functions); ``cluster.stages`` registers the stage after ``train``.

    RUN_DIR/eval/_stage.json          the settings of the whole eval (refused when they change)
    RUN_DIR/eval/LABEL/generate/      the generate stage's shards and markers, for model LABEL
    RUN_DIR/eval/LABEL/judge/         the judge stage's
    RUN_DIR/eval/metrics.json         the metrics of every model (the report reads only this)
    RUN_DIR/eval/_SUCCESS.json        the stage's summary

Decoding is the eval's own (greedy by default, as SCoRe evaluates) and always two attempts:
attempt 1, the review prompt, attempt 2. The sub-stages resume exactly once as they do on their
own, so an eval killed part way redoes only the missing shards, and a model whose rows are judged
already is not run again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.config import EngineConfig, GenerateConfig, JudgePoolConfig, PromptsConfig
from datagen.generate import GeneratePlan, plan_generate, run_generate
from datagen.judging import plan_judge, run_judge
from datagen.models import ModelNotFoundError, resolve_model
from datagen.prompts import load_prompts
from datagen.records import judge_column
from datagen.shards import StageDir, StageInputError, atomic_write_json
from judges.config import JudgeSettings
from rl import metrics
from rl.config import BUILTIN_LABELS, EvalConfig

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


class EvalInputError(StageInputError):
    """An eval that cannot run as configured; the message names the key or the ids."""


@dataclass
class ModelRun:
    label: str
    model: str  # as the config names it: an alias, an HF name or a folder
    generate: GeneratePlan


@dataclass
class EvalPlan:
    models: list[ModelRun]
    judges: dict[str, JudgeSettings]
    judge: str
    cfg: EvalConfig
    policy: str  # the config's model: judges that use the policy (self_critic) stay the same for every model
    model_cache: str
    engine: EngineConfig
    seed: int
    pool: JudgePoolConfig
    header: dict[str, Any]
    fingerprint: dict[str, Any]


def resolve_labels(models: dict[str, str | None] | None, base: str, run_dir: Path) -> list[tuple[str, str]]:
    """(label, model) pairs in table order; ``trained`` is RUN_DIR/train/model once training finished."""
    trained = run_dir / "train" / "model"
    train_done = StageDir(run_dir / "train").done() and (trained / "config.json").exists()
    if models is None:
        return [("base", base)] + ([("trained", str(trained))] if train_done else [])
    pairs = []
    for label, model in models.items():
        if model is None:
            if label == "base":
                model = base
            elif label == "trained":
                if not train_done:
                    raise EvalInputError(
                        f"eval.models names 'trained', but the train stage has not finished ({trained} is "
                        "missing): run the train stage first, or leave 'trained' out"
                    )
                model = str(trained)
            else:
                raise EvalInputError(
                    f"eval.models.{label}: unknown model label {label!r} (built in: {', '.join(BUILTIN_LABELS)}); "
                    f"give it a model: eval.models.{label}=HF_NAME_OR_FOLDER"
                )
        pairs.append((label, model))
    return pairs


def check_weights(label: str, path: str) -> None:
    """A model folder must hold weights, not only a config (a half-copied or adapter-only folder)."""
    folder = Path(path)
    if folder.is_dir() and not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        raise EvalInputError(
            f"eval.models.{label}: {folder} has config.json but no weights (*.safetensors or *.bin)"
        )


def check_overlap(eval_prompts: PromptsConfig, train_prompts: PromptsConfig) -> None:
    """Refuse an eval set that shares a problem (by id, or by identical prompt) with the training prompts."""
    train = load_prompts(train_prompts)
    train_ids = {p.prompt_id for p in train}
    train_texts = {json.dumps(p.messages, sort_keys=True) for p in train}
    shared = [
        p.prompt_id
        for p in load_prompts(eval_prompts)
        if p.prompt_id in train_ids or json.dumps(p.messages, sort_keys=True) in train_texts
    ]
    if shared:
        shown = ", ".join(shared[:10]) + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
        raise EvalInputError(
            f"eval.prompts shares {len(shared)} problem(s) with the training prompts (prompts): {shown}. "
            "Evaluate on held-out problems (e.g. eval.prompts.split=test)"
        )


def _prompts_desc(cfg: PromptsConfig, count: int) -> str:
    source = f"builtin {cfg.builtin} {cfg.split}" if cfg.builtin else str(cfg.path)
    return f"{source} ({count})"


def _weights_signature(path: str) -> list[list[Any]]:
    """Names, sizes and times of a folder's weights: a retrained model at the same path is a new model."""
    folder = Path(path)
    if not folder.is_dir():
        return []
    files = sorted(f for p in WEIGHT_PATTERNS for f in folder.glob(p))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def plan_eval(
    cfg: EvalConfig,
    *,
    run_dir: str | Path,
    model: str,
    model_cache: str,
    seed: int,
    generate: GenerateConfig,
    train_prompts: PromptsConfig,
    judges: dict[str, JudgeSettings],
    pool: JudgePoolConfig,
) -> EvalPlan:
    """Check everything the eval depends on, before Ray starts and before anything is written."""
    run_dir = Path(run_dir)
    labels = resolve_labels(cfg.models, model, run_dir)
    use_judges = cfg.judges if cfg.judges is not None else judges
    if not use_judges:
        raise EvalInputError("eval.judges: no judges (the eval needs one to tell right from wrong)")
    judge = cfg.judge or ("verifier" if "verifier" in use_judges else next(iter(use_judges)))
    if judge not in use_judges:
        raise EvalInputError(f"eval.judge: {judge!r} is not among the judges ({', '.join(use_judges)})")
    if getattr(use_judges[judge], "mode", None) == "pairwise":
        raise EvalInputError(f"eval.judge: {judge!r} is pairwise; right/wrong needs a judge that scores each attempt")
    check_overlap(cfg.prompts, train_prompts)
    gen = GenerateConfig.model_validate(
        {
            **generate.model_dump(),
            "mode": "two_attempt",
            "n": cfg.n,
            "temperature": cfg.temperature,
            "second_temperature": None,
            "max_tokens": cfg.max_tokens or generate.max_tokens,
            "review_prompt": cfg.review_prompt or generate.review_prompt,
        }
    )
    runs = []
    for label, name in labels:
        try:
            path = resolve_model(name, model_cache)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"eval.models.{label}: {e}") from None
        check_weights(label, path)
        plan = plan_generate(cfg.prompts, gen, name, model_cache, seed)
        plan.fingerprint["weights"] = _weights_signature(path)
        runs.append(ModelRun(label, name, plan))
    problems = len(runs[0].generate.prompts)
    header = {
        "prompts": _prompts_desc(cfg.prompts, problems),
        "problems": problems,
        "n": cfg.n,
        "temperature": cfg.temperature,
        "max_tokens": gen.max_tokens,
        "review_prompt": gen.review_text(),
        "judge": judge,
        "interval": "wilson",
    }
    fingerprint = {
        "models": {r.label: r.generate.fingerprint for r in runs},
        "judges": {n: s.model_dump() for n, s in use_judges.items()},
        "metrics": cfg.model_dump(include={"judge", "threshold", "pass_k", "bootstrap"}),
    }
    return EvalPlan(
        runs,
        dict(use_judges),
        judge,
        cfg,
        model,
        model_cache,
        generate.engine,
        seed,
        pool,
        header,
        json.loads(json.dumps(fingerprint)),
    )


def _eval_model(plan: EvalPlan, run: ModelRun, root: Path) -> dict[str, Any]:
    """Generate and judge one model's rows (each sub-stage resumed or skipped as it stands)."""
    base = root / run.label
    gen_dir, judge_dir = StageDir(base / "generate"), StageDir(base / "judge")
    if not judge_dir.done():
        if not gen_dir.done():
            run_generate(run.generate, gen_dir)
        jplan = plan_judge(plan.judges, base, plan.policy, plan.model_cache, plan.engine, plan.seed, plan.pool)
        run_judge(jplan, judge_dir)
    gen, judged = gen_dir.summary(), judge_dir.summary()
    return {
        "generate_seconds": gen["wall_seconds_this_run"],
        "startup_seconds": gen.get("startup_seconds"),
        "judge_seconds": judged["wall_seconds_this_run"],
        "generated_tokens": gen["generated_tokens"],
    }


def run_eval(plan: EvalPlan, out: StageDir, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate every model, write ``metrics.json``, mark the stage done. Needs Ray initialised."""
    out.start(plan.fingerprint, overwrite=overwrite)
    started = time.perf_counter()
    j = plan.judge
    columns = ["prompt_id", "sample_idx", "task", *(judge_column(j, s) for s in ("score1", "score2", "error"))]
    models: dict[str, dict[str, Any]] = {}
    found: dict[str, list[metrics.Outcome]] = {}
    timing: dict[str, dict[str, Any]] = {}
    for run in plan.models:
        timing[run.label] = _eval_model(plan, run, out.path)
        rows = StageDir(out.path / run.label / "judge").read(columns=columns).to_pylist()
        t = timing[run.label]
        models[run.label] = metrics.model_metrics(
            run.model,
            rows,
            judge=j,
            threshold=plan.cfg.threshold,
            pass_k=plan.cfg.pass_k,
            seconds=t["generate_seconds"] + t["judge_seconds"],
            seed=plan.seed,
            resamples=plan.cfg.bootstrap,
        )
        found[run.label] = metrics.outcomes(rows, j, plan.cfg.threshold)
    document = {
        "version": 1,
        "eval": plan.header,
        "models": models,
        "comparisons": metrics.comparisons(found),
        "pairwise": [],
    }
    atomic_write_json(out.path / "metrics.json", metrics.json_safe(document), sort_keys=False)
    summary = {
        "seconds": round(time.perf_counter() - started, 2),
        "metrics": str(out.path / "metrics.json"),
        "models": {
            label: {
                **{k: m[k] for k in ("problems", "samples", "unjudgeable", "problems_per_s")},
                **{k: m[k]["value"] for k in ("acc_t1", "acc_t2", "delta")},
                **timing[label],
            }
            for label, m in models.items()
        },
    }
    out.mark_done(summary)
    return summary
