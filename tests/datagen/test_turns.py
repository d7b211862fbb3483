"""The turn planner on its own. The completer here is a scripted function: the planner's contract
is "requests in, completions out", and a scripted completer is the only way to make a model say
"Revision is not needed" on cue. The real engine drives the same planner in test_engine.py."""


from datagen.config import GenerateConfig
from datagen.records import Prompt
from datagen.selfee import REVISION_PROMPT
from datagen.turns import Completion, derive_seed, generate_rows


def is_feedback_request(text: str) -> bool:
    return "Here is a proposed answer:" in text and text.endswith("Critique:")

PROMPTS = [Prompt("p0", [{"role": "user", "content": "Q0"}]), Prompt("p1", [{"role": "user", "content": "Q1"}])]


class Scripted:
    """Answers feedback requests with the verdicts in ``verdicts`` (by round), and logs requests."""

    def __init__(self, verdicts=("needed",)):
        self.verdicts = verdicts
        self.log = []

    def __call__(self, requests):
        self.log.append(requests)
        out = []
        for r in requests:
            last = r.conversation[-1]["content"]
            if is_feedback_request(last):
                rnd = sum(is_feedback_request(m["content"]) for m in r.conversation)
                verdict = self.verdicts[min(rnd, len(self.verdicts)) - 1]
                text = "Looks fine. Revision is not needed." if verdict == "not" else "Wrong. Revision is needed."
            else:
                text = f"answer {len(r.conversation)}"
            out.append([Completion(f"{text}", 3, "stop") for _ in range(r.n)])
        return out


def test_seeds_are_stable_and_distinct():
    assert derive_seed(0, "p", "a1") == derive_seed(0, "p", "a1")
    assert len({derive_seed(0, "p", "a2", i) for i in range(100)}) == 100
    assert derive_seed(1, "p", "a1") != derive_seed(0, "p", "a1")


def test_two_attempt_rows_and_conversation():
    cfg = GenerateConfig(mode="two_attempt", n=3, review_prompt="score")
    complete = Scripted()
    rows = generate_rows(PROMPTS, cfg, complete, model="m", seed=0)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(p, i) for p in ("p0", "p1") for i in range(3)]
    assert [len(step) for step in complete.log] == [2, 6]  # one n=3 request per prompt, then 6 second attempts
    r = rows[0]
    assert r["review_prompt"].startswith("There might be an error")
    assert [m["role"] for m in r["conversation"]] == ["user", "assistant", "user", "assistant"]
    assert r["attempt2"] == r["conversation"][-1]["content"] and r["generated_tokens"] == 6


def test_sima_sample_zero_is_greedy():
    cfg = GenerateConfig(mode="sima", n=3, temperature=1.0)
    complete = Scripted()
    rows = generate_rows(PROMPTS[:1], cfg, complete, model="m", seed=0)
    (step,) = complete.log
    assert [(r.n, r.temperature) for r in step] == [(1, 0.0), (2, 1.0)]
    assert [r["greedy"] for r in rows] == [True, False, False] and rows[0]["attempt2"] is None


def test_selfee_stops_when_no_revision_is_needed():
    cfg = GenerateConfig(mode="selfee", n=1, max_revisions=3)
    rows = generate_rows(PROMPTS[:1], cfg, Scripted(verdicts=("needed", "not")), model="m", seed=0)
    r = rows[0]
    assert len(r["feedbacks"]) == 2 and len(r["revisions"]) == 1
    assert r["attempt2"] == r["revisions"][-1]
    kinds = [
        (m["role"], "feedback" if is_feedback_request(m["content"]) else m["content"] == REVISION_PROMPT)
        for m in r["conversation"]
    ]
    assert kinds == [
        ("user", False),
        ("assistant", False),
        ("user", "feedback"),
        ("assistant", False),
        ("user", True),
        ("assistant", False),
        ("user", "feedback"),
        ("assistant", False),
    ]
    # The critic is asked about the question and the latest answer (SelFee's data-generation prompt).
    first, second = (m["content"] for m in r["conversation"] if is_feedback_request(m["content"]))
    assert first.startswith("Q0\nHere is a proposed answer:\nanswer 1\n") and "less than 9" in first
    assert f"proposed answer:\n{r['revisions'][0]}\n" in second


def test_selfee_enforce_mode_forces_at_least_k_revisions():
    cfg = GenerateConfig(mode="selfee", n=2, max_revisions=3, enforce_revisions=2)
    rows = generate_rows(PROMPTS, cfg, Scripted(verdicts=("not",)), model="m", seed=0)
    for r in rows:
        assert len(r["revisions"]) == 2 and len(r["feedbacks"]) == 3
        assert r["feedbacks"][:2] == ["Looks fine. Revision is needed."] * 2
        assert "Revision is not needed" in r["feedbacks"][2]


def test_selfee_max_revisions_caps_the_chain():
    cfg = GenerateConfig(mode="selfee", n=1, max_revisions=2)
    (r,) = generate_rows(PROMPTS[:1], cfg, Scripted(verdicts=("needed",)), model="m", seed=0)
    assert len(r["revisions"]) == 2 and len(r["feedbacks"]) == 2
