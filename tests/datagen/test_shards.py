import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from datagen.shards import StageDir, StageMismatchError


def table(n, start=0):
    return pa.table({"prompt_id": [str(i) for i in range(start, start + n)], "sample_idx": [0] * n})


def test_shards_are_written_whole_and_resumable(tmp_path):
    out = StageDir(tmp_path / "stage")
    out.start({"a": 1})
    out.write_shard(0, table(3))
    out.write_shard(2, table(2, 3))
    # a leftover temporary file of a killed writer is invisible to readers and removed on restart
    (out.path / ".part-00001.parquet.deadbeef.tmp").write_bytes(b"half a file")
    assert pads.dataset(str(out.path), format="parquet").count_rows() == 5
    assert out.completed_shards() == {0, 2}
    again = StageDir(out.path)
    again.start({"a": 1})
    assert not list(out.path.glob(".*.tmp"))
    assert again.completed_shards() == {0, 2} and not again.done()


def test_rewriting_a_shard_keeps_it_once(tmp_path):
    out = StageDir(tmp_path)
    out.start({})
    out.write_shard(0, table(3))
    out.write_shard(0, table(3))
    assert out.read().num_rows == 3


def test_other_settings_are_refused_unless_overwrite(tmp_path):
    out = StageDir(tmp_path / "s")
    out.start({"n": 1})
    out.write_shard(0, table(1))
    with pytest.raises(StageMismatchError, match="changed: n"):
        StageDir(out.path).start({"n": 2})
    StageDir(out.path).start({"n": 2}, overwrite=True)
    assert out.completed_shards() == set()


def test_done_marker(tmp_path):
    out = StageDir(tmp_path)
    out.start({})
    out.mark_done({"rows": 0})
    assert out.done() and out.summary() == {"rows": 0}
