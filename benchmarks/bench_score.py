"""SCoRe's per-step costs: weight sync, rollout tokens/s, trainer time; sync vs overlap; 1 vs 2 engines.

    python benchmarks/bench_score.py [--model smollm2-135m-instruct] [--steps 4] [--out runs/bench-score]
        [--variants float32 bfloat16 blob adapter overlap two_engines]

Each variant runs ``selfcorrect train configs/score_quickstart.yaml`` as a subprocess (its own Ray)
for ``--steps`` steps with a small batch (dynamic sampling off, so every variant samples the same
number of episodes per step), then reads ``RUN_DIR/train/metrics.jsonl``. The first step is left
out of the means (it includes the engines' first requests). Reported per variant: mean weight-sync
seconds and bytes, rollout seconds and tokens/s, judge seconds, trainer seconds per update, the
engine-vs-trainer log-prob mismatch, and the wall time per step (``step_seconds``), which is what
overlapping rollouts with updates shortens. ``float32`` and ``bfloat16`` pin the engine's and the
trainer's dtype (``auto`` picks bfloat16 on CPUs with AMX or AVX512-BF16). The generate
stage's throughput on the same engine settings is measured once for comparison
(``selfcorrect generate`` with the same max_tokens and temperature).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from benchmarks.measure import run_measured  # noqa: E402

CONFIG = ROOT / "configs" / "score_quickstart.yaml"
FRACTIONS = {"gradient_fraction_first_round", "gradient_fraction", "batch_has_gradient"}  # a 0 counts
VARIANTS: dict[str, list[str]] = {
    # the weights' dtype, one run after the other on the same machine (name its bf16 flags beside the figures)
    "float32": ["train.score.weight_sync=blob", "generate.engine.dtype=float32", "train.precision=fp32"],
    "bfloat16": ["train.score.weight_sync=blob", "generate.engine.dtype=bfloat16", "train.precision=bf16"],
    # dynamic sampling on: more prompts per step where the first ones carry no gradient
    "dynamic": ["train.score.weight_sync=blob", "train.score.dynamic_sampling.enabled=true"],
    "blob": ["train.score.weight_sync=blob"],
    "adapter": ["train.score.weight_sync=adapter"],
    "overlap": ["train.score.weight_sync=blob", "train.score.overlap=true"],
    # two engines and the trainer's 1.5 CPUs must fit together on a 2-core machine
    "two_engines": ["train.score.weight_sync=blob", "train.score.rollout_actors=2", "generate.engine.num_cpus=0.25"],
}


def run_variant(name: str, out: Path, model: str, steps: int, extra: list[str]) -> dict:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"run_dir={run_dir}",
        f"model={model}",
        "train.score.stage1_steps=1",
        f"train.score.stage2_steps={steps - 1}",
        "train.score.prompts_per_step=4",
        "train.score.n=4",
        "train.score.dynamic_sampling.enabled=false",  # the same rollouts per step in every variant
        *extra,
    ]
    m = run_measured([sys.executable, "-m", "cluster.cli", "train", str(CONFIG), *overrides])
    if m.returncode != 0:
        return {"variant": name, "error": m.stderr[-2000:]}
    log = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    later = log[1:] or log
    keys = ("sync_seconds", "sync_bytes", "rollout_tokens_per_s", "train_seconds", "step_seconds", "rollout_seconds",
            "judge_seconds", "logp_mismatch", "rollout_tokens", "prompts_drawn", "gradient_fraction_first_round",
            "gradient_fraction", "batch_has_gradient")
    out_row = {"variant": name, "steps": len(log), "wall_seconds": round(m.seconds, 1)}
    for k in keys:
        values = [r[k] for r in later if r.get(k) is not None and (r[k] or k in FRACTIONS)]
        out_row[k] = round(fmean(values), 3) if values else None
    out_row["peak_pss_gib"] = round(m.peak_pss_gib, 2) if m.peak_pss_gib else None
    return out_row


def generate_rate(out: Path, model: str) -> float | None:
    run_dir = out / "generate"
    shutil.rmtree(run_dir, ignore_errors=True)
    m = run_measured(
        [sys.executable, "-m", "cluster.cli", "generate", str(CONFIG), f"run_dir={run_dir}", f"model={model}",
         "prompts.limit=16", "generate.n=4", "generate.temperature=1.0", "generate.review_prompt=score"]
    )  # fmt: skip
    if m.returncode != 0:
        return None
    summary = json.loads((run_dir / "generate" / "_SUCCESS.json").read_text())
    return summary.get("worker_tokens_per_s")  # inside the actors, as the rollouts' tokens/s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-score")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--no-generate", action="store_true", help="skip the generate stage's comparison")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_variant(v, args.out, args.model, args.steps, VARIANTS[v]) for v in args.variants]
    result = {"variants": rows}
    if not args.no_generate:
        result["generate_tokens_per_s"] = generate_rate(args.out, args.model)
    print(json.dumps(result, indent=2))
    (args.out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
