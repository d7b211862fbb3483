"""Model judges on CPU: a tiny random reward model built here, and the real bundled MiniLM encoder."""

from __future__ import annotations

import math

import pytest

from judges.base import build
from judges.config import judge_settings
from judges.embedding import bundled_minilm


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A 2-layer random LlamaForSequenceClassification (head_dim 64) with SmolLM2's tokenizer."""
    from conftest import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny-rm")
    return build_tiny_llama(out, head="LlamaForSequenceClassification", num_labels=1)


def _rows():
    q = [{"role": "user", "content": "What is 2 + 2?"}]
    return [
        {
            "prompt_id": "a",
            "sample_idx": 0,
            "messages": q,
            "reference": "2 + 2 = 4",
            "attempt1": "2 + 2 = 4",
            "attempt2": "The answer is four.",
        },
        {
            "prompt_id": "a",
            "sample_idx": 1,
            "messages": q,
            "reference": "2 + 2 = 4",
            "attempt1": "2 + 2 = 4",
            "attempt2": None,
        },
        {
            "prompt_id": "a",
            "sample_idx": 2,
            "messages": q,
            "reference": "2 + 2 = 4",
            "attempt1": "Paris is the capital of France.",
            "attempt2": None,
        },
        {
            "prompt_id": "b",
            "sample_idx": 0,
            "messages": q,
            "reference": None,
            "attempt1": "4",
            "attempt2": None,
        },
    ]


def test_reward_model_scores_batched_and_deterministic(tiny_reward_model):
    settings = judge_settings(
        "rm", {"type": "reward_model", "model": str(tiny_reward_model), "batch_size": 2}
    )
    judge = build("rm", settings)
    results = judge.judge(_rows())
    assert all(r.error == "" and isinstance(r.score1, float) and math.isfinite(r.score1) for r in results)
    assert results[0].score2 is not None and results[1].score2 is None
    # The same text scores the same whatever batch (and padding) it lands in.
    assert results[0].score1 == pytest.approx(results[1].score1, abs=1e-4)
    text = judge.render(_rows()[0]["messages"], "x")
    assert "What is 2 + 2?" in text and text.rstrip().endswith("x<|im_end|>")
    alone = build("rm", settings.model_copy(update={"batch_size": 1})).judge(_rows()[2:3])
    assert alone[0].score1 == pytest.approx(results[2].score1, abs=1e-4)


def test_embedding_similarity_and_duplicates_with_minilm():
    assert bundled_minilm().endswith("model")
    judge = build("embedding", judge_settings("embedding", {"dup_threshold": 0.95}))
    same, dup, other, noref = judge.judge(_rows())
    assert same.score1 == pytest.approx(1.0, abs=1e-4)  # identical to the reference
    assert same.score2 is not None and 0.2 < same.score2 < 1.0
    assert other.score1 < 0.3  # unrelated text
    assert (same.dup, dup.dup, other.dup) == (False, True, False)
    assert '"nearest_sample":0' in dup.raw
    assert noref.score1 is None and noref.error == "no reference answer" and noref.dup is False
