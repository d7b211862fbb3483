"""SelFee's turn logic: verdict phrases, the enforce rewrite, chains, teacher routing, K-revision answers.

The completers are scripted: they make a model say "Revision is not needed" on cue and honour stop
strings the way vLLM does (the stop string is searched in the new text and left out of it). The
real engine and a real OpenAI-compatible server drive the same code in test_engine.py and
test_teacher.py.
"""

import json

import pytest

from datagen.config import GenerateConfig
from datagen.records import Prompt
from datagen.selfee import (
    answer_after_revisions,
    enforce_revision,
    feedback_score,
    format_chain,
    has_verdict,
    needs_revision,
    parse_chain,
)
from datagen.turns import Completion, generate_rows

PROMPTS = [Prompt("p0", [{"role": "user", "content": "Q0"}]), Prompt("p1", [{"role": "user", "content": "Q1"}])]


@pytest.mark.parametrize(
    ("feedback", "revise"),
    [
        ("All good. Revision is not needed.", False),
        ("No revision is needed.", False),
        ("Correct. no revision needed", False),
        ("Revision: not needed", False),
        ("Revision isn't needed.", False),
        ("No further revisions are required.", False),
        ("The answer does not need revision.", False),
        ("There is no need for revision.", False),
        ("No critique.", False),
        ("Score: 9/10. Clear and correct.", False),  # a passing score, no verdict
        ("I rate it 10 out of 10.", False),
        ("Score: 7/10. The second step is off.", True),  # below 9 and no verdict
        ("Revision is needed.", True),
        ("The total is wrong. Revision is required.", True),
        ("Needs revision: the units are missing.", True),
        ("Score: 9. But the code has a bug. Revision is needed.", True),  # the verdict beats the score
        ("Score: 3/10. Revision is not needed.", False),
        ("Revision is not needed. On second thought, revision is needed.", True),  # the last verdict wins
        ("no verdict at all", True),
        ("", True),
    ],
)
def test_stop_phrases(feedback, revise):
    assert needs_revision(feedback) is revise


@pytest.mark.parametrize(
    ("feedback", "enforced"),
    [
        ("No revision is needed.", "Revision is needed."),
        ("Revision is not needed.", "Revision is needed."),
        ("ok. Revision is NOT needed.", "ok. Revision is needed."),
        ("Score 9/10, so no revision needed.", "Score 9/10, so revision is needed."),
        ("Fine. Revision: not needed", "Fine. Revision is needed"),
        ("The answer does not need revision.", "The answer needs revision."),
        ("Score: 10/10.", "Score: 10/10. Revision is needed."),
        ("Wrong sum. Revision is needed.", "Wrong sum. Revision is needed."),  # already asks: unchanged
        ("", "Revision is needed."),
    ],
)
def test_enforce_rewrite_reads_well_and_always_revises(feedback, enforced):
    assert enforce_revision(feedback) == enforced
    assert needs_revision(enforced)


def test_scores_and_verdict_detection():
    assert [feedback_score(t) for t in ("Score: 8/10", "7 out of 10", "score of 12", "nothing")] == [8, 7, None, None]
    assert has_verdict("No revision is needed.") and has_verdict("Revision is needed")
    assert not has_verdict("Score: 9/10.")


def test_chain_format_round_trips():
    text = format_chain(" a ", ["f1 Revision is needed.", "f2 Revision is not needed."], ["r1"])
    assert text == (
        "a\n\n### Feedback 1:\nf1 Revision is needed.\n\n### Revision 1:\nr1"
        "\n\n### Feedback 2:\nf2 Revision is not needed."
    )
    assert parse_chain(text) == ("a", ["f1 Revision is needed.", "f2 Revision is not needed."], ["r1"])
    assert parse_chain("just an answer") == ("just an answer", [], [])
    # a revision header with no feedback before it is not a section of its own
    assert parse_chain("a\n\n### Revision 1:\nb") == ("a\n\n### Revision 1:\nb", [], [])


