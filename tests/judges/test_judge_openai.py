"""The API judge: faults from a misbehaving local server, the cache, the key, and a real vLLM server."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_server import FaultServer

from judges.base import build, results_to_columns
from judges.config import judge_settings

SECRET = "sk-test-RECOGNISABLE-secret-4242"
KEY_ENV = "SELFCORRECT_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def rows(n: int, with_attempt2: bool = False) -> list[dict]:
    return [
        {
            "prompt_id": f"p{i}",
            "sample_idx": 0,
            "task": "math",
            "reference": str(i * 2),
            "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
            "attempt1": f"{i} + {i} = {i * 2 + i % 3}",
            "attempt2": f"It is {i * 2}." if with_attempt2 else None,
        }
        for i in range(n)
    ]


def api_judge(base_url: str, **extra):
    settings = {
        "base_url": base_url,
        "model": "judge-model",
        "api_key_env": KEY_ENV,
        "timeout_s": 1.0,
        "max_retries": 6,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "max_reasks": 2,
        **extra,
    }
    return build("openai", judge_settings("openai", settings))


def assert_scored_or_flagged(results, n):
    assert len(results) == n
    for r in results:
        assert (r.score1 is not None and r.error == "") or r.error, r


def test_each_fault_is_retried_then_scored():
    with FaultServer(script=["429", "500", "hang", "nonjson", "cut"], hang_s=2.0) as server:
        judge = api_judge(server.base_url)
        [res] = judge.judge(rows(1))
    assert (res.score1, res.error) == (7.0, "")
    assert judge.stats.calls == 6 and judge.stats.retries == 5
    assert server.faults == {"429": 1, "500": 1, "hang": 1, "nonjson": 1, "cut": 1, "ok": 1}


def test_malformed_answer_is_reasked_then_flagged_and_kept():
    with FaultServer(script=["badanswer"]) as server:
        judge = api_judge(server.base_url)
        [res] = judge.judge(rows(1))
    assert res.score1 == 7.0 and judge.stats.calls == 2
    with FaultServer(script=["badanswer"] * 3) as server:
        judge = api_judge(server.base_url, max_reasks=2)
        [res] = judge.judge(rows(1))
    assert res.score1 is None and "malformed judge output" in res.error
    assert "pretty good" in res.raw and judge.stats.calls == 3


def test_retries_are_bounded():
    with FaultServer(script=["500"] * 50) as server:
        judge = api_judge(server.base_url, max_retries=3)
        [res] = judge.judge(rows(1))
    assert res.score1 is None and "gave up after 4 tries: HTTP 500" in res.error
    assert server.requests == 4


def test_random_faults_lose_no_row():
    n = 40
    with FaultServer(fault_rate=0.3, seed=1, hang_s=1.5) as server:
        judge = api_judge(server.base_url, concurrency=8, max_retries=4)
        results = judge.judge(rows(n, with_attempt2=True))
    assert_scored_or_flagged(results, n)
    assert sum(1 for r in results if not r.error) >= n * 0.8
    assert len(server.faults) == 7  # every fault kind, and plain answers, happened
    assert judge.stats.calls >= server.requests  # a call on a connection the server cut may not arrive


def test_pairwise_is_asked_in_both_orders():
    with FaultServer() as server:  # always answers [[1]]: pure position bias
        judge = api_judge(server.base_url, mode="pairwise")
        results = judge.judge(rows(3, with_attempt2=True) + rows(1))
    assert [r.pref for r in results] == [0, 0, 0, None]
    assert server.requests == 6
    assert judge.suffixes == ("pref", "raw", "error")


def test_cache_makes_reruns_free_and_the_key_never_leaks(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache"
    with FaultServer(script=["401"]) as server:
        judge = api_judge(server.base_url, cache_dir=str(cache))
        results = judge.judge(rows(5, with_attempt2=True))
        calls_first = judge.stats.calls
        again = api_judge(server.base_url, cache_dir=str(cache))
        results_again = again.judge(rows(5, with_attempt2=True))
    assert f"Bearer {SECRET}" in server.auth_headers  # the key was sent, read from the env var
    # Requests run concurrently, so which row's request meets the one 401 is a matter of timing.
    [bad] = [i for i, r in enumerate(results) if r.error]
    assert results[bad].score1 is None and "HTTP 401" in results[bad].error and "***" in results[bad].error
    assert calls_first == 10  # one 401 (not retried, not cached) + 9 answers... then the rerun:
    assert again.stats.calls == 1 and again.stats.cache_hits == 9  # only the uncached 401 request
    assert results_again[bad].score1 == 7.0 and results_again[bad].error == ""
    good = [i for i in range(5) if i != bad]
    assert [results_again[i].score1 for i in good] == [results[i].score1 for i in good]
    third = api_judge(server.base_url, cache_dir=str(cache))
    third.judge([rows(5, with_attempt2=True)[i] for i in good])
    assert third.stats.calls == 0 and third.stats.cache_hits == 8

    out = tmp_path / "scores.parquet"
    pq.write_table(pa.table(results_to_columns("openai", judge.suffixes, results + results_again)), out)
    blobs = [out.read_bytes()] + [p.read_bytes() for p in cache.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in b for b in blobs)
    assert SECRET not in caplog.text
    assert all(SECRET not in r.error and SECRET not in r.raw for r in results + results_again)


def test_missing_key_flags_rows_without_calls(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    judge = api_judge("http://127.0.0.1:9/v1")
    results = judge.judge(rows(2))
    assert all(KEY_ENV in r.error for r in results) and judge.stats.calls == 0


# --- a real OpenAI-compatible server: vllm serve with the tiny random model -------------------------


@pytest.mark.slow
def test_real_server_garbage_is_flagged_and_counted(openai_server, tmp_path):
    judge = build(
        "openai",
        judge_settings(
            "openai",
            {
                "base_url": openai_server,
                "model": "tiny",
                "api_key_env": KEY_ENV,
                "max_tokens": 24,
                "max_reasks": 1,
                "timeout_s": 60,
                "cache_dir": str(tmp_path / "c"),
            },
        ),
    )
    results = judge.judge(rows(4))
    assert_scored_or_flagged(results, 4)
    assert all(r.raw for r in results)  # the model's (garbage) text is kept
    assert judge.stats.calls >= 4
    assert judge.stats.prompt_tokens > 0 and judge.stats.completion_tokens > 0
    rerun = build("openai", judge.settings)
    assert [r.score1 for r in rerun.judge(rows(4))] == [r.score1 for r in results]
    assert rerun.stats.calls == 0
