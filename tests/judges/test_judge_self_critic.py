"""The in-context self-critic with a real vLLM engine on CPU (the tiny random model: garbage verdicts)."""

from __future__ import annotations

import pytest

from judges.base import build
from judges.config import judge_settings
from judges.self_critic import CRITERIA, critic_prompt


def test_critic_prompt_carries_question_reference_and_criteria():
    text = critic_prompt("What is 2+2?", "4", "It is 5.", "It is 4.")
    assert "What is 2+2?" in text and "Reference answer: 4" in text and CRITERIA in text
    assert text.index("[Response 1] It is 5.") > text.index("Example 2")
    assert "Example 1" not in critic_prompt("q", None, "a", "b", few_shot=False)


@pytest.mark.slow
def test_self_critic_keeps_every_row(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = judge_settings(
        "critic",
        {
            "type": "self_critic",
            "model": str(tiny_model_dir),
            "max_tokens": 16,
            "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "seed": 0},
        },
    )
    judge = build("critic", settings)
    try:
        q = [{"role": "user", "content": "What is 3 * 4?"}]
        rows = [
            {
                "prompt_id": "a",
                "sample_idx": 0,
                "messages": q,
                "reference": "12",
                "attempt1": "12",
                "attempt2": None,
            },
            {
                "prompt_id": "a",
                "sample_idx": 1,
                "messages": q,
                "reference": "12",
                "attempt1": "13",
                "attempt2": None,
            },
            {
                "prompt_id": "b",
                "sample_idx": 0,
                "messages": q,
                "reference": "12",
                "attempt1": "1",
                "attempt2": "12",
            },
            {
                "prompt_id": "c",
                "sample_idx": 2,
                "messages": q,
                "reference": "12",
                "attempt1": "7",
                "attempt2": None,
            },
        ]
        results = judge.judge(rows)
        assert len(results) == 4 and judge.stats.calls == 2
        for r in results[1:3]:  # a1 vs a0 (SIMA), b's attempt 1 vs attempt 2
            assert r.pref in (0, 1, 2) and r.raw  # a verdict, or pref 0 with an error; the raw text kept
            assert r.error in ("", "no verdict in the critic's answer")
        for r in (results[0], results[3]):  # sample 0 alone, and prompt c without its sample 0: no pair
            assert r.pref is None and r.error == "" and r.raw == ""
        # A stand-in answer through the same parsing path: the engine's own text is random here.
        judge.generate = lambda convs: ["Response 2 is better. [[2]]", "no idea"][: len(convs)]
        good, bad = judge.judge(rows[:2] + [dict(rows[1], prompt_id="a", sample_idx=2)])[1:]
        assert (good.pref, good.error) == (2, "")
        assert (bad.pref, bad.error) == (0, "no verdict in the critic's answer")
    finally:
        judge.close()
