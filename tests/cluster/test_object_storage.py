"""`selfcorrect` with run_dir on object storage, against a real S3-compatible server (moto's, over HTTP):
the report published there, models read from a bucket, and the refusals that come before any work. The
stages run on S3 where they also meet faults: generate (then judge and build, by `run --until build`) and
DPO in tests/cluster/test_node_faults.py, SCoRe (then the eval of the trained model from the bucket and
the report) in tests/rl/test_score.py."""

import importlib.util
import json
import time
from pathlib import Path

import pytest
from s3_server import BUCKET

from cluster.cli import main
from cluster.config import load_config
from cluster.stages import STAGES, Stage, check_run_dir
from datagen import storage
from datagen.models import ModelNotFoundError, resolve_model
from datagen.shards import StageDir
from datagen.storage import StorageError
from rl.evaluate import EvalInputError, _weights_signature, check_weights

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


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