@pytest.mark.parametrize(
    ("revisions", "answers"),
    [
        ([], ["a0", "a0", "a0"]),
        (["r1"], ["a0", "r1", "r1"]),
        (["r1", "r2", "r3"], ["a0", "r1", "r2"]),
    ],
)
def test_answer_after_k_revisions(revisions, answers):
    row = {"attempt1": "a0", "revisions": revisions}
    assert [answer_after_revisions(row, k) for k in range(3)] == answers
    with pytest.raises(ValueError):
        answer_after_revisions(row, -1)


# --- the chain format: one reply, steered at its verdicts --------------------------------------


class ChainModel:
    """A model trained on SelFee chains, scripted: answer, then feedback after feedback, each ending
    in ``verdict``, and it keeps writing past a "not needed" verdict unless stopped."""

    def __init__(self, verdict="Revision is not needed.", answer="answer"):
        self.verdict, self.answer = verdict, answer
        self.log = []

    def continuation(self, prefix: str) -> str:
        k = prefix.count("### Revision")
        parts = [f"revision {k}" if prefix else self.answer]
        for j in range(k + 1, 6):
            parts.append(f"\n\n### Feedback {j}:\nScore: 9/10. {self.verdict}\n\n### Revision {j}:\nrevision {j}")
        return "".join(parts)

    def __call__(self, requests):
        self.log.append(requests)
        out = []
        for r in requests:
            prefix = r.conversation[-1]["content"] if r.continue_final else ""
            assert r.continue_final == bool(prefix) and r.conversation[0]["role"] == "user"
            text = self.continuation(prefix)
            hits = [(text.find(s), s) for s in r.stop if s in text]
            if hits:
                pos, stop = min(hits)
                out.append([Completion(text[:pos], 5, "stop", stop)] * r.n)
            else:
                out.append([Completion(text, 5, "stop")] * r.n)
        return out


def _chain_cfg(**kw):
    return GenerateConfig(mode="selfee", selfee_format="chain", **kw)


def test_chain_autonomous_stops_on_the_models_own_verdict():
    model = ChainModel()
    rows = generate_rows(PROMPTS, _chain_cfg(n=2, max_revisions=3), model, model="m", seed=0)
    assert len(rows) == 4 and len(model.log) == 1  # one step: every chain ended at its first verdict
    for r in rows:
        assert r["attempt1"] == "answer" and r["revisions"] == [] and r["attempt2"] is None
        assert r["feedbacks"] == ["Score: 9/10. Revision is not needed"]
        assert r["conversation"][-1]["content"].endswith("Revision is not needed")


def test_chain_enforce_k_gives_every_answer_on_the_way():
    model = ChainModel()
    (r,) = generate_rows(PROMPTS[:1], _chain_cfg(n=1, max_revisions=3, enforce_revisions=2), model, model="m", seed=0)
    assert r["revisions"] == ["revision 1", "revision 2"]
    assert r["feedbacks"][:2] == ["Score: 9/10. Revision is needed."] * 2
    assert r["feedbacks"][2] == "Score: 9/10. Revision is not needed"
    assert [answer_after_revisions(r, k) for k in range(4)] == ["answer", "revision 1", "revision 2", "revision 2"]
    assert r["generated_tokens"] == 15 and r["attempt2"] == "revision 2"
    text = r["conversation"][-1]["content"]
    assert parse_chain(text) == (r["attempt1"], r["feedbacks"], r["revisions"])


def test_chain_stops_at_max_revisions():
    model = ChainModel(verdict="Revision is needed.")
    (r,) = generate_rows(PROMPTS[:1], _chain_cfg(n=1, max_revisions=2), model, model="m", seed=0)
    assert r["revisions"] == ["revision 1", "revision 2"] and len(r["feedbacks"]) == 3


def test_chain_verdict_words_inside_the_answer_are_not_a_verdict():
    model = ChainModel(answer="Yes, no revision needed here: 42")
    (r,) = generate_rows(PROMPTS[:1], _chain_cfg(n=1, max_revisions=2), model, model="m", seed=0)
    assert r["attempt1"].startswith("Yes, no revision needed") and r["feedbacks"] and r["revisions"] == []


# --- a teacher writes the SelFee turns (dialogue) -------------------------------------------------


