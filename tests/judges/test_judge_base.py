"""Protocol, registry, config validation and the pure helpers, on hand-computed values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from judges.api_support import DiskCache, TokenBucket, backoff_delay, cache_key, parse_retry_after
from judges.base import JudgeResult, build, combine_orders, load, pairs, parse_verdict, results_to_columns
from judges.config import JudgeSettings, judge_settings


def test_importing_judges_loads_no_heavy_library():
    code = (
        "import sys, judges, judges.config, judges.base; judges.base._import_builtins();"
        "print(sorted(m for m in ('ray', 'vllm', 'torch', 'transformers', 'openai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_type_defaults_to_instance_name_and_unknown_keys_are_named():
    assert judge_settings("openai", {"model": "m"}).type == "openai"
    assert judge_settings("rm", {"type": "reward_model", "model": "x"}).batch_size == 8
    with pytest.raises(ValueError, match=r"judges\.openai\.modle: unknown key"):
        judge_settings("openai", {"modle": "m"})
    with pytest.raises(ValueError, match=r"judges\.mine: set type"):
        judge_settings("mine", {})
    with pytest.raises(ValueError, match=r"judges\.rm\.model: Field required"):
        judge_settings("rm", {"type": "reward_model"})
    with pytest.raises(ValueError, match="cannot import"):
        judge_settings("x", {"type": "no_such_pkg.mod:Judge"})


class LengthJudge:
    """A user's own judge: score = length of attempt 1."""

    suffixes = ("score1", "raw", "error")

    def __init__(self, name, settings):
        self.name, self.settings = name, settings

    def judge(self, rows):
        return [JudgeResult(score1=float(len(r["attempt1"])) * self.settings.scale) for r in rows]


class LengthSettings(JudgeSettings):
    type: str
    scale: float = 1.0


LengthJudge.Settings = LengthSettings


def test_user_judge_loads_from_module_path():
    spec = f"{__name__}:LengthJudge"
    assert load(spec) is LengthJudge
    settings = judge_settings("length", {"type": spec, "scale": 2})
    judge = build("length", settings)
    [res] = judge.judge([{"attempt1": "abc"}])
    assert res.score1 == 6.0
    with pytest.raises(ValueError, match=r"judges\.length\.scal: unknown key"):
        judge_settings("length", {"type": spec, "scal": 2})
    cols = results_to_columns("length", LengthJudge.suffixes, [res])
    assert cols == {"length_score1": [6.0], "length_raw": [""], "length_error": [""]}


def test_config_integration_with_command_line_overrides():
    from cluster.config import ConfigError, load_config

    cfg = load_config(
        None,
        [
            "judges.openai.base_url=http://h/v1",
            "judges.openai.model=m",
            "judges.openai.api_key_env=MY_KEY",
            "judges.verifier.code_timeout_s=3",
        ],
    )
    assert cfg.judges["openai"].api_key_env == "MY_KEY"
    assert cfg.judges["verifier"].code_timeout_s == 3
    assert cfg.model_dump()["judges"]["openai"]["model"] == "m"
    with pytest.raises(ConfigError, match=r"judges\.openai\.bogus: unknown key"):
        load_config(None, ["judges.openai.bogus=1"])


def test_pairs_follow_the_data_contract():
    rows = [
        {"prompt_id": "a", "sample_idx": 0, "attempt1": "x", "attempt2": "y"},
        {"prompt_id": "b", "sample_idx": 0, "attempt1": "g", "attempt2": None},
        {"prompt_id": "b", "sample_idx": 1, "attempt1": "s", "attempt2": None},
        {"prompt_id": "c", "sample_idx": 1, "attempt1": "t", "attempt2": None},
    ]
    assert pairs(rows) == [("x", "y"), None, ("g", "s"), None]


@pytest.mark.parametrize(
    "text,want",
    [
        ("blah [[1]]", 1),
        ("[[1]] no wait, [[2]]", 2),
        ("[[ tie ]]", 0),
        ("Response 2 is better.", 2),
        ("The better response is Response 1", 1),
        ("I choose response 2", 2),
        ("2", 2),
        ("Response 1.", 1),
        ("Response 1 is better. Response 2 is better.", None),
        ("both fine", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(text, want):
    assert parse_verdict(text) == want


def test_combine_orders_cancels_position_bias():
    assert combine_orders(1, 2) == 1  # a wins both ways
    assert combine_orders(2, 1) == 2  # b wins both ways
    assert combine_orders(1, 1) == 0  # always the first shown: position bias, a tie
    assert combine_orders(None, 1) is None


def test_backoff_and_retry_after():
    assert [backoff_delay(i, 0.5, 3.0, jitter=1.0) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(0, 0.5, 3.0, jitter=0.0) == 0.25
    assert backoff_delay(4, 0.5, 3.0, retry_after=1.5) == 1.5
    assert backoff_delay(0, 0.5, 3.0, retry_after=100) == 3.0
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None


def test_token_bucket_hand_computed():
    bucket = TokenBucket(120, capacity=1, now=0.0)  # 2 per second, burst 1
    assert bucket.reserve(1, now=0.0) == 0.0
    assert bucket.reserve(1, now=0.0) == 0.5
    assert bucket.reserve(1, now=0.0) == 1.0
    assert bucket.reserve(1, now=2.0) == 0.0  # refilled 4 units, capped at 1, minus 2 owed -> 1 -1 = 0
    tokens = TokenBucket(600, capacity=100, now=0.0)  # 10 tokens/s
    assert tokens.reserve(150, now=0.0) == 5.0


def test_cache_key_and_disk_cache(tmp_path):
    msgs = [{"role": "user", "content": "hi"}]
    k = cache_key("m", msgs, {"temperature": 0}, "1")
    assert k == cache_key("m", [dict(m) for m in msgs], {"temperature": 0}, "1")
    assert k != cache_key("m", msgs, {"temperature": 0}, "2")
    assert k != cache_key("m2", msgs, {"temperature": 0}, "1")
    cache = DiskCache(tmp_path)
    assert cache.get(k) is None
    cache.put(k, {"text": "ok"})
    assert cache.get(k) == {"text": "ok"}
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "module",
    [
        "judges.base",
        "judges.api_support",
        "judges.openai_judge",
        "judges.verifier",
        "judges.embedding",
        "datagen.judging",
    ],
)
def test_docstring_examples(module):
    import doctest
    import importlib

    failed, _ = doctest.testmod(importlib.import_module(module))
    assert failed == 0
