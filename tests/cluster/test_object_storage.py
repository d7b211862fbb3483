"""`selfcorrect` with run_dir on object storage, against a real S3-compatible server (moto's, over HTTP):
generate -> judge -> build on real Ray and real vLLM, and the refusals that come before any work."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from s3_server import BUCKET, s3_env

from cluster.cli import main
from cluster.config import load_config
from datagen import storage
from datagen.shards import StageDir
from rl.build import run_build
from rl.config import BuildConfig
from rl.export import run_export

ROOT = Path(__file__).parents[2]


def refused(argv: list[str], capsys) -> str:
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 20  # refused before any model, Ray or engine starts
    return capsys.readouterr().err


def test_the_config_keeps_a_uri_run_dir_as_is():
    cfg = load_config(None, ["run_dir=s3://bucket/runs/one"])
    assert cfg.run_dir == "s3://bucket/runs/one" and str(cfg.stage_dir("judge")) == "s3://bucket/runs/one/judge"
    assert Path(load_config(None, ["run_dir=runs/one"]).run_dir).is_absolute()


def test_a_missing_bucket_exits_2_naming_it(s3, capsys):
    err = refused(["generate", "configs/quickstart.yaml", "run_dir=s3://no-such-bucket/run"], capsys)
    assert "run_dir s3://no-such-bucket/run: the bucket 'no-such-bucket' does not exist" in err


def test_missing_credentials_exit_2(s3, capsys, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    err = refused(["judge", "configs/quickstart.yaml", f"run_dir=s3://{BUCKET}/nocreds"], capsys)
    assert f"run_dir s3://{BUCKET}/nocreds: no S3 credentials" in err


def test_a_stage_that_cannot_use_object_storage_is_refused_before_any_runs(s3, capsys):
    err = refused(["run", "configs/quickstart.yaml", f"run_dir=s3://{BUCKET}/whole"], capsys)
    assert f"run_dir s3://{BUCKET}/whole: the eval, report stages cannot write to object storage" in err
    err = refused(["eval", "configs/quickstart.yaml", f"run_dir=s3://{BUCKET}/whole"], capsys)
    assert "the eval stage cannot write to object storage" in err
    assert storage.list_names(storage.as_location(f"s3://{BUCKET}/whole")) == []  # nothing written


@pytest.mark.slow
def test_generate_judge_build_on_s3(s3_url, tiny_model_dir, tmp_path):
    run = f"s3://{BUCKET}/e2e/run"
    common = [
        "configs/quickstart.yaml", f"run_dir={run}", f"model={tiny_model_dir}",
        "prompts.limit=4", "generate.n=2", "generate.max_tokens=8", "generate.shard_size=2",
        "generate.engine.max_model_len=512", "ray.num_cpus=2", "ray.include_dashboard=false",
    ]
    ray_tmp = tempfile.mkdtemp(prefix="raytmp-")  # short: Ray's socket paths go under it
    env = {**os.environ, **s3_env(s3_url), "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)

    def cli(stage: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cluster.cli", stage, *common], cwd=ROOT, env=env, capture_output=True, timeout=900
        )
        assert done.returncode == 0, done.stderr.decode()[-4000:]
        return done.stderr.decode()

    try:
        err = cli("generate") + cli("judge") + cli("build")
        again = cli("generate")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(s3_url).items():
            mp.setenv(key, value)
        storage._s3.cache_clear()
        gen, judged, built = (StageDir(f"{run}/{stage}") for stage in ("generate", "judge", "build"))
        assert gen.done() and judged.done() and built.done()
        assert gen.completed_shards() == {0, 1} and judged.completed_shards() == {0, 1}
        rows = judged.read(columns=["prompt_id", "sample_idx", "verifier_score1"]).to_pylist()
        assert len({(r["prompt_id"], r["sample_idx"]) for r in rows}) == len(rows) == 8
        assert built.summary()["rows_in"] == 8 and gen.summary()["samples"] == 8
        config = storage.read_bytes(storage.as_location(f"{run}/config.yaml")).decode()
        assert f"run_dir: {run}" in config
        exported = run_export(built, f"{run}/export")
        assert storage.read_json(storage.as_location(f"{run}/export/_SUCCESS.json")) == exported
        storage._s3.cache_clear()
    logs = tmp_path / ".cache/selfcorrect/objects/s3" / BUCKET / "e2e/run/logs"
    assert f"logs: {logs}" in err and (logs / "driver.log").exists()
    assert "generate: done already" in again


def _rl_rows():
    spec = importlib.util.spec_from_file_location("rl_rows", ROOT / "tests" / "rl" / "rl_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_on_object_storage_is_refused_before_work(s3, capsys):
    err = refused(["train", "configs/score_quickstart.yaml", f"run_dir=s3://{BUCKET}/score"], capsys)
    assert f"run_dir s3://{BUCKET}/score: the train stage with train.algorithm=score cannot" in err


@pytest.mark.slow
def test_dpo_train_on_s3_checkpoints_and_model_land_in_the_bucket(s3, tiny_model_dir, tmp_path):
    run = f"s3://{BUCKET}/train/run"
    rows = _rl_rows()
    judged = rows.write_judged(f"{run}/judge", rows.toy_scl_rows(4))
    run_build(BuildConfig(), judged, StageDir(f"{run}/build"), echo=False)
    ray_tmp = tempfile.mkdtemp(prefix="raytmp-")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    argv = [
        sys.executable, "-m", "cluster.cli", "train", "configs/quickstart.yaml", f"run_dir={run}",
        f"model={tiny_model_dir}", "train.max_steps=2", "train.batch_size=4", "train.max_length=128",
        "train.checkpoint_every=1", "ray.num_cpus=2", "ray.include_dashboard=false",
    ]
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=900)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    out = StageDir(f"{run}/train")
    summary = out.summary()
    assert summary["steps"] == 2 and summary["model"] == f"{run}/train/model"
    names = storage.list_names(out.path)
    assert {"model", "adapter", "metrics.jsonl", "ray", "_stage.json"} <= set(names), names
    assert storage.exists(storage.as_location(f"{run}/train/model/config.json"))
    assert any(n.startswith("checkpoint_") for n in storage.list_names(out.path / "ray"))  # Ray Train's, on S3
    lines = storage.read_bytes(out.path / "metrics.jsonl").decode().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
