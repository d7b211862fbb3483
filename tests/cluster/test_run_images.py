"""`selfcorrect run` on image prompts: a tiny random vision-language model (Idefics3) through every
stage on the built-in picture questions — vLLM with the pictures, the self-critic looking at them, DPO
through TRL's vision collator, the eval and the report — each picture stored once in the run."""

import json
import os
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

ROOT = Path(__file__).parents[2]


def run_cli(argv: list[str], cwd: Path) -> str:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *argv], cwd=cwd, capture_output=True, timeout=1200, env=env
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err[-4000:]
    return err


@pytest.mark.slow
def test_image_prompts_through_every_stage(tmp_path, tiny_vlm_dir):
    run_dir = tmp_path / "run"
    err = run_cli(
        [
            "run",
            str(ROOT / "configs/quickstart.yaml"),
            f"run_dir={run_dir}",
            f"model={tiny_vlm_dir}",
            "prompts.builtin=pictures",
            "prompts.size=4",
            "generate.mode=sima",
            "generate.n=2",
            "generate.max_tokens=8",
            "generate.shard_size=4",
            "generate.engine.max_model_len=2048",  # SIMA's critic prompt is over a thousand tokens
            "ray.num_cpus=2",
            "ray.include_dashboard=false",
            # the random model's critic answers with no verdict (rows kept, flagged); the embedding
            # judge's scores make the pairs
            "judges.verifier=false",
            "judges.self_critic={max_tokens: 8}",
            "judges.embedding={}",
            "build.builder=best_vs_worst",
            "build.judge=embedding",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.max_length=256",
            "train.checkpoint_every=2",
            "train.vision.projector=full",
            "train.vision.projector_lr=1e-4",
            "eval.prompts.builtin=pictures",
            "eval.prompts.size=2",
            "eval.models={trained: null}",
            "eval.judges={verifier: {}}",
        ],  # fmt: skip
        tmp_path,
    )
    assert "Traceback" not in err and f"report: {run_dir / 'report' / 'report.html'}" in err

    generated = pads.dataset(str(run_dir / "generate"), format="parquet").to_table().to_pylist()
    assert len(generated) == 8 and all(len(r["images"]) == 1 for r in generated)
    assert [r["greedy"] for r in generated if r["sample_idx"] == 0] == [True] * 4
    assert all(r["prompt_tokens"] > 7 for r in generated)  # the picture's 7 tokens are counted
    # each picture once in the run's store (4 training + 2 eval problems); rows hold ids only
    stored = sorted(p.name for p in (run_dir / "images").iterdir())
    assert len(stored) == 6 and {r["images"][0] for r in generated} <= set(stored)
    shard_bytes = sum(p.stat().st_size for p in (run_dir / "generate").glob("*.parquet"))
    assert shard_bytes < sum((run_dir / "images" / n).stat().st_size for n in stored) * 8

    judged = pads.dataset(str(run_dir / "judge"), format="parquet").to_table().to_pylist()
    critic = [r for r in judged if r["sample_idx"] == 1]
    assert len(judged) == 8 and all(r["self_critic_raw"] for r in critic)  # it answered, looking at the picture
    pairs = pads.dataset(str(run_dir / "build"), format="parquet").to_table().to_pylist()
    assert pairs and all(p["images"] for p in pairs)

    trained = json.loads((run_dir / "train" / "_SUCCESS.json").read_text())
    model = run_dir / "train" / "model"
    assert trained["steps"] == 2 and (model / "processor_config.json").exists()
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["trained"] and metrics["eval"]["problems"] == 2
    eval_rows = pads.dataset(str(run_dir / "eval" / "trained" / "generate"), format="parquet").to_table()
    assert all(eval_rows["images"].to_pylist()) and all(a is not None for a in eval_rows["attempt2"].to_pylist())

    report = (run_dir / "report" / "report.md").read_text()
    assert "## Examples" in report and "![the problem's image](example-" in report
    assert report.count("data:image/png") == 0 and "data:image/png" in (run_dir / "report" / "report.html").read_text()
