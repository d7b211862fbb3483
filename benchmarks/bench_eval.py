"""Eval throughput against the generate stage's: same prompts, same model, same engine settings.

    python benchmarks/bench_eval.py [--out runs/bench-eval] [--problems 200] [KEY=VALUE ...]

Runs `selfcorrect generate` on the eval's prompts with the eval's decoding (greedy, one sample,
attempt 1, review prompt, attempt 2), then `selfcorrect eval` of the base model alone, each in a
process of its own with configs/quickstart.yaml's engine settings, and prints problems/s of each:
by the stage's own clock (generate: its wall time; eval: the model's generate + judge time) and
by the whole process (Ray start, model load, engine start included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.measure import run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-eval")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    n = args.problems
    common = [sys.executable, "-m", "cluster.cli"]
    tail = ["ray.include_dashboard=false", *args.overrides]
    gen_dir, eval_dir = args.out / "generate-run", args.out / "eval-run"
    prompts = ["prompts.split=test", f"prompts.size={n}", "prompts.limit=null"]
    decoding = ["generate.mode=two_attempt", "generate.n=1", "generate.temperature=0"]
    runs = {
        "generate": [*common, "generate", "configs/quickstart.yaml", f"run_dir={gen_dir}", *prompts, *decoding, *tail],
        "eval": [
            *common, "eval", "configs/quickstart.yaml", f"run_dir={eval_dir}", "eval.models={base: null}",
            f"eval.prompts.size={n}", *tail,
        ],  # fmt: skip
    }
    results = {}
    for name, cmd in runs.items():
        m = run_measured(cmd, interval=None)
        if m.returncode:
            raise SystemExit(f"{name} failed:\n{m.stderr[-3000:]}")
        if name == "generate":
            s = json.loads((gen_dir / "generate" / "_SUCCESS.json").read_text())
            stage_s, problems = s["wall_seconds_this_run"], s["prompts"]
        else:
            s = json.loads((eval_dir / "eval" / "_SUCCESS.json").read_text())["models"]["base"]
            stage_s, problems = s["generate_seconds"] + s["judge_seconds"], s["problems"]
        results[name] = {
            "problems": problems,
            "stage_seconds": round(stage_s, 1),
            "stage_problems_per_s": round(problems / stage_s, 3),
            "process_seconds": round(m.seconds, 1),
            "process_problems_per_s": round(problems / m.seconds, 3),
            "summary": s,
        }
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "summary"}}), flush=True)
    (args.out / "bench_eval.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
