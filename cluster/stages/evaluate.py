"""The eval stage (each model answers, reviews and answers again on held-out prompts) and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster.config import Config
from cluster.runtime import engine_demand
from cluster.stages.base import Fingerprint, Stage, State, seconds, shard_state
from cluster.stages.data import judge_demands
from datagen import storage
from datagen.shards import StageDir
from datagen.storage import as_location


def _eval_prepare(cfg: Config) -> Any:
    from rl.algorithms import ALGORITHMS
    from rl.evaluate import plan_eval

    generate = cfg.generate
    review = ALGORITHMS.get(cfg.train.algorithm).review_prompt(cfg.train)
    if review is not None:  # evaluated with the instruction it was trained to answer
        generate = generate.model_copy(update={"review_prompt": review})
    return plan_eval(
        cfg.eval,
        run_dir=cfg.run_dir,
        model=cfg.model,
        model_cache=cfg.model_cache,
        seed=cfg.seed,
        generate=generate,
        train_prompts=cfg.prompts,
        judges=cfg.judges,
        pool=cfg.judge_pool,
    )


def _eval_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.evaluate import run_eval

    return run_eval(plan, StageDir(cfg.stage_dir("eval")), overwrite=overwrite)


def _eval_progress(cfg: Config) -> State:
    root = cfg.stage_dir("eval")
    if StageDir(root).done():
        models = StageDir(root).summary().get("models", {})
        return "done", f"{', '.join(models)}; metrics {root / 'metrics.json'}"
    labels = sorted(n for n in storage.list_names(root) if storage.exists(root / n / "generate"))
    if not labels:
        return "not started", ""
    parts = []
    for label in labels:
        gen = StageDir(root / label / "generate")
        state, shards = shard_state(gen, None)
        judge_total = gen.summary().get("shards") if gen.done() else None
        jstate, jshards = shard_state(StageDir(root / label / "judge"), judge_total)
        parts.append(f"{label}: generate {shards if state == 'partial' else state}, "
                     f"judge {jshards if jstate == 'partial' else jstate}")  # fmt: skip
    return "partial", "; ".join(parts)


def _eval_summary(s: dict[str, Any]) -> str:
    models = s["models"]
    problems = sorted({m["problems"] for m in models.values()})
    return f"eval: {', '.join(models)} on {'/'.join(map(str, problems))} problems each, {seconds(s['seconds'])}"


EVAL = Stage(
    "eval",
    "each model (base, trained, your own) answers, reviews and answers again on held-out prompts; "
    "Acc@t1, Acc@t2, delta and tests in RUN_DIR/eval/metrics.json",
    _eval_prepare,
    _eval_run,
    # the eval runs its models with generate.engine (rl.evaluate), then the judges: never both at once
    demands=lambda cfg: [
        engine_demand("generate.engine", cfg.generate.engine)._replace(phase="generate"),
        *(d._replace(phase="judge") for d in judge_demands(cfg)),
    ],
    progress=_eval_progress,
    summary=_eval_summary,
    object_storage=True,
)


def _report_prepare(cfg: Config) -> Fingerprint:
    from rl.report import METRICS_FILE, read_metrics

    metrics = as_location(cfg.run_dir) / METRICS_FILE
    read_metrics(metrics)  # missing or unreadable: refused before anything is written
    return Fingerprint({"metrics": str(metrics)})


def _report_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.report import write_report

    return write_report(cfg.run_dir, cfg.stage_dir("report"))


def _report_summary(s: dict[str, Any]) -> str:
    from rl.report import before_after

    table = ""
    metrics = Path(s["html"]).parents[1] / "eval" / "metrics.json"
    if metrics.exists():
        table = "\n" + before_after(json.loads(metrics.read_text())) + "\n\n"
    return f"{table}report: {s['html']} (report.md and the plots beside it)"


REPORT = Stage(
    "report",
    "report.md, a self-contained report.html and PNG plots from RUN_DIR/eval/metrics.json (RUN_DIR/report/)",
    _report_prepare,
    _report_run,
    progress=lambda cfg: ("done" if storage.exists(cfg.stage_dir("report") / "report.html") else "not started", ""),
    summary=_report_summary,
    needs_ray=False,
    always=True,
    object_storage=True,
)
