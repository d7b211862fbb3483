"""Stage output on object storage, against a real S3-compatible server (moto's, over HTTP)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import BUCKET

from datagen import storage
from datagen.metrics import stage_tags
from datagen.shards import StageDir, StageMismatchError
from datagen.storage import ObjectPath, StorageError

ROOT = Path(__file__).parents[2]


def shard(i: int, rows: int = 2) -> pa.Table:
    return pa.table({"prompt_id": [f"p{i}"] * rows, "sample_idx": list(range(rows))})


def test_a_uri_is_an_object_path_and_anything_else_stays_a_local_path(tmp_path):
    run = storage.as_location("s3://bucket/runs/one/")
    assert isinstance(run, ObjectPath) and str(run / "generate") == "s3://bucket/runs/one/generate"
    assert (run / "generate").parent == run and run.name == "one" and run.bucket == "bucket"
    assert storage.as_location(str(tmp_path)) == tmp_path and storage.as_location(f"file://{tmp_path}") == tmp_path
    assert stage_tags("s3://bucket/runs/one/eval/base", "s3://bucket/runs/one") == {"stage": "eval/base", "run": "one"}
    assert storage.local_cache(tmp_path, "judge_cache") == tmp_path / "judge_cache"
    assert storage.local_cache(run, "logs").parts[-4:] == ("bucket", "runs", "one", "logs")


def test_stage_dir_on_s3_behaves_as_on_a_local_folder(s3, tmp_path):
    results = []
    for where in (tmp_path / "gen", f"s3://{BUCKET}/roundtrip/gen"):
        out = StageDir(where)
        assert not out.done() and out.completed_shards() == set()
        out.start({"seed": 1})
        for i in (1, 0, 2):
            out.write_shard(i, shard(i))
        out.write_shard(1, shard(1))  # a retried task: still once
        assert out.completed_shards() == {0, 1, 2}
        assert [p.name for p in out.shard_paths()] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        with pytest.raises(StageMismatchError, match="changed: seed"):
            out.start({"seed": 2})
        out.mark_done({"rows": 6})
        assert out.done() and out.summary() == {"rows": 6}
        results.append(out.read().sort_by("prompt_id").to_pylist())
        assert storage.size(out.shard_paths()[0]) > 0
        out.start({"seed": 2}, overwrite=True)
        assert not out.done() and out.completed_shards() == set()
    assert results[0] == results[1] and len(results[0]) == 6


WRITER = textwrap.dedent(
    """
    import os, sys
    import pyarrow as pa
    from datagen.shards import StageDir

    out = StageDir(sys.argv[1])
    out.start({"rows": 48})
    blob = pa.array([os.urandom(1 << 20) for _ in range(48)], pa.binary())  # 48 MiB: a multipart upload
    for i in range(4):
        out.write_shard(i, pa.table({"prompt_id": [f"p{i}"] * 48, "sample_idx": range(48), "blob": blob}))
    out.mark_done({"shards": 4})
    """
)


def uploads_in_flight(url: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def test_a_killed_writer_leaves_no_visible_part_and_a_rerun_finishes_every_key_once(s3):
    uri = f"s3://{BUCKET}/killed/gen"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, uri], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    # SIGKILL while the third shard is half uploaded: its multipart upload has begun but not completed.
    while "killed/gen/part-00002.parquet" not in uploads_in_flight(s3):
        assert proc.poll() is None and time.monotonic() < deadline, "the writer never got to the third shard"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "killed/gen/part-00002.parquet" in uploads_in_flight(s3)  # parts were sent, never committed
    out = StageDir(uri)
    assert not out.done()
    assert out.completed_shards() == {0, 1}  # the part being written when the writer died is not there at all
    for path in out.shard_paths():
        assert storage.read_table(path, columns=["sample_idx"]).num_rows == 48  # whole parts only
    # The rerun does what a stage does: keep finished shards, write the rest, mark done.
    out.start({"rows": 48})
    for i in sorted({0, 1, 2, 3} - out.completed_shards()):
        out.write_shard(i, shard(i, rows=48))
    out.mark_done({"shards": 4})
    table = out.read(columns=["prompt_id", "sample_idx"])
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 4 * 48
    assert storage.list_names(out.path) == [
        "_SUCCESS.json", "_stage.json", *[f"part-{i:05d}.parquet" for i in range(4)]
    ]


def test_a_shard_is_readable_with_plain_pyarrow(s3):
    out = StageDir(f"s3://{BUCKET}/plain/gen")
    out.start({})
    out.write_shard(0, shard(0))
    fs, inner = storage.filesystem(out.path)
    assert pq.read_table(f"{inner}/part-00000.parquet", filesystem=fs).num_rows == 2


def test_a_missing_bucket_is_refused_by_name(s3):
    with pytest.raises(StorageError, match="the bucket 'no-such-bucket' does not exist"):
        storage.check_writable(storage.as_location("s3://no-such-bucket/run"))


def test_missing_credentials_are_refused(s3, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    with pytest.raises(StorageError, match=f"run_dir s3://{BUCKET}/run: no S3 credentials .*AWS_ACCESS_KEY_ID"):
        storage.check_writable(storage.as_location(f"s3://{BUCKET}/run"))


def test_a_writable_run_dir_passes_and_the_probe_leaves_nothing(s3):
    run = storage.as_location(f"s3://{BUCKET}/probed")
    storage.check_writable(run)
    assert storage.list_names(run) == []
