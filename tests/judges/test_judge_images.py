"""Judges that see the image: SIMA's critic prompt, image content parts, and the API judge's requests."""

from __future__ import annotations

import base64
import io

import pytest
from fault_server import FaultServer
from PIL import Image

from judges.base import JudgeStats, build, image_parts
from judges.config import judge_settings
from judges.self_critic import SelfCriticJudge
from judges.sima_critic import EXAMPLES, INTRO, sima_critic_prompt

KEY_ENV = "SELFCORRECT_TEST_JUDGE_KEY"


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def image_row(sample_idx: int, attempt1: str, attempt2: str | None = None) -> dict:
    return {
        "prompt_id": "p",
        "sample_idx": sample_idx,
        "task": "math",
        "reference": "3",
        "messages": [{"role": "user", "content": "How many shapes are in the image?"}],
        "images": ["ab.png"],
        "_image_bytes": [png("red")],
        "attempt1": attempt1,
        "attempt2": attempt2,
    }


def test_sima_prompt_as_the_seed_writes_it():
    text = sima_critic_prompt("How many\nshapes?", "Three\nshapes.", "There are 3.", "There are\n4.")
    assert text.startswith(INTRO) and EXAMPLES in text and "3. Accuracy in Describing Attributes" in text
    assert text.endswith(
        "Your task:\nQuestion: [How manyshapes?]\nGround truth: [Threeshapes.]\n"
        "AI generated response 1: [There are 3.]\nAI generated response 2: [There are4.]\nASSISTANT:\n"
    )
    assert "Example 1" not in sima_critic_prompt("q", "r", "a", "b", few_shot=False)


def test_image_parts_are_data_urls_of_the_row_bytes():
    (part,) = image_parts(image_row(0, "x"))
    assert part["type"] == "image_url"
    head, data = part["image_url"]["url"].split(",", 1)
    assert head == "data:image/png;base64" and base64.b64decode(data) == png("red")
    assert image_parts({"prompt_id": "t", "images": []}) == []
    with pytest.raises(ValueError, match="has images but not their bytes"):
        image_parts({"prompt_id": "t", "images": ["ab.png"]})


def critic(**settings) -> SelfCriticJudge:
    """The self-critic without its engine. The tiny random model cannot be made to pick a response (or to
    refuse one), so each test gives the engine's answers: what is tested is what the critic is asked and
    how its answer lands in the row."""
    judge = object.__new__(SelfCriticJudge)
    judge.name, judge.stats = "critic", JudgeStats()
    judge.settings = judge_settings("critic", {"type": "self_critic", "model": "m", **settings})
    return judge


def test_self_critic_shows_the_image_and_maps_a_swapped_verdict_back():
    judge = critic(order="swapped")
    asked = []

    def answer(conversations):
        asked.extend(conversations)
        return ["The better AI generated response: [[1]]."] * len(conversations)

    judge.generate = answer
    greedy, sampled = image_row(0, "There are 3."), image_row(1, "There are 5.")
    results = judge.judge([greedy, sampled])
    (conv,) = asked
    parts = conv[0]["content"]
    assert parts[0]["type"] == "image_url" and parts[1]["type"] == "text"
    # swapped: response 1 is the sampled answer, as in SIMA's seed; its [[1]] is the pair's second
    assert "AI generated response 1: [There are 5.]\nAI generated response 2: [There are 3.]" in parts[1]["text"]
    assert results[1].pref == 2 and results[0].pref is None


def test_a_prompt_vllm_refuses_flags_its_row_and_the_rest_are_judged():
    from vllm.exceptions import VLLMValidationError

    judge = critic()

    def answer(conversations):
        if any("There are 9." in str(c) for c in conversations):
            raise VLLMValidationError("This model's maximum context length is 512 tokens. However, ...")
        return ["The better AI generated response: [[2]]."] * len(conversations)

    judge.generate = answer
    rows = [image_row(0, "There are 3."), image_row(1, "There are 9."), image_row(2, "There are 4.")]
    _, refused, judged = judge.judge(rows)
    assert refused.pref == 0 and "maximum context length is 512" in refused.error and refused.raw == ""
    assert (judged.pref, judged.error) == (2, "")


def test_api_judge_sends_images_as_gpt4v_content_parts(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with FaultServer() as server:
        settings = {"base_url": server.base_url, "model": "vision-judge", "api_key_env": KEY_ENV, "mode": "pairwise"}
        judge = build("openai", judge_settings("openai", settings))
        [res] = judge.judge([image_row(0, "There are 3.", "There are 4.")])
    assert res.pref == 0 and res.error == ""  # the fake prefers response 1 in both orders: a tie
    assert len(server.bodies) == 2
    for body in server.bodies:
        system, user = body["messages"]
        assert isinstance(system["content"], str)
        image, text = user["content"]
        assert image["image_url"]["url"].startswith("data:image/png;base64,") and "[Response 1]" in text["text"]
