"""``selfcorrect calibrate``: where a model stands on the task ladder, before any training (``RUN_DIR/calibrate/``).

A model learns from its own samples only where it is sometimes right and sometimes wrong: a prompt
whose samples all get the same verdict gives no preference pair and, under a leave-one-out
baseline, no policy gradient. Calibration measures, per level of the built-in arithmetic
(``datagen.arithmetic``) or for the config's own prompts, on the first ``calibrate.size`` problems
of the *train* split:

- greedy, as the eval decodes: pass@1 (Acc@t1), and under the review prompt Acc@t2, Δ, Δi→c, Δc→i;
- ``calibrate.n`` samples of attempt 1 at the sampling temperature: pass@k (Chen et al. 2021), and
  how many prompts have signal (neither all right nor all wrong).

The train split, because what calibration decides — the level, the prompts to keep — is a training
choice: the test split stays unseen until the eval, so the final numbers are not of problems that
were picked for how the model did on them. The first problems of the train split are the prompts a
run with ``prompts.limit`` trains on, so their pass rates serve ``prompts.pass_rate`` directly.

It is made of the stages the eval composes (``rl.evaluate``): the generate stage and the judge
stage, each resumed shard by shard, on every level's prompts at once (one engine start per pass)::

    RUN_DIR/calibrate/greedy/{generate,judge}/   two attempts, greedy
    RUN_DIR/calibrate/sampled/{generate,judge}/  n samples of attempt 1
    RUN_DIR/calibrate/calibration.json           per level: the table, with 95% intervals
    RUN_DIR/calibrate/pass_rates.jsonl           per prompt: level, samples, right, pass_rate, greedy t1/t2
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from datagen import storage
from datagen.arithmetic import LEVELS
from datagen.config import EngineConfig, GenerateConfig, JudgePoolConfig, PromptsConfig
from datagen.generate import GeneratePlan, plan_generate_prompts, run_generate
from datagen.judging import judge_versions, plan_judge, run_judge
from datagen.metrics import stage_tags
from datagen.prompts import load_prompts
from datagen.records import Prompt, judge_column
from datagen.shards import StageDir, atomic_write_bytes, atomic_write_json
from datagen.storage import Location
from judges.config import JudgeSettings
from rl import metrics
from rl.config import PASS_RATES_FILE, CalibrateConfig
from rl.evaluate import EvalInputError, is_pairwise, measuring_generate

THRESHOLD = 0.5  # a score at or above this is right (the verifier says 1 or 0)


@dataclass
class CalibratePlan:
    levels: dict[str, list[str]]  # level (or the prompt source) -> its prompt ids, in table order
    greedy: GeneratePlan
    sampled: GeneratePlan
    judges: dict[str, JudgeSettings]
    judge: str
    cfg: CalibrateConfig
    policy: str
    model_cache: str
    engine: EngineConfig
    seed: int
    pool: JudgePoolConfig
    run_dir: Location
    header: dict[str, Any]
    fingerprint: dict[str, Any]


def level_prompts(cfg: CalibrateConfig, prompts: PromptsConfig) -> dict[str, list[Prompt]]:
    """The problems to measure: per level, the first ``cfg.size`` of the train split, the config's
    other prompt settings kept (a word level's max_operand); a prompt file: its first ``cfg.size``.

    Unfiltered: calibration measures the prompts that ``prompts.pass_rate`` later filters."""
    given = prompts.model_dump(exclude_unset=True, exclude={"limit", "pass_rate", "level"})
    if prompts.builtin != "arithmetic":
        if cfg.levels is not None:
            raise EvalInputError("calibrate.levels: the levels are of the built-in arithmetic, not of prompts.path")
        source = prompts.model_validate({**given, "limit": cfg.size})
        return {str(prompts.path or prompts.builtin): load_prompts(source)}
    out = {}
    for name in cfg.levels or list(LEVELS):
        fields = {**given, "split": "train", "level": name, "limit": cfg.size}
        if not LEVELS[name].word:
            fields.pop("max_operand", None)
        out[name] = load_prompts(PromptsConfig.model_validate(fields))
    return out


def plan_calibrate(
    cfg: CalibrateConfig,
    *,
    prompts: PromptsConfig,
    generate: GenerateConfig,
    model: str,
    model_cache: str,
    seed: int,
    judges: dict[str, JudgeSettings],
    pool: JudgePoolConfig,
    run_dir: str | storage.ObjectPath,
) -> CalibratePlan:
    """Check everything calibration depends on, before Ray starts and before anything is written."""
    scalar = {n: s for n, s in judges.items() if not is_pairwise(s)}
    if not scalar:
        raise EvalInputError("judges: calibration needs a judge that scores each attempt (e.g. judges.verifier={})")
    judge = "verifier" if "verifier" in scalar else next(iter(scalar))
    by_level = level_prompts(cfg, prompts)
    every = [p for ps in by_level.values() for p in ps]
    source = {"levels": {name: len(ps) for name, ps in by_level.items()}, "prompts": prompts.model_dump()}
    greedy_gen = measuring_generate(
        generate, n=1, temperature=0.0, max_tokens=cfg.max_tokens, review_prompt=cfg.review_prompt
    )
    temperature = generate.temperature if cfg.temperature is None else cfg.temperature
    sampled_gen = measuring_generate(
        generate, n=cfg.n, temperature=temperature, max_tokens=cfg.max_tokens, mode="single"
    )
    greedy = plan_generate_prompts(every, source, greedy_gen, model, model_cache, seed)
    sampled = plan_generate_prompts(every, source, sampled_gen, model, model_cache, seed)
    header = {
        "model": model,
        "split": "train",
        "n": cfg.n,
        "temperature": temperature,
        "max_tokens": greedy_gen.max_tokens,
        "review_prompt": greedy_gen.review_text(),
        "judge": judge,
        "pass_k": [k for k in cfg.pass_k if k <= cfg.n],
    }
    fingerprint = {
        "greedy": greedy.fingerprint,
        "sampled": sampled.fingerprint,
        "judges": {n: s.model_dump() for n, s in scalar.items()},
        "judge_versions": judge_versions(scalar),
        "pass_k": header["pass_k"],
    }
    return CalibratePlan(
        {name: [p.prompt_id for p in ps] for name, ps in by_level.items()},
        greedy,
        sampled,
        scalar,
        judge,
        cfg,
        model,
        model_cache,
        generate.engine,
        seed,
        pool,
        storage.as_location(run_dir),
        header,
        json.loads(json.dumps(fingerprint)),
    )


# --- the maths: pure functions of judged rows -----------------------------------------------------


def pass_counts(rows: Iterable[dict], judge: str, threshold: float = THRESHOLD) -> dict[str, tuple[int, int]]:
    """Per prompt (samples judged, samples right) at attempt 1; a flagged or unscored sample is left out."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        n_c = counts.setdefault(r["prompt_id"], [0, 0])
        score, err = r.get(judge_column(judge, "score1")), r.get(judge_column(judge, "error"))
        if err or score is None:
            continue
        n_c[0] += 1
        n_c[1] += int(score >= threshold)
    return {p: (n, c) for p, (n, c) in counts.items()}


def signal(counts: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Shares of prompts by what their samples say: ``all_right`` (c = n), ``all_wrong`` (c = 0) and
    ``mixed`` (0 < c < n, the only prompts that give a DPO pair or a nonzero RLOO advantage:
    A_i = r_i − mean_{j≠i} r_j is 0 for every sample when all r are equal). Prompts with no judged
    sample are left out."""
    judged = [(n, c) for n, c in counts if n > 0]
    if not judged:
        return {"all_right": math.nan, "all_wrong": math.nan, "mixed": math.nan}
    total = len(judged)
    return {
        "all_right": sum(c == n for n, c in judged) / total,
        "all_wrong": sum(c == 0 for n, c in judged) / total,
        "mixed": sum(0 < c < n for n, c in judged) / total,
    }


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over prompts of the unbiased pass@k (``rl.metrics.pass_at_k``, Chen et al. 2021), over the
    prompts with at least k judged samples (NaN when none has)."""
    values = [metrics.pass_at_k(n, c, k) for n, c in counts if n >= k]
    return sum(values) / len(values) if values else math.nan


def level_metrics(
    greedy_rows: list[dict], counts: dict[str, tuple[int, int]], judge: str, pass_k: Sequence[int], seed: int = 0
) -> dict[str, Any]:
    """One level's entry of calibration.json: greedy two-attempt metrics (``rl.metrics.two_attempt``)
    and pass@k and signal shares of the samples."""
    found = metrics.outcomes(greedy_rows, judge, THRESHOLD)
    sampled = list(counts.values())
    judged = [(n, c) for n, c in sampled if n > 0]
    rates = [c / n for n, c in judged]
    return metrics.json_safe(
        {
            "problems": len({o.problem for o in found}),
            "unjudgeable": sum(not o.judged for o in found),
            **metrics.two_attempt(found, seed=seed),
            "transitions": metrics.transitions(found),
            "samples": sum(n for n, _ in sampled),
            "pass_rate": metrics.proportion(rates),
            "pass_at_k": {str(k): mean_pass_at_k(sampled, k) for k in pass_k},
            "signal": signal(sampled),
        }
    )


def format_table(doc: dict[str, Any]) -> str:
    """The calibration table, one row per level, as printed at the end of ``selfcorrect calibrate``."""
    head = doc["calibrate"]
    ks = head["pass_k"]
    t = head["temperature"]
    cols = ["level", "problems", "pass@1 greedy"] + [f"pass@{k} T={t:g}" for k in ks]
    cols += ["signal", "Acc@t2", "Δ", "i→c", "c→i"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = []
    for name, m in doc["levels"].items():
        delta = m["delta"]["value"]
        rows.append(
            [name, str(m["problems"]), pct(m["acc_t1"]["value"])]
            + [pct(m["pass_at_k"].get(str(k))) for k in ks]
            + [
                pct(m["signal"]["mixed"]),
                pct(m["acc_t2"]["value"]),
                "-" if delta is None else f"{100 * delta:+.1f} pp",
                pct(m["delta_i2c"]["value"]),
                pct(m["delta_c2i"]["value"]),
            ]
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    note = (
        f"signal: problems whose {head['n']} samples at T={t:g} are neither all right nor all wrong; "
        f"Acc@t2, Δ, i→c, c→i: greedy, after the review prompt"
    )
    return "\n".join([line(cols), *map(line, rows), note])


# --- the run ----------------------------------------------------------------------------------------


def _generate_and_judge(plan: CalibratePlan, gen: GeneratePlan, root: Location) -> list[dict]:
    gen_dir, judge_dir = StageDir(root / "generate"), StageDir(root / "judge")
    if not judge_dir.done():
        if not gen_dir.done():
            run_generate(gen, gen_dir, tags=stage_tags(gen_dir.path, plan.run_dir))
        jplan = plan_judge(plan.judges, root, plan.policy, plan.model_cache, plan.engine, plan.seed, plan.pool)
        run_judge(jplan, judge_dir, tags=stage_tags(judge_dir.path, plan.run_dir))
    j = plan.judge
    columns = ["prompt_id", "sample_idx", *(judge_column(j, s) for s in ("score1", "score2", "error"))]
    return judge_dir.read(columns=columns).to_pylist()


def run_calibrate(plan: CalibratePlan, out: StageDir, overwrite: bool = False) -> dict[str, Any]:
    """Measure every level, write calibration.json and pass_rates.jsonl, mark the stage done. Needs Ray."""
    out.start(plan.fingerprint, overwrite=overwrite)
    started = time.perf_counter()
    greedy = _generate_and_judge(plan, plan.greedy, out.path / "greedy")
    sampled = _generate_and_judge(plan, plan.sampled, out.path / "sampled")
    counts = pass_counts(sampled, plan.judge)
    first = {o.problem: o for o in metrics.outcomes(greedy, plan.judge, THRESHOLD)}
    levels, lines, unjudged = {}, [], 0
    for name, ids in plan.levels.items():
        members = set(ids)
        levels[name] = level_metrics(
            [r for r in greedy if r["prompt_id"] in members],
            {p: counts.get(p, (0, 0)) for p in ids},
            plan.judge,
            plan.header["pass_k"],
            plan.seed,
        )
        for p in ids:
            n, c = counts.get(p, (0, 0))
            if n == 0:
                unjudged += 1  # no pass rate to write: left out of the file, counted in the summary
                continue
            o = first.get(p)
            lines.append(
                {
                    "prompt_id": p,
                    "level": name,
                    "samples": n,
                    "right": c,
                    "pass_rate": c / n,
                    "greedy_t1": None if o is None else o.t1,
                    "greedy_t2": None if o is None else o.t2,
                }
            )
    document = {"version": 1, "calibrate": plan.header, "levels": levels}
    atomic_write_json(out.path / "calibration.json", metrics.json_safe(document), sort_keys=False)
    atomic_write_bytes(out.path / PASS_RATES_FILE, "".join(json.dumps(x) + "\n" for x in lines).encode())
    summary = {
        "seconds": round(time.perf_counter() - started, 2),
        "calibration": str(out.path / "calibration.json"),
        "pass_rates": str(out.path / PASS_RATES_FILE),
        "prompts_without_judged_sample": unjudged,
        "table": format_table(document),
    }
    out.mark_done(summary)
    return summary
