"""Time and peak memory of each stage of the real quickstart (SmolLM2-135M on CPU).

    python benchmarks/bench_quickstart.py [--out runs/bench-quickstart]

Runs `selfcorrect STAGE configs/quickstart.yaml` for generate, judge, build, train and eval, each as
its own process (the way `selfcorrect run` chains them), and records wall time and the peak
summed PSS of the process tree, plus each stage's own summary.
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

STAGES = ("generate", "judge", "build", "train", "eval")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quickstart")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    results = {}
    for stage in STAGES:
        cmd = [sys.executable, "-m", "cluster.cli", stage, "configs/quickstart.yaml", f"run_dir={args.out}"]
        m = run_measured(cmd + ["ray.include_dashboard=false", *args.overrides])
        if m.returncode:
            raise SystemExit(f"{stage} failed:\n{m.stderr[-3000:]}")
        summary = json.loads((args.out / stage / "_SUCCESS.json").read_text())
        results[stage] = {"seconds": round(m.seconds, 1), "peak_pss_gib": round(m.peak_pss_gib, 2), "summary": summary}
        print(json.dumps({stage: results[stage]}, default=str), flush=True)
    results["total_seconds"] = round(sum(results[s]["seconds"] for s in STAGES), 1)
    (args.out / "bench_quickstart.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({"total_seconds": results["total_seconds"]}))


if __name__ == "__main__":
    main()
