"""`selfcorrect` with run_dir on object storage, against a real S3-compatible server (moto's, over HTTP):
generate -> judge -> build on real Ray and real vLLM, DPO and SCoRe training with their checkpoints in
the bucket, eval of the trained model from the bucket, the report published there, and the refusals
that come before any work."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from s3_server import BUCKET, s3_env

from cluster.cli import main
from cluster.config import load_config
from cluster.stages import STAGES, Stage, check_run_dir
from datagen import storage
from datagen.models import ModelNotFoundError, resolve_model
from datagen.shards import StageDir
from datagen.storage import StorageError
from rl.build import run_build
from rl.config import BuildConfig
from rl.evaluate import EvalInputError, _weights_signature, check_weights
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


def test_every_stage_runs_on_object_storage_and_one_that_cannot_is_refused_before_any_runs(s3):
    assert [name for name, stage in STAGES.items() if not stage.object_storage] == []
    cfg = load_config(None, [f"run_dir=s3://{BUCKET}/whole"])
    assert check_run_dir(cfg, list(STAGES.values())).endswith(f"objects/s3/{BUCKET}/whole/logs")
    local_only = Stage("local_only", "", prepare=lambda cfg: None, run=lambda cfg, plan, overwrite: {})
    with pytest.raises(StorageError, match=f"run_dir s3://{BUCKET}/whole: the local_only stage cannot write to obj"):
        check_run_dir(cfg, [STAGES["generate"], local_only])
    assert storage.list_names(storage.as_location(f"s3://{BUCKET}/whole")) == []  # nothing written


def _upload_run(local: Path, uri: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes(storage.as_location(f"{uri}/{f.relative_to(local).as_posix()}"), f.read_bytes())


def test_report_on_s3_is_the_local_report_published_to_the_bucket(s3, tmp_path, capsys):
    metrics = _load("report_metrics", ROOT / "tests" / "rl" / "report_metrics.py").sample_metrics()
    local = tmp_path / "run"
    for stage in ("eval", "train"):
        (local / stage).mkdir(parents=True)
    (local / "eval" / "metrics.json").write_text(json.dumps(metrics))
    StageDir(local / "train").mark_done({"algorithm": "dpo", "steps": 4, "seconds": 12.5})
    log = [{"step": s, "loss": 0.7 - 0.05 * s, "rewards/margins": 0.02 * s} for s in range(1, 5)]
    (local / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    run = f"s3://{BUCKET}/report/run"
    _upload_run(local, run)
    for where in (local, run):
        assert main(["report", "configs/quickstart.yaml", f"run_dir={where}"]) == 0
    out = storage.as_location(f"{run}/report")
    assert f"report: {out}/report.html" in capsys.readouterr().err
    ours = storage.read_bytes(out / "report.md").decode()
    theirs = (local / "report" / "report.md").read_text()
    assert ours == theirs.replace(f"Run directory: {local}", f"Run directory: {run}")
    assert "4 logged steps" in ours and "| optimizer steps | 4 | train (dpo) |" in ours  # read from the bucket
    assert sorted(storage.list_names(out)) == sorted(p.name for p in (local / "report").iterdir())
    assert "training.png" in storage.list_names(out)
    # a plot with no data any more is removed from the bucket too
    storage.remove(storage.as_location(f"{run}/train/metrics.jsonl"))
    assert main(["report", "configs/quickstart.yaml", f"run_dir={run}"]) == 0
    assert "training.png" not in storage.list_names(out) and "accuracy.png" in storage.list_names(out)
    capsys.readouterr()
    err = refused(["report", "configs/quickstart.yaml", f"run_dir=s3://{BUCKET}/report/none"], capsys)
    assert f"s3://{BUCKET}/report/none/eval/metrics.json: no eval metrics (run the eval stage first)" in err


def test_a_model_on_s3_is_copied_once_per_version_and_checked_as_objects(s3, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    uri = f"s3://{BUCKET}/models/run/train/model"
    storage.upload_folder(tiny_model_dir, storage.as_location(uri))
    first = Path(resolve_model(uri, str(tmp_path / "cache")))
    assert first.parent == tmp_path / ".cache/selfcorrect/objects/s3" / BUCKET / "models/run/train"
    assert sorted(p.name for p in first.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    weights = tiny_model_dir / "model.safetensors"
    assert (first / "model.safetensors").read_bytes() == weights.read_bytes()
    stamp = (first / "config.json").stat().st_mtime_ns
    assert Path(resolve_model(uri, "unused")) == first and (first / "config.json").stat().st_mtime_ns == stamp
    signature = _weights_signature(uri)
    assert [(name, size) for name, size, _ in signature] == [("model.safetensors", weights.stat().st_size)]
    check_weights("trained", uri)

    # the model trained again at the same URI: a new copy, a new signature (the eval's fingerprint)
    time.sleep(1.1)  # object times have a resolution of a second
    storage.write_bytes(storage.as_location(f"{uri}/model.safetensors"), weights.read_bytes())
    second = Path(resolve_model(uri, "unused"))
    assert second != first and second.is_dir() and not first.exists()
    assert _weights_signature(uri) != signature

    storage.remove(storage.as_location(f"{uri}/model.safetensors"))
    with pytest.raises(EvalInputError, match=f"eval.models.mine: {uri} has config.json but no weights"):
        check_weights("mine", uri)
    with pytest.raises(ModelNotFoundError, match=f"model '{uri}x': no config.json there"):
        resolve_model(uri + "x", "unused")


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


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rl_rows():
    return _load("rl_rows", ROOT / "tests" / "rl" / "rl_rows.py")


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


def _score_config(tmp_path: Path, run: str, model: Path) -> Path:
    """SCoRe as tests/rl/test_score.py runs it (the parity judge moves a random model), 1 + 2 steps, then an
    eval of the trained model alone: one engine for the rollouts, one for the eval."""
    cfg = {
        "run_dir": run,
        "model": str(model),
        "prompts": {"limit": 4, "max_operand": 9},
        "generate": {
            "max_tokens": 8,
            "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_gib": 1},
        },
        "judges": {"parity": {"type": "tests.rl.score_judges:TextParity"}},
        "ray": {"num_cpus": 2, "include_dashboard": False},
        "train": {
            "algorithm": "score",
            "lr": 0.02,
            "checkpoint_every": 1,
            "log_every": 1,
            "max_failures": 1,
            "lora": {"r": 8, "alpha": 16},
            "score": {"judge": "parity", "prompts_per_step": 2, "n": 2, "keep": "last",
                      "stage1_steps": 1, "stage2_steps": 2},
        },
        "eval": {"models": {"trained": None}, "prompts": {"size": 2}, "max_tokens": 8},
    }  # fmt: skip
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class _KillTrainer(threading.Thread):
    """SIGKILLs the trainer worker once, after its first step (and the checkpoint it reports), as a crash would."""

    def __init__(self, progress: Path):
        super().__init__(daemon=True)
        self.progress, self.killed, self.at, self.stop = progress, None, 0.0, threading.Event()

    def run(self) -> None:
        while self.killed is None and not self.stop.wait(0.2):
            try:
                pos = json.loads(self.progress.read_text())
            except (OSError, ValueError):
                continue
            if pos["step"] >= 1:
                time.sleep(3)  # past Ray Train's poll of the checkpoint just reported (2 s)
                self.killed, self.at = pos["pid"], time.time()
                os.kill(pos["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_score_then_eval_and_report_on_s3_resume_from_the_bucket(s3_url, tiny_model_dir, tmp_path):
    """`selfcorrect run` of a SCoRe config on S3: the trainer killed after step 1 resumes from its checkpoint
    in the bucket; the eval loads the trained model from the bucket; the report is published there."""
    run = f"s3://{BUCKET}/score/run"
    config = _score_config(tmp_path, run, tiny_model_dir)
    ray_tmp = tempfile.mkdtemp(prefix="raytmp-")
    env = {**os.environ, **s3_env(s3_url), "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    mirror = tmp_path / ".cache/selfcorrect/objects/s3" / BUCKET / "score/run"
    killer = _KillTrainer(mirror / "train" / "_progress.json")
    killer.start()

    def cli() -> str:
        done = subprocess.run([sys.executable, "-m", "cluster.cli", "run", str(config)], cwd=ROOT, env=env,
                              capture_output=True, timeout=1200)  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-4000:]
        return done.stderr.decode()

    try:
        cli()
        killer.stop.set()
        again = cli()
    finally:
        killer.stop.set()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert killer.killed is not None, "the trainer was never killed: the test proves nothing"
    assert json.loads((mirror / "train" / "_progress.json").read_text())["pid"] != killer.killed
    assert "train: done already" in again and "eval: done already" in again and f"report: {run}/report" in again

    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(s3_url).items():
            mp.setenv(key, value)
        storage._s3.cache_clear()
        train = StageDir(f"{run}/train")
        summary = train.summary()
        assert summary["steps"] == 3 and summary["model"] == f"{run}/train/model"
        assert summary["rollouts"] == f"{run}/train/rollouts"
        assert any(n.startswith("checkpoint_") for n in storage.list_names(train.path / "ray"))
        assert {"model", "adapter", "metrics.jsonl"} <= set(storage.list_names(train.path))
        # every step once, its record and its rollouts in the bucket, the step before the kill included
        log = [json.loads(x) for x in storage.read_bytes(train.path / "metrics.jsonl").decode().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3] and [r["version"] for r in log] == [1, 2, 3]
        rollouts = {name: t for name, _, t in storage.folder_files(train.path / "rollouts")}
        assert sorted(rollouts) == [f"step-{i:06d}.parquet" for i in range(3)]
        # step 1 was not trained again: the new trainer started from the checkpoint in the bucket
        assert rollouts["step-000000.parquet"] < killer.at * 1e9
        # 2 prompts x 2 episodes, and more prompts where dynamic sampling drew them
        first = storage.read_table(train.path / "rollouts" / "step-000000.parquet")
        assert first.num_rows == 2 * log[0]["prompts_drawn"]

        metrics = storage.read_json(storage.as_location(f"{run}/eval/metrics.json"))
        assert list(metrics["models"]) == ["trained"]
        trained = metrics["models"]["trained"]
        assert trained["model"] == f"{run}/train/model" and (trained["problems"], trained["samples"]) == (2, 2)
        rows = StageDir(f"{run}/eval/trained/judge").read(columns=["prompt_id", "parity_score1"]).to_pylist()
        assert len(rows) == 2
        report = storage.read_bytes(storage.as_location(f"{run}/report/report.md")).decode()
        assert "3 logged steps, last step 3" in report and "final reward_t1" in report
        assert {"report.html", "accuracy.png", "training.png"} <= set(storage.list_names(storage.as_location(
            f"{run}/report")))  # fmt: skip
        storage._s3.cache_clear()
    # the eval's engine loaded a local copy of the objects, made once
    assert [p.name for p in (mirror / "train").glob("model@*")] != []
