"""A driver for tests/datagen/test_ray_metrics.py: a local Ray with its Prometheus endpoint on a given port.

It runs the judge stage over a small generate stage (the verifier, in a Ray Data actor pool) and
records generation, training and RL numbers from a Ray task, prints one JSON line (the actors'
class names as the dashboard lists them), then keeps Ray up until its stdin closes, so the test
can read the metrics back over HTTP. Its own process: the test session's Ray is left alone.

    python ray_metrics_driver.py RUN_DIR METRICS_PORT DASHBOARD_PORT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import ray

from datagen.metrics import record_generate, record_rl, stage_tags
from datagen.records import SAMPLE_SCHEMA
from datagen.shards import StageDir

SHARDS, PROMPTS, N = 2, 2, 2


def write_generate(run_dir: Path) -> None:
    gen = StageDir(run_dir / "generate")
    gen.start({"test": "metrics"})
    for shard in range(SHARDS):
        rows = []
        for p in range(shard * PROMPTS, (shard + 1) * PROMPTS):
            for s in range(N):
                rows.append(
                    {
                        "prompt_id": f"q{p}",
                        "sample_idx": s,
                        "task": "math",
                        "messages": [{"role": "user", "content": f"What is {p} + 1?"}],
                        "reference": str(p + 1),
                        "metadata": "{}",
                        "mode": "two_attempt",
                        "attempt1": f"The answer is {p + 2}.",  # always wrong
                        "attempt2": f"The answer is {p + 1 + s}.",  # right for sample 0 only
                    }
                )
        gen.write_shard(shard, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    gen.mark_done({"rows": SHARDS * PROMPTS * N})


@ray.remote(num_cpus=0)
def record_elsewhere(run_dir: str) -> None:
    """What a generation actor and an RL trainer record, from a Ray worker process of their own."""
    record_generate(stage_tags(Path(run_dir) / "generate"), prompts=4, samples=8, tokens=120, seconds=2.0)
    record_rl(
        stage_tags(Path(run_dir) / "train"),
        step=3,
        loss=0.5,
        kl={"turn1": 0.125, "turn2": 0.25},
        rewards={"turn2": 0.75},
        rollout_tokens=64,
        rollout_seconds=4.0,
        weight_sync_s=0.3,
        weight_sync_bytes=1000,
        learning_rate=1e-5,
    )


def main() -> None:
    run_dir, metrics_port, dashboard_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    from cluster.config import load_config
    from datagen.judging import plan_judge, run_judge

    write_generate(run_dir)
    cfg = load_config(None, [f"run_dir={run_dir}", "judges.verifier={}"])
    ctx = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,  # the state API (actor class names) goes through it
        dashboard_port=dashboard_port,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        # every second rather than every 10: the test reads back within its deadline
        _system_config={"metrics_report_interval_ms": 1000},
    )
    plan = plan_judge(cfg.judges, run_dir, cfg.model, cfg.model_cache, cfg.generate.engine, cfg.seed, cfg.judge_pool)
    summary = run_judge(plan, StageDir(run_dir / "judge"))
    ray.get(record_elsewhere.remote(str(run_dir)))
    from ray.util.state import list_actors

    # by the dashboard's address: other Ray instances may run on this machine
    classes = sorted({a.class_name for a in list_actors(address=f"http://{ctx.dashboard_url}", limit=1000)})
    print(json.dumps({"actor_classes": classes, "judge": summary["judges"]["verifier"]}), flush=True)
    sys.stdin.read()  # until the test is done reading
    ray.shutdown()


if __name__ == "__main__":
    main()
