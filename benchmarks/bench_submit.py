"""Time from `selfcorrect submit` to the first generated shard on disk, on a real `ray start --head`.

    python benchmarks/bench_submit.py [--model smollm2-135m-instruct] [--prompts 4] [--out runs/bench]

Starts a local head node (ports and temp dir of its own, token auth, as the job tests do), then
runs `selfcorrect submit --stage generate` with 4 prompts x 2 samples x 8 tokens in 2 shards and
watches RUN_DIR/generate/ for the first part file. Reported: the command's start to the job's
start (upload and submission), to the first shard (the job's driver, Ray Data, the actor and the
vLLM engine's start dominate), to the command's end; and the stage's own ``startup_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from head_node import job_client, ray_head_cluster  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp, ray_head_cluster(out, mp) as url:
        run = out / f"submit-{int(time.time())}"
        cmd = [
            sys.executable, "-m", "cluster.cli", "submit", "--stage", "generate", "--address", url,
            "configs/quickstart.yaml", f"run_dir={run}", f"model={args.model}", f"prompts.limit={args.prompts}",
            "generate.n=2", "generate.max_tokens=8", "generate.shard_size=2", "generate.engine.max_model_len=512",
        ]
        wall0, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        first = None
        while proc.poll() is None:
            if first is None and any((run / "generate").glob("part-*.parquet")):
                first = time.perf_counter() - t0
            time.sleep(0.2)
        total = time.perf_counter() - t0
        log = proc.stdout.read()
        if proc.returncode != 0:
            sys.exit(f"submit exited {proc.returncode}:\n{log[-4000:]}")
        (job,) = job_client(url).list_jobs()
        stage = json.loads((run / "generate" / "_SUCCESS.json").read_text())
    result = {
        "model": args.model,
        "to_job_start_s": round(job.start_time / 1000 - wall0, 1),
        "to_first_shard_s": round(first, 1) if first is not None else None,
        "to_command_end_s": round(total, 1),
        "stage_startup_s": round(stage["startup_seconds"], 1),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result))
    (out / "bench_submit.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
