"""SelFee's teacher over a real HTTP API: a scripted server for the turn logic and its faults, and
`vllm serve` (the tiny random model) for one end-to-end shard through the generation worker."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from datagen.config import GenerateConfig
from datagen.records import SAMPLE_SCHEMA, Prompt
from datagen.teacher import OpenAITeacher
from datagen.turns import generate_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "judges"))  # the scripted server lives with the judge tests
from fault_server import FaultServer  # noqa: E402

SECRET = "sk-test-RECOGNISABLE-teacher-7331"
KEY_ENV = "SELFCORRECT_TEST_TEACHER_KEY"
PROMPTS = [Prompt(f"p{i}", [{"role": "user", "content": f"What is {i} + {i}?"}]) for i in range(3)]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def teacher_answer(body: dict) -> str:
    """ChatGPT as SelFee used it, scripted: critiques fail the first answer and pass the revision."""
    last = body["messages"][-1]["content"]
    if last.endswith("Critique:"):
        if "proposed answer:\nThe revised answer" in last:
            return "Correct now. Score: 9/10. Revision is not needed."
        return "The sum is wrong. Score: 3/10. Revision is needed."
    if last.startswith("Revise the answer"):
        return "The revised answer is 4."
    return "I think it is 5."


def no_policy(requests):
    raise AssertionError("the teacher writes every turn; the policy must not be asked")


def gen_cfg(server_url: str, tmp_path: Path, **teacher) -> GenerateConfig:
    settings = {
        "model": "gpt-x",
        "base_url": server_url,
        "api_key_env": KEY_ENV,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "max_retries": 3,
        "timeout_s": 10,
        "cache_dir": str(tmp_path / "cache"),
        **teacher,
    }
    return GenerateConfig(mode="selfee", n=1, max_revisions=3, teacher=settings)


def test_teacher_writes_the_chain_through_the_api_with_retries_and_a_cache(tmp_path):
    with FaultServer(script=["429", "500", "cut"]) as server:
        server.answer = teacher_answer
        cfg = gen_cfg(server.base_url, tmp_path)
        teacher = OpenAITeacher(cfg.teacher, cfg.max_tokens)
        rows = generate_rows(PROMPTS, cfg, no_policy, model="small", seed=0, teach=teacher.complete)
        stats = teacher.stats.take()
        for r in rows:
            assert r["attempt1"] == "I think it is 5."
            assert r["feedbacks"] == [
                "The sum is wrong. Score: 3/10. Revision is needed.",
                "Correct now. Score: 9/10. Revision is not needed.",
            ]
            assert r["revisions"] == ["The revised answer is 4."] and r["attempt2"] == r["revisions"][0]
            assert json.loads(r["sampling"])["writers"]["feedback"] == "openai:gpt-x"
        # 3 prompts x (answer, feedback, revision, feedback) = 12 answered, after 3 faults retried
        assert stats["teacher_calls"] == 15 and stats["teacher_retries"] == 3 and stats["teacher_errors"] == 0
        assert server.requests == 15 and server.auth_headers == {f"Bearer {SECRET}"}
        assert SECRET not in json.dumps(rows) and SECRET not in json.dumps(cfg.model_dump())

        # A redone shard gets the same text from the cache, without a call.
        again = OpenAITeacher(cfg.teacher, cfg.max_tokens)
        assert generate_rows(PROMPTS, cfg, no_policy, model="small", seed=0, teach=again.complete) == rows
        assert server.requests == 15 and again.stats.cache_hits == 12


def test_a_refused_request_is_not_retried_and_the_row_is_kept(tmp_path, caplog):
    with FaultServer(script=["401"]) as server:
        server.answer = teacher_answer
        cfg = gen_cfg(server.base_url, tmp_path)
        teacher = OpenAITeacher(cfg.teacher, cfg.max_tokens)
        with caplog.at_level(logging.WARNING, logger="datagen.teacher"):
            rows = generate_rows(PROMPTS[:1], cfg, no_policy, model="small", seed=0, teach=teacher.complete)
        (r,) = rows
        assert r["attempt1"] == "" and r["attempt1_finish"] == "error" and r["feedbacks"] == []
        assert server.requests == 1 and teacher.stats.errors == 1
        assert "HTTP 401" in caplog.text and SECRET not in caplog.text  # the server quoted the key: scrubbed


def test_teacher_needs_its_key_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    cfg = gen_cfg("http://127.0.0.1:9/v1", tmp_path)
    with pytest.raises(ValueError, match=KEY_ENV):
        OpenAITeacher(cfg.teacher, cfg.max_tokens)


@pytest.mark.slow
def test_a_shard_with_vllm_serve_as_teacher(tiny_model_dir, openai_server, tmp_path):
    """The generation worker with an API teacher that writes every turn: no policy engine starts."""
    from datagen.engine import GenerationWorker

    cfg = gen_cfg(openai_server, tmp_path, model="tiny", timeout_s=120)
    cfg = cfg.model_copy(update={"n": 2, "max_tokens": 8, "max_revisions": 2, "temperature": 1.0})
    worker = GenerationWorker(str(tiny_model_dir), "/unused", cfg.model_dump(), seed=0)
    assert worker.policy is None
    table, stats = worker({"shard": 0, "prompts": [p.to_row() for p in PROMPTS[:2]]})
    assert table.schema == SAMPLE_SCHEMA and table.num_rows == 4
    rows = table.to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    assert stats["teacher_errors"] == 0 and stats["teacher_calls"] > 0
    for r in rows:
        assert r["attempt1_finish"] in ("stop", "length") and r["feedbacks"]
        assert len(r["revisions"]) <= 2 and r["generated_tokens"] > 0 and r["prompt_tokens"] > 0
        assert json.loads(r["sampling"])["writers"] == {
            "answer": "openai:tiny",
            "feedback": "openai:tiny",
            "revision": "openai:tiny",
        }
    assert rows[0]["attempt1"] != rows[1]["attempt1"]  # n=2 samples from one request, seeded


@pytest.mark.slow
def test_a_vllm_teacher_runs_beside_the_policy_in_the_worker(tiny_model_dir):
    """kind vllm: a second engine in the generation actor critiques and revises the policy's answers."""
    from datagen.engine import GenerationWorker, VLLMEngine

    engine = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024}
    teacher = {"kind": "vllm", "model": str(tiny_model_dir), "answers": "policy", "max_tokens": 6}
    cfg = GenerateConfig(mode="selfee", n=2, max_tokens=8, max_revisions=1, engine=engine, teacher=teacher)
    worker = GenerationWorker(str(tiny_model_dir), "/unused", cfg.model_dump(), seed=0)
    try:
        assert isinstance(worker.policy, VLLMEngine) and isinstance(worker.teacher, VLLMEngine)
        table, stats = worker({"shard": 0, "prompts": [PROMPTS[0].to_row()]})
    finally:
        worker.close()
    rows = table.to_pylist()
    assert len(rows) == 2 and stats["engine_seconds"] > 0
    for r in rows:
        writers = json.loads(r["sampling"])["writers"]
        big = f"vllm:{tiny_model_dir}"
        assert writers == {"answer": str(tiny_model_dir), "feedback": big, "revision": big}
        assert len(r["feedbacks"]) == 1 and len(r["revisions"]) <= 1
        # the teacher's own max_tokens bounds its turns
        assert r["generated_tokens"] <= r["attempt1_tokens"] + 6 * (1 + len(r["revisions"]))
