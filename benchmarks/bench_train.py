"""DPO throughput through Ray Train vs TRL's DPOTrainer alone, and the cost of a quickstart build + train.

    python benchmarks/bench_train.py [--model smollm2-135m-instruct] [--pairs 32] [--steps 8] [--out runs/bench-train]

Both trainers get the same pairs (arithmetic questions, a wrong and a right answer), the same
model, LoRA settings, batch size and steps, with 2 CPU threads each. Throughput is pairs over the
Trainer's own ``train_runtime`` (model load and Ray start excluded in both; the Ray Train path's
per-step reporting and data handling stay in); the end-to-end wall time of the Ray path is
reported beside it. The quickstart part runs ``selfcorrect build`` and ``selfcorrect train`` as
subprocesses on quickstart-sized judged rows (24 prompts x 2 samples) and samples the summed PSS of
their process tree (driver, Ray, workers) every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from benchmarks.measure import run_measured  # noqa: E402


def judged_rows(n_prompts: int, samples: int) -> list[dict]:
    sys.path.append(str(ROOT / "tests" / "rl"))
    from rl_rows import judged_row

    rows = []
    for p in range(n_prompts):
        a, b = p % 9 + 2, p % 7 + 3
        for s in range(samples):
            rows.append(
                judged_row(
                    f"q{p:04d}",
                    s,
                    messages=[{"role": "user", "content": f"Tom has {a} boxes of {b} apples. How many apples?"}],
                    attempt1=f"Tom has {a} boxes with {b} apples each, so {a} + {b} = {a + b} apples.",
                    attempt2=f"Each of the {a} boxes holds {b} apples, so {a} * {b} = {a * b} apples.",
                    verifier_score1=0.0,
                    verifier_score2=1.0 if (p + s) % 2 == 0 else 0.0,
                )
            )
    return rows


def make_build(root: Path, rows: list[dict]):
    sys.path.append(str(ROOT / "tests" / "rl"))
    from rl_rows import write_judged

    from datagen.shards import StageDir
    from rl.build import run_build
    from rl.config import BuildConfig

    build = StageDir(root / "build")
    run_build(BuildConfig(), write_judged(root / "judge", rows), build, echo=False)
    return build


def standalone(model_path: str, build, train_cfg, out: Path) -> float:
    import torch

    from rl.train import build_trainer

    torch.set_num_threads(2)
    cfg = {"train": train_cfg.model_dump(mode="json"), "model_path": model_path,
           "data_files": [str(p) for p in build.shard_paths()]}
    trainer, _ = build_trainer(cfg, str(out / "standalone"), use_cpu=True)
    trainer.args.save_strategy = "no"
    trainer.train()
    return trainer.state.log_history[-1]["train_runtime"]


def through_ray(model_path: str, build, train_cfg, out: Path) -> tuple[float, float]:
    import ray

    from rl.train import run_train

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        run_train(train_cfg, model_path, build, out / "ray-train")
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    log = json.loads((out / "ray-train" / "log_history.json").read_text())
    return log[-1]["train_runtime"], wall


def quickstart(model: str, out: Path) -> dict:
    root = out / "quickstart"
    shutil.rmtree(root, ignore_errors=True)
    sys.path.append(str(ROOT / "tests" / "rl"))
    from rl_rows import write_judged

    write_judged(root / "judge", judged_rows(24, 2))
    args = ["configs/quickstart.yaml", f"run_dir={root}", f"model={model}", "ray.num_cpus=2",
            "train.num_workers=1", "train.cpus_per_worker=2", "train.batch_size=4", "train.checkpoint_every=4"]
    results = {}
    for stage in ("build", "train"):
        m = run_measured([sys.executable, "-m", "cluster.cli", stage, *args])
        if m.returncode:
            print(m.stderr[-3000:], file=sys.stderr)
        results[stage] = {"seconds": round(m.seconds, 1), "peak_pss_gib": round(m.peak_pss_gib, 2), "rc": m.returncode}
    results["pairs"] = json.loads((root / "build" / "_SUCCESS.json").read_text())["pairs_out"]
    results["steps"] = json.loads((root / "train" / "_SUCCESS.json").read_text())["steps"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="runs/bench-train")
    args = parser.parse_args()

    from datagen.models import resolve_model
    from rl.config import TrainConfig

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    model_path = resolve_model(args.model, "~/.cache/selfcorrect/models")
    build = make_build(out, judged_rows(args.pairs, 2))  # every other sample flips: args.pairs pairs
    train = TrainConfig(batch_size=4, max_steps=args.steps, checkpoint_every=10_000, log_every=1,
                        cpus_per_worker=2, group_pairs=False)
    pairs = args.steps * train.global_batch
    alone = standalone(model_path, build, train, out)
    ray_runtime, ray_wall = through_ray(model_path, build, train, out)
    report = {
        "model": args.model,
        "pairs_trained": pairs,
        "standalone_pairs_per_s": round(pairs / alone, 3),
        "ray_train_pairs_per_s": round(pairs / ray_runtime, 3),
        "ratio": round(alone / ray_runtime, 3),
        "ray_end_to_end_s": round(ray_wall, 1),
        "quickstart": quickstart(args.model, out),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
