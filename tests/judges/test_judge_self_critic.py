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


def _pair_rows(n: int) -> list[dict]:
    q = [{"role": "user", "content": "What is 3 * 4?"}]
    rows = []
    for k in range(n):  # prompt k: sample 0 (greedy) and sample 1 (sampled), SIMA's pair
        for idx, answer in ((0, "12"), (1, str(10 + k))):
            rows.append({"prompt_id": f"p{k}", "sample_idx": idx, "messages": q, "reference": "12",
                         "attempt1": answer, "attempt2": None})  # fmt: skip
    return rows


@pytest.mark.slow
def test_a_forced_verdict_is_read_from_the_critics_probabilities_and_both_orders_cancel_position_bias(
    tiny_model_dir, monkeypatch
):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048, "seed": 0}
    settings = judge_settings(
        "critic", {"type": "self_critic", "model": str(tiny_model_dir), "verdict": "forced", "engine": engine}
    )
    judge = build("critic", settings)
    try:
        rows = _pair_rows(3)
        results = judge.judge(rows)
        pairs = results[1::2]
        # The random model writes nothing parseable, yet every pair gets 1 or 2, read after the lead-in.
        assert all(r.pref in (1, 2) and r.error == "" for r in pairs), [(r.pref, r.raw) for r in pairs]
        assert all(r.raw.startswith("The better response is [[") for r in pairs)
        assert all(r.pref is None for r in results[0::2])  # sample 0 alone makes no pair
        assert judge.stats.calls == 3

        # order both: asked twice; kept where the two orders agree, a tie where position decided.
        judge.settings = settings.model_copy(update={"order": "both"})
        shown: list[str] = []

        def first_position(convs):  # a critic that always picks whichever response it is shown first
            shown.extend(c[0]["content"] for c in convs)
            return ["The better response is [[1]]"] * len(convs)

        judge.generate = first_position
        assert [r.pref for r in judge.judge(rows)[1::2]] == [0, 0, 0]

        def right_one(convs):  # a critic that picks the response saying 12, wherever it stands
            return [f"[[{1 if '[Response 1] 12' in c[0]['content'] else 2}]]" for c in convs]

        judge.generate = right_one
        # p0, p1: the greedy "12" (response 1 of the pair) against "10", "11"; p2's two are both "12", a tie
        assert [r.pref for r in judge.judge(rows)[1::2]] == [1, 1, 0]
    finally:
        judge.close()
