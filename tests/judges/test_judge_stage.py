"""The judge stage on real Ray: every generate row judged once, resumable, the key nowhere on disk."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from fault_server import FaultServer

from datagen.records import SAMPLE_SCHEMA
from datagen.shards import StageDir

SECRET = "sk-stage-RECOGNISABLE-secret-7777"
KEY_ENV = "SELFCORRECT_STAGE_TEST_KEY"
# Set at import (collection) time, before any test starts Ray: Ray's worker processes take the
# environment of the process that started Ray, which is how an API key reaches the judge actors
# without ever being written into a runtime_env (job metadata).
os.environ[KEY_ENV] = SECRET


def sample_rows(prompts: int, n: int, start: int = 0) -> list[dict]:
    rows = []
    for p in range(start, start + prompts):
        for s in range(n):
            answer = p * 3 if s % 2 == 0 else p * 3 + 1
            rows.append(
                {
                    "prompt_id": f"q{p:03d}",
                    "sample_idx": s,
                    "task": "math",
                    "messages": [{"role": "user", "content": f"What is {p} * 3?"}],
                    "reference": str(p * 3),
                    "metadata": "{}",
                    "mode": "two_attempt",
                    "attempt1": f"I think it is {answer + 1}.",
                    "attempt2": f"The answer is {answer}.",
                    "greedy": s == 0,
                }
            )
    return rows


def write_generate(run_dir, shards: int = 3, prompts_per_shard: int = 2, n: int = 2) -> StageDir:
    gen = StageDir(run_dir / "generate")
    gen.start({"test": "judge-stage"})
    for i in range(shards):
        rows = sample_rows(prompts_per_shard, n, start=i * prompts_per_shard)
        table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
        gen.write_shard(i, table)
    gen.mark_done({"rows": shards * prompts_per_shard * n})
    return gen


@pytest.mark.slow
def test_judge_stage_resumes_and_counts(tmp_path, ray_local):
    from cluster.config import load_config
    from cluster.stages import STAGES

    run_dir = tmp_path / "run"
    write_generate(run_dir)
    stage = STAGES["judge"]
    with FaultServer(fault_rate=0.2, seed=3, hang_s=1.5) as server:
        cfg = load_config(
            None,
            [
                f"run_dir={run_dir}",
                "judges.verifier={}",
                f"judges.openai.base_url={server.base_url}",
                "judges.openai.model=judge",
                f"judges.openai.api_key_env={KEY_ENV}",
                "judges.openai.timeout_s=1",
                "judges.openai.backoff_s=0.01",
                "judges.openai.max_backoff_s=0.05",
                "judge_pool.max_actors=2",  # two actors sharing one answer cache
            ],
        )
        summary = stage.run(cfg, stage.prepare(cfg), False)
        out = stage.output(cfg)
        table = out.read()
        assert table.num_rows == 12 and summary["rows"] == 12
        assert table.column("verifier_score1").to_pylist().count(0.0) == 12  # all attempt 1s are off by one
        assert table.column("verifier_score2").to_pylist() == [
            1.0 if s % 2 == 0 else 0.0 for s in table.column("sample_idx").to_pylist()
        ]
        for col in ("openai_score1", "openai_score2", "openai_raw", "openai_error", "verifier_error"):
            assert col in table.column_names
        assert "openai_pref" not in table.column_names
        flagged = [
            (s, e)
            for s, e in zip(
                table.column("openai_score1").to_pylist(),
                table.column("openai_error").to_pylist(),
                strict=True,
            )
        ]
        assert all((s is not None and not e) or e for s, e in flagged)
        judged = summary["judges"]["openai"]
        assert judged["rows"] == 12 and judged["calls"] >= 24 and judged["prompt_tokens"] > 0
        first_requests = server.requests

        # A killed run: one shard and the success marker gone. The rerun redoes that shard only,
        # from the cache: no new calls.
        (out.path / "part-00001.parquet").unlink()
        (out.path / "_SUCCESS.json").unlink()
        again = stage.run(cfg, stage.prepare(cfg), False)
        assert again["shards_this_run"] == 1
        assert again["judges"]["openai"]["cache_hits"] >= 1
        rerun_calls = server.requests - first_requests
    table = out.read()
    keys = list(
        zip(table.column("prompt_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)) == 12
    # A call sent on a connection the server had cut counts here but never reaches the server.
    assert rerun_calls <= again["judges"]["openai"]["calls"]
    # Only requests that failed the first time may be asked again (flagged rows are not cached).
    assert rerun_calls <= 4 * (1 + cfg.judges["openai"].max_retries)

    on_disk = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in on_disk) and any("judge_cache" in str(p) for p in on_disk)
    assert not any(SECRET.encode() in p.read_bytes() for p in on_disk)
    assert KEY_ENV in json.dumps(
        json.loads((out.path / "_stage.json").read_text())
    )  # the name, not the value


def test_api_rate_limits_are_shared_by_the_pool(tmp_path):
    from cluster.config import load_config
    from cluster.stages import STAGES

    run_dir = tmp_path / "run"
    write_generate(run_dir, shards=1)
    overrides = [f"run_dir={run_dir}", "judges.openai.requests_per_min=600", "judges.openai.tokens_per_min=90000"]
    one = STAGES["judge"].prepare(load_config(None, overrides))
    three = STAGES["judge"].prepare(load_config(None, [*overrides, "judge_pool.max_actors=3"]))
    assert (one.judges["openai"].requests_per_min, one.judges["openai"].tokens_per_min) == (600, 90000)
    assert (three.judges["openai"].requests_per_min, three.judges["openai"].tokens_per_min) == (200, 30000)
    assert three.pool.max_actors == 3
    assert one.fingerprint == three.fingerprint  # placement, not content: a finished stage stays valid


def test_a_judge_with_new_scoring_rules_does_not_reuse_old_verdicts(tmp_path, monkeypatch):
    """The fingerprint holds each judge's ``version``: judged rows from older rules are refused, not mixed."""
    from cluster.config import load_config
    from cluster.stages import STAGES
    from judges.verifier import Verifier

    run_dir = tmp_path / "run"
    write_generate(run_dir, shards=1)
    cfg = load_config(None, [f"run_dir={run_dir}"])
    before = STAGES["judge"].prepare(cfg)
    assert before.fingerprint["versions"] == {"verifier": Verifier.version}
    monkeypatch.setattr(Verifier, "version", Verifier.version + ".next")
    assert STAGES["judge"].prepare(cfg).fingerprint != before.fingerprint