class Tagged:
    """Answers every request with ``tag`` and the request's turn count; feedbacks pass or fail on cue."""

    def __init__(self, tag, verdicts=("needed", "not"), error_at=None):
        self.tag, self.verdicts, self.error_at = tag, verdicts, error_at
        self.calls = 0

    def __call__(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            last = r.conversation[-1]["content"]
            if self.error_at == self.calls:
                out.append([Completion("", 0, "error")] * r.n)
            elif last.endswith("Critique:"):
                rnd = sum(m["content"].endswith("Critique:") for m in r.conversation)
                verdict = self.verdicts[min(rnd, len(self.verdicts)) - 1]
                score = "Score: 4/10. Revision is needed." if verdict == "needed" else "Score: 9/10."
                out.append([Completion(f"{self.tag} feedback. {score}", 2, "stop")] * r.n)
            else:
                out.append([Completion(f"{self.tag} {len(r.conversation)}", 2, "stop") for _ in range(r.n)])
        return out


def test_teacher_writes_answer_feedback_and_revisions():
    cfg = GenerateConfig(mode="selfee", n=2, max_revisions=3, teacher={"model": "gpt-x"})
    policy, teacher = Tagged("policy"), Tagged("teacher")
    rows = generate_rows(PROMPTS, cfg, policy, model="small", seed=0, teach=teacher)
    assert policy.calls == 0 and len(rows) == 4
    for r in rows:
        assert r["attempt1"].startswith("teacher") and len(r["revisions"]) == 1 and len(r["feedbacks"]) == 2
        assert all(t.startswith("teacher") for t in r["feedbacks"] + r["revisions"])
        writers = json.loads(r["sampling"])["writers"]
        assert writers == {"answer": "openai:gpt-x", "feedback": "openai:gpt-x", "revision": "openai:gpt-x"}
        assert r["model"] == "small"


def test_teacher_critiques_the_policys_answer_when_asked():
    cfg = GenerateConfig(mode="selfee", n=1, teacher={"kind": "vllm", "model": "/big", "answers": "policy"})
    policy, teacher = Tagged("policy"), Tagged("teacher")
    (r, _) = generate_rows(PROMPTS, cfg, policy, model="small", seed=0, teach=teacher)
    assert r["attempt1"].startswith("policy") and r["feedbacks"][0].startswith("teacher")
    assert json.loads(r["sampling"])["writers"] == {"answer": "small", "feedback": "vllm:/big", "revision": "vllm:/big"}


def test_a_failed_teacher_turn_ends_the_chain_and_keeps_the_row():
    cfg = GenerateConfig(mode="selfee", n=1, max_revisions=3, teacher={"model": "gpt-x"})
    teacher = Tagged("teacher", verdicts=("needed",), error_at=3)  # answer, feedback 1, then revision 1 fails
    rows = generate_rows(PROMPTS, cfg, Tagged("policy"), model="small", seed=0, teach=teacher)
    for r in rows:
        assert r["revisions"] == [""] and r["attempt2_finish"] == "error" and len(r["feedbacks"]) == 1


def test_teacher_config_is_checked():
    with pytest.raises(ValueError, match="teacher only applies"):
        GenerateConfig(mode="two_attempt", teacher={"model": "x"})
    with pytest.raises(ValueError, match="teacher only applies"):
        GenerateConfig(mode="selfee", selfee_format="chain", teacher={"model": "x"})
    with pytest.raises(ValueError):
        GenerateConfig(mode="selfee", teacher={"model": "x", "api_key": "sk-secret"})
    with pytest.raises(ValueError, match="no teacher completer"):
        generate_rows(PROMPTS, GenerateConfig(mode="selfee", teacher={"model": "x"}), Tagged("p"), model="m", seed=0)


def test_chain_enforce_keeps_the_sentence_it_rewrites():
    model = ChainModel(verdict="So no revision is needed.")
    (r,) = generate_rows(PROMPTS[:1], _chain_cfg(n=1, max_revisions=1, enforce_revisions=1), model, model="m", seed=0)
    assert r["feedbacks"][0] == "Score: 9/10. So revision is needed." and r["revisions"] == ["revision 1"]
