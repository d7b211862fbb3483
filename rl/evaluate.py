"""The eval stage: how well each model corrects itself, before and after training (``RUN_DIR/eval/``).

Where it sits (the import direction of docs/architecture.md): ``rl`` may import ``datagen`` and ``judges``, and this
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

Prompts with images keep them in the run's image store (``RUN_DIR/images``), shared with the
training prompts' and stored once however many models answer them.

``RUN_DIR`` may be on object storage: the sub-stages write there as they do anywhere, and a model
folder there (``RUN_DIR/train/model``) is checked and fingerprinted as its objects and copied to local
disk, once per version, by each process that loads it (``datagen.models.resolve_model``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from datagen import storage
from datagen.config import EngineConfig, GenerateConfig, JudgePoolConfig, PromptsConfig
from datagen.generate import GeneratePlan, plan_generate, run_generate
from datagen.images import store_location
from datagen.judging import judge_versions, plan_judge, run_judge
from datagen.metrics import stage_tags
from datagen.models import ModelNotFoundError, resolve_model
from datagen.prompts import load_prompts
from datagen.records import SAMPLE_SCHEMA, judge_column
from datagen.selfee import answer_after_revisions
from datagen.shards import STAGE_FILE, StageDir, StageInputError, atomic_write_json, shard_name
from datagen.storage import Location
from judges.config import JudgeSettings
from rl import metrics
from rl.config import BUILTIN_LABELS, EvalConfig

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
INHERITED_GENERATE = {"engine", "system_prompt", "top_p", "top_k", "shard_size"}


class EvalInputError(StageInputError):
    """An eval that cannot run as configured; the message names the key or the ids."""


@dataclass
class ModelRun:
    label: str
    model: str  # as the config names it: an alias, an HF name or a folder
    generate: GeneratePlan
    selfee: GeneratePlan | None = None  # revision-enforce answers, when eval.selfee_revisions is set


@dataclass
class EvalPlan:
    models: list[ModelRun]
    judges: dict[str, JudgeSettings]  # those that score each attempt; pairwise ones run on model pairs only
    judge: str
    cfg: EvalConfig
    policy: str  # the config's model: judges that use the policy (self_critic) stay the same for every model
    model_cache: str
    engine: EngineConfig
    seed: int
    pool: JudgePoolConfig
    header: dict[str, Any]
    fingerprint: dict[str, Any]
    pairwise: dict[str, JudgeSettings]
    run_dir: Location  # the run's directory: its name tags the Ray metrics of the eval's sub-stages


def resolve_labels(
    models: dict[str, str | None] | None, base: str, run_dir: str | Path | storage.ObjectPath
) -> list[tuple[str, str]]:
    """(label, model) pairs in table order; ``trained`` is RUN_DIR/train/model once training finished
    (on object storage, its URI: each process that loads it copies it to local disk)."""
    trained = storage.as_location(run_dir) / "train" / "model"
    train_done = StageDir(trained.parent).done() and storage.exists(trained / "config.json")
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


def _weight_files(model: str) -> list[tuple[str, int, int]] | None:
    """(name, size, time) of the weights in a model folder, local or on object storage; None for a hub name."""
    where = storage.as_location(model)
    if isinstance(where, Path):
        where = where.expanduser()
        if not where.is_dir():
            return None
    suffixes = tuple(p.lstrip("*") for p in WEIGHT_PATTERNS)
    return [f for f in storage.folder_files(where) if "/" not in f[0] and f[0].endswith(suffixes)]


def check_weights(label: str, model: str) -> None:
    """A model folder must hold weights, not only a config (a half-copied or adapter-only folder)."""
    if _weight_files(model) == []:
        raise EvalInputError(
            f"eval.models.{label}: {model} has config.json but no weights (*.safetensors or *.bin)"
        )


def check_overlap(eval_prompts: PromptsConfig, train_prompts: PromptsConfig) -> None:
    """Refuse an eval set that shares a problem (by id, or by identical prompt) with the training prompts."""
    train = load_prompts(train_prompts)
    train_ids = {p.prompt_id for p in train}

    def problem(p: Any) -> str:  # the text and the pictures: one question about two images is two problems
        return json.dumps([p.messages, list(p.images)], sort_keys=True)

    train_texts = {problem(p) for p in train}
    shared = [p.prompt_id for p in load_prompts(eval_prompts) if p.prompt_id in train_ids or problem(p) in train_texts]
    if shared:
        shown = ", ".join(shared[:10]) + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
        raise EvalInputError(
            f"eval.prompts shares {len(shared)} problem(s) with the training prompts (prompts): {shown}. "
            "Evaluate on held-out problems (e.g. eval.prompts.split=test)"
        )


def _prompts_desc(cfg: PromptsConfig, count: int) -> str:
    source = f"builtin {cfg.builtin} {cfg.split}" if cfg.builtin else str(cfg.path)
    return f"{source} ({count})"


def _weights_signature(model: str) -> list[list[Any]]:
    """Names, sizes and times of a folder's weights: a retrained model at the same path is a new model.

    Of the folder as the config names it: on object storage the objects' upload times, which every
    machine sees alike (a local copy's times would differ from one machine to the next)."""
    return [list(f) for f in _weight_files(model) or []]


def is_pairwise(settings: JudgeSettings) -> bool:
    """Judges that pick the better of two responses rather than score each one."""
    return settings.type == "self_critic" or getattr(settings, "mode", None) == "pairwise"


def _selfee_generate(cfg: EvalConfig, inherited: dict[str, Any], max_tokens: int) -> GenerateConfig:
    k = cfg.selfee_revisions
    try:
        return GenerateConfig.model_validate(
            {
                **inherited,
                "mode": "selfee",
                "n": cfg.n,
                "temperature": cfg.temperature,
                "max_tokens": max_tokens,
                "max_revisions": k,
                "enforce_revisions": k,  # SelFee's revision-enforce inference: at least K revisions
                **cfg.selfee_generate,
            }
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise EvalInputError(f"eval.selfee_generate: {problems}") from None


def measuring_generate(
    generate: GenerateConfig,
    *,
    n: int,
    temperature: float,
    max_tokens: int | None = None,
    review_prompt: str | None = None,
    mode: str = "two_attempt",
) -> GenerateConfig:
    """The generate settings of a measurement (the eval, a calibration) from the config's own.

    A measurement decodes its own way; of the config's generate settings it keeps only where and how
    the engine runs and the prompt framing (a SelFee teacher, revisions or sampling would change what
    is measured), and the config's max_tokens and review prompt unless it names its own.
    """
    return GenerateConfig.model_validate(
        {
            **generate.model_dump(include=INHERITED_GENERATE),
            "mode": mode,
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens or generate.max_tokens,
            "review_prompt": review_prompt or generate.review_prompt,
        }
    )


def plan_eval(
    cfg: EvalConfig,
    *,
    run_dir: str | Path | storage.ObjectPath,
    model: str,
    model_cache: str,
    seed: int,
    generate: GenerateConfig,
    train_prompts: PromptsConfig,
    judges: dict[str, JudgeSettings],
    pool: JudgePoolConfig,
) -> EvalPlan:
    """Check everything the eval depends on, before Ray starts and before anything is written."""
    run_dir = storage.as_location(run_dir)
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
    gen = measuring_generate(
        generate,
        n=cfg.n,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        review_prompt=cfg.review_prompt,
    )
    inherited = generate.model_dump(include=INHERITED_GENERATE)
    selfee = _selfee_generate(cfg, inherited, gen.max_tokens) if cfg.selfee_revisions else None
    runs = []
    for label, name in labels:
        try:
            path = resolve_model(name, model_cache)
        except ModelNotFoundError as e:
            raise ModelNotFoundError(f"eval.models.{label}: {e}") from None
        # the folder as named: a model on object storage is checked (and fingerprinted) as its objects
        named = name if storage.is_uri(name) else path
        check_weights(label, named)
        run = ModelRun(label, name, plan_generate(cfg.prompts, gen, name, model_cache, seed))
        if selfee is not None:
            run.selfee = plan_generate(cfg.prompts, selfee, name, model_cache, seed)
        for plan in (run.generate, run.selfee):
            if plan is not None:
                plan.fingerprint["weights"] = _weights_signature(named)
        runs.append(run)
    pairwise = {n: s for n, s in use_judges.items() if is_pairwise(s)} if cfg.pairwise else {}
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
        "selfee": {r.label: r.selfee.fingerprint for r in runs if r.selfee is not None},
        "judges": {n: s.model_dump() for n, s in use_judges.items()},
        "judge_versions": judge_versions(use_judges),
        "metrics": cfg.model_dump(include={"judge", "threshold", "pass_k", "bootstrap", "pairwise"}),
    }
    return EvalPlan(
        runs,
        {n: s for n, s in use_judges.items() if not is_pairwise(s)},
        judge,
        cfg,
        model,
        model_cache,
        generate.engine,
        seed,
        pool,
        header,
        json.loads(json.dumps(fingerprint)),
        pairwise,
        run_dir,
    )


def versus_rows(rows: list[dict[str, Any]], against: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows whose pair is (the other model's attempt 2, this model's attempt 2), for pairwise judges:
    a preference for response 2 is a win for this model. Rows pair up by (prompt_id, sample_idx)."""
    theirs = {(r["prompt_id"], r["sample_idx"]): r for r in against}
    out = []
    for r in rows:
        other = theirs[(r["prompt_id"], r["sample_idx"])]
        out.append(
            {
                **r,
                "attempt1": other["attempt2"],
                "attempt1_tokens": other["attempt2_tokens"],
                "attempt1_finish": other["attempt2_finish"],
            }
        )
    return out


def selfee_rows(
    rows: list[dict[str, Any]], k_max: int, n: int, answer_after=answer_after_revisions
) -> list[dict[str, Any]]:
    """One row per (sample, k) for k = 0..k_max with the answer after k revisions as attempt 1, under
    sample index k * n + sample_idx, so one judge pass scores every k."""
    out = []
    for k in range(k_max + 1):
        for r in rows:
            done = len(r.get("revisions") or [])
            finish = r["attempt1_finish"] if k == 0 or done == 0 else r["attempt2_finish"] if k >= done else None
            out.append(
                {
                    **r,
                    "sample_idx": k * n + r["sample_idx"],
                    "attempt1": answer_after(r, k),
                    "attempt1_tokens": None,
                    "attempt1_finish": finish,
                    "attempt2": None,
                    "attempt2_tokens": None,
                    "attempt2_finish": None,
                }
            )
    return out


def derive_stage(
    source: StageDir,
    dest: StageDir,
    tag: dict[str, Any],
    rows_fn: Callable[[int, list[dict[str, Any]]], list[dict[str, Any]]],
) -> None:
    """A finished generate-like stage whose shard i is ``rows_fn(i, rows of source shard i)``.

    The judge stage then scores rows the generate stage never wrote (another model's answer beside
    this one's, the answer after k revisions) and resumes shard by shard as it does anywhere.
    """
    if dest.done():
        return
    dest.start({"derived_from": storage.read_json(source.path / STAGE_FILE), **tag})
    done = dest.completed_shards()
    for i in sorted(source.completed_shards() - done):
        rows = rows_fn(i, storage.read_table(source.path / shard_name(i)).to_pylist())
        dest.write_shard(i, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    samples = dest.dataset().count_rows()  # from the footers
    dest.mark_done({"samples": samples, "wall_seconds_this_run": 0.0})


def _judged(plan: EvalPlan, root: Location, judges: dict[str, JudgeSettings]) -> StageDir:
    """The judge stage on ``root/generate``, into ``root/judge`` (skipped once done)."""
    out = StageDir(root / "judge")
    if not out.done():
        jplan = plan_judge(
            judges, root, plan.policy, plan.model_cache, plan.engine, plan.seed, plan.pool, store_location(plan.run_dir)
        )
        run_judge(jplan, out, tags=stage_tags(out.path, plan.run_dir))
    return out


def _eval_model(plan: EvalPlan, run: ModelRun, root: Location) -> dict[str, Any]:
    """Generate and judge one model's rows (each sub-stage resumed or skipped as it stands)."""
    base = root / run.label
    gen_dir, judge_dir = StageDir(base / "generate"), StageDir(base / "judge")
    if not judge_dir.done():
        if not gen_dir.done():
            run_generate(
                run.generate, gen_dir, tags=stage_tags(gen_dir.path, plan.run_dir), images=store_location(plan.run_dir)
            )
        _judged(plan, base, plan.judges)
    gen, judged = gen_dir.summary(), judge_dir.summary()
    return {
        "generate_seconds": gen["wall_seconds_this_run"],
        "startup_seconds": gen.get("startup_seconds"),
        "judge_seconds": judged["wall_seconds_this_run"],
        "generated_tokens": gen["generated_tokens"],
    }


def _selfee_k(plan: EvalPlan, run: ModelRun, root: Location) -> dict[str, Any]:
    """Accuracy after 0..K enforced revisions: a SelFee generation, its answers per k, the eval judge."""
    assert run.selfee is not None and plan.cfg.selfee_revisions is not None
    gen_dir = StageDir(root / run.label / "selfee" / "generate")
    if not gen_dir.done():
        run_generate(
            run.selfee, gen_dir, tags=stage_tags(gen_dir.path, plan.run_dir), images=store_location(plan.run_dir)
        )
    k_max, n = plan.cfg.selfee_revisions, plan.cfg.n
    derived = root / run.label / "selfee_k"
    derive_stage(
        gen_dir, StageDir(derived / "generate"), {"k": k_max}, lambda i, rows: selfee_rows(rows, k_max, n)
    )
    judged = _judged(plan, derived, {plan.judge: plan.judges[plan.judge]})
    j = plan.judge
    rows = judged.read(columns=["prompt_id", "sample_idx", judge_column(j, "score1"), judge_column(j, "error")])
    return metrics.selfee_accuracy(rows.to_pylist(), j, n, plan.cfg.threshold)


def _pairwise(plan: EvalPlan, label: str, root: Location) -> list[dict[str, Any]]:
    """Each pairwise judge's verdicts on (base's attempt 2, this model's attempt 2)."""
    ours, theirs = StageDir(root / label / "generate"), StageDir(root / "base" / "generate")
    derived = root / label / "vs_base"
    tag = {"against": storage.read_json(theirs.path / STAGE_FILE)}
    derive_stage(
        ours,
        StageDir(derived / "generate"),
        tag,
        lambda i, rows: versus_rows(rows, storage.read_table(theirs.path / shard_name(i)).to_pylist()),
    )
    judged = _judged(plan, derived, plan.pairwise)
    out = []
    for name in plan.pairwise:
        rows = judged.read(columns=[judge_column(name, "pref"), judge_column(name, "error")]).to_pylist()
        result = metrics.win_tie_loss([metrics.pref_vote(r, name) for r in rows])
        out.append({"model": label, "against": "base", "judge": name, **result})
    return out


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
        if run.selfee is not None:
            models[run.label]["selfee_k"] = metrics.json_safe(_selfee_k(plan, run, out.path))
    pairwise = []
    if plan.pairwise and "base" in models:
        for label in models:
            if label != "base":
                pairwise += _pairwise(plan, label, out.path)
    document = {
        "version": 1,
        "eval": plan.header,
        "models": models,
        "comparisons": metrics.comparisons(found),
        "pairwise": pairwise,
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
