"""The stages of a run, by name, in the order ``selfcorrect run`` takes them.

A stage has two halves: ``prepare`` checks everything that depends only on the config and the
inputs (before Ray starts, writing nothing) and returns a plan whose ``fingerprint`` (a dict, or
None) records the settings that shape the output; ``run`` does the work with Ray up. A finished
stage is skipped when its fingerprint matches, and refused when it does not. Each gets the
whole config here and hands its components only the parts they need.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.config import Config, ConfigError
from datagen.shards import STAGE_FILE, SUCCESS_FILE, StageDir
from datagen.storage import ObjectPath, StorageError, as_location, check_writable, local_cache, upload_folder


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    prepare: Callable[[Config], Any]
    run: Callable[[Config, Any, bool], dict[str, Any]]
    needs_ray: bool = True
    in_run: bool = True  # part of `selfcorrect run`; otherwise only run by name
    always: bool = False  # cheap and derived from other stages' output: redone every time, never skipped
    skip_in_run: Callable[[Config], str | None] | None = None  # why `selfcorrect run` leaves it out, if it does
    object_storage: bool = False  # runs with run_dir on object storage (s3://...)

    def output(self, cfg: Config) -> StageDir:
        return StageDir(cfg.stage_dir(self.name))


STAGES: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


def check_run_dir(cfg: Config, stages: list[Stage]) -> str | None:
    """Refuse, before any stage runs, a run_dir on object storage that a stage cannot use or that cannot be
    written (``StorageError``); for one that can, return where the logs go instead (they stay on local disk)."""
    run_dir = as_location(cfg.run_dir)
    if not isinstance(run_dir, ObjectPath):
        return None
    unsupported = [s.name for s in stages if not s.object_storage]
    if unsupported:
        raise StorageError(
            f"run_dir {run_dir}: the {', '.join(unsupported)} stage{'s' if len(unsupported) > 1 else ''} "
            f"cannot write to object storage; use a local run_dir for {'them' if len(unsupported) > 1 else 'it'}"
        )
    check_writable(run_dir)
    return str(local_cache(run_dir, "logs"))


def _calibrate_prepare(cfg: Config) -> Any:
    from rl.calibrate import plan_calibrate

    generate, calibrate = cfg.generate, cfg.calibrate
    if cfg.train.algorithm == "score":  # measured as SCoRe samples: its instruction, temperature and length
        score = cfg.train.score
        generate = generate.model_copy(
            update={
                "review_prompt": score.review_prompt,
                "temperature": score.temperature,
                "max_tokens": score.max_tokens or generate.max_tokens,
            }
        )
    return plan_calibrate(
        calibrate,
        prompts=cfg.prompts,
        generate=generate,
        model=cfg.model,
        model_cache=cfg.model_cache,
        seed=cfg.seed,
        judges=cfg.judges,
        pool=cfg.judge_pool,
        run_dir=cfg.run_dir,
    )


def _calibrate_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.calibrate import run_calibrate

    return run_calibrate(plan, StageDir(cfg.stage_dir("calibrate")), overwrite=overwrite)


register(
    Stage(
        "calibrate",
        "where the model stands before training: per level of the arithmetic ladder, pass@1 greedy, pass@k "
        "sampled, Acc@t1/Acc@t2 under the review prompt, and each prompt's pass rate (RUN_DIR/calibrate/)",
        _calibrate_prepare,
        _calibrate_run,
        in_run=False,
        object_storage=True,
    )
)


def _generate_prepare(cfg: Config) -> Any:
    from datagen.generate import plan_generate

    return plan_generate(cfg.prompts, cfg.generate, cfg.model, cfg.model_cache, cfg.seed)


def _generate_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from datagen.generate import run_generate

    return run_generate(plan, StageDir(cfg.stage_dir("generate")), overwrite=overwrite)


def _offline_data_unused(cfg: Config) -> str | None:
    """SCoRe samples its own episodes on-policy: the offline generate -> judge -> build data is not used."""
    if cfg.train.algorithm == "score":
        return "SCoRe samples its own rollouts during train; run it by name to get the base model's samples"
    return None


register(
    Stage(
        "generate",
        "prompts -> samples with self-correction turns (RUN_DIR/generate/)",
        _generate_prepare,
        _generate_run,
        skip_in_run=_offline_data_unused,
        object_storage=True,
    )
)


def _judge_prepare(cfg: Config) -> Any:
    from datagen.judging import plan_judge

    return plan_judge(
        cfg.judges, cfg.run_dir, cfg.model, cfg.model_cache, cfg.generate.engine, cfg.seed, cfg.judge_pool
    )


def _judge_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from datagen.judging import run_judge

    return run_judge(plan, StageDir(cfg.stage_dir("judge")), overwrite=overwrite)


register(
    Stage(
        "judge",
        "samples -> the same rows with each judge's score, raw output and error columns (RUN_DIR/judge/)",
        _judge_prepare,
        _judge_run,
        skip_in_run=_offline_data_unused,
        object_storage=True,
    )
)


@dataclass(frozen=True)
class _Plan:
    fingerprint: dict[str, Any]
    model_path: str | None = None
    settings: Any = None  # the narrow config the stage's run takes, when prepare completed it
    report: dict[str, Any] | None = None


def _build_prepare(cfg: Config) -> Any:
    from rl.build import build_fingerprint
    from rl.builders import get_builder

    try:
        get_builder(cfg.build.builder)  # an unknown builder fails before anything runs
    except (ValueError, TypeError) as e:
        raise ConfigError(f"build.builder: {e}") from None
    build = cfg.build if cfg.build.seed is not None else cfg.build.model_copy(update={"seed": cfg.seed})
    return _Plan(build_fingerprint(build, StageDir(cfg.stage_dir("judge"))), settings=build)


def _build_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.build import run_build

    return run_build(
        plan.settings, StageDir(cfg.stage_dir("judge")), StageDir(cfg.stage_dir("build")), overwrite, echo=False
    )


register(
    Stage(
        "build",
        "judged rows -> preference pairs or SFT chains for the chosen method (RUN_DIR/build/)",
        _build_prepare,
        _build_run,
        needs_ray=False,
        skip_in_run=_offline_data_unused,
        object_storage=True,
    )
)


def _export_prepare(cfg: Config) -> Any:
    return _Plan({"build": str(cfg.stage_dir("build"))})


def _export_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.export import run_export

    return run_export(StageDir(cfg.stage_dir("build")), cfg.stage_dir("export"))


register(
    Stage(
        "export",
        "the training set as LLaMA-Factory pairwise and Alpaca JSON (RUN_DIR/export/)",
        _export_prepare,
        _export_run,
        needs_ray=False,
        in_run=False,
        object_storage=True,
    )
)


def _train_prepare(cfg: Config) -> Any:
    """The model, the build's kind and size, and every sequence's length against train.max_length,
    checked before Ray Train starts (``StageInputError``: exit 2). SCoRe: its prompts, judge and sync."""
    from datagen.models import resolve_model
    from rl.train import check_data, train_fingerprint

    model_path = resolve_model(cfg.model, cfg.model_cache)
    if cfg.train.algorithm == "score":
        return _score_prepare(cfg, model_path)
    build_dir = StageDir(cfg.stage_dir("build"))
    # A finished train stage is only compared by fingerprint; with --overwrite, run_train checks the data.
    done = StageDir(cfg.stage_dir("train")).done()
    report = None if done else check_data(cfg.train, model_path, build_dir)
    return _Plan(train_fingerprint(cfg.train, model_path, build_dir), model_path, report=report)


def _score_prepare(cfg: Config, model_path: str) -> Any:
    from datagen.generate import check_lengths
    from datagen.prompts import load_prompts
    from rl.score import check_score, score_fingerprint

    score = cfg.train.score
    check_score(cfg.train, cfg.judges, model_path, cfg.generate)
    prompts = load_prompts(cfg.prompts)
    if any(p.images for p in prompts):
        raise ConfigError("train.algorithm: score samples text prompts only; these prompts carry images")
    generate = cfg.generate.model_copy(update={"max_tokens": score.max_tokens or cfg.generate.max_tokens})
    check_lengths(prompts, model_path, generate)
    judge = cfg.judges[score.judge]
    if judge.type == "openai" and judge.cache_dir is None:
        # on local disk when the run is on object storage: one small file per request
        cache = local_cache(as_location(cfg.run_dir), "judge_cache") / f"score_{score.judge}"
        judge = judge.model_copy(update={"cache_dir": str(cache)})
    fingerprint = score_fingerprint(cfg.train, model_path, prompts, score.judge, judge, generate)
    return _Plan(fingerprint, model_path, settings={"prompts": prompts, "generate": generate, "judge": judge})


def _train_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    if cfg.train.algorithm == "score":
        from rl.score import run_score

        return run_score(
            cfg.train,
            plan.model_path,
            cfg.model,
            plan.settings["prompts"],
            plan.settings["generate"],
            cfg.train.score.judge,
            plan.settings["judge"],
            cfg.stage_dir("train"),  # on object storage too: run_score keeps a local mirror itself
            overwrite,
            seed=cfg.seed,
        )
    from rl.train import run_train

    build_dir = StageDir(cfg.stage_dir("build"))
    out = StageDir(cfg.stage_dir("train"))
    if not isinstance(out.path, ObjectPath):
        return run_train(cfg.train, plan.model_path, build_dir, out.path, overwrite, report=plan.report)
    # On object storage: Ray Train's checkpoints go there directly (a new driver anywhere resumes from
    # them); the folder the workers append metrics to is a local mirror, uploaded when training ends.
    out.start(plan.fingerprint, overwrite=overwrite)  # other settings refused; --overwrite drops old checkpoints
    mirror = local_cache(out.path.parent, "train")
    summary = run_train(
        cfg.train, plan.model_path, build_dir, mirror, overwrite, report=plan.report, checkpoints=out.path
    )
    upload_folder(mirror, out.path, skip=(STAGE_FILE, SUCCESS_FILE))
    # the paths it reports (model, adapter) name the mirror: name the objects instead
    summary = json.loads(json.dumps(summary).replace(json.dumps(str(mirror))[1:-1], str(out.path)))
    out.mark_done(summary)  # last: the model and its metrics are in place
    return summary


register(
    Stage(
        "train",
        "DPO, SFT or SCoRe on Ray Train with LoRA; checkpoints, resume, final model in RUN_DIR/train/model",
        _train_prepare,
        _train_run,
        object_storage=True,
    )
)


def _eval_prepare(cfg: Config) -> Any:
    from rl.evaluate import plan_eval

    generate = cfg.generate
    if cfg.train.algorithm == "score":  # evaluated with the instruction it was trained to answer
        generate = generate.model_copy(update={"review_prompt": cfg.train.score.review_prompt})
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


def _report_prepare(cfg: Config) -> Any:
    from rl.report import METRICS_FILE, read_metrics

    metrics = as_location(cfg.run_dir) / METRICS_FILE
    read_metrics(metrics)  # missing or unreadable: refused before anything is written
    return _Plan({"metrics": str(metrics)})


def _report_run(cfg: Config, plan: Any, overwrite: bool) -> dict[str, Any]:
    from rl.report import write_report

    return write_report(cfg.run_dir, cfg.stage_dir("report"))


register(
    Stage(
        "eval",
        "each model (base, trained, your own) answers, reviews and answers again on held-out prompts; "
        "Acc@t1, Acc@t2, delta and tests in RUN_DIR/eval/metrics.json",
        _eval_prepare,
        _eval_run,
        object_storage=True,
    )
)


register(
    Stage(
        "report",
        "report.md, a self-contained report.html and PNG plots from RUN_DIR/eval/metrics.json (RUN_DIR/report/)",
        _report_prepare,
        _report_run,
        needs_ray=False,
        always=True,
        object_storage=True,
    )
)
