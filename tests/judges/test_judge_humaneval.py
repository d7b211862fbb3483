"""The built-in HumanEval prompts through the judge stage's own path: right answers pass, wrong ones fail.

Rows come from the generate stage's planner (``generate_rows``) with a scripted completer: attempt 1
is the canonical solution, attempt 2 a wrong body, each written the two ways models answer: a chat
model's whole function in a fenced block (sample 0), a base model's bare continuation (sample 1).
The judge stage's worker scores them with the verifier, as its actors do.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from datagen.config import GenerateConfig, PromptsConfig
from datagen.judging import JudgeWorker
from datagen.prompts import load_prompts
from datagen.records import CODE_PROMPT, SAMPLE_SCHEMA
from datagen.turns import Completion, generate_rows
from judges.code_sandbox import isolation

pytestmark = pytest.mark.skipif(isolation()[0] == "none", reason="no sandbox isolation on this host")

WRONG_BODY = "    return None\n"


def _chat(stub: str, body: str) -> str:
    return f"Here is the completed function:\n\n```python\n{stub}{body}```\n\nIt follows the docstring."


class Scripted:
    """Attempt 1: the canonical solution; attempt 2 (after the review prompt): a wrong body."""

    def __init__(self, prompts):
        self.by_question = {p.messages[-1]["content"]: p for p in prompts}

    def __call__(self, requests):
        out = []
        for r in requests:
            prompt = self.by_question[r.conversation[0]["content"]]
            stub = prompt.metadata[CODE_PROMPT]
            if len(r.conversation) == 1:
                texts = [_chat(stub, prompt.reference), prompt.reference]
            else:
                fenced = "```" in r.conversation[1]["content"]
                texts = [_chat(stub, WRONG_BODY) if fenced else WRONG_BODY]
            out.append([Completion(t, 10, "stop") for t in texts[: r.n]])
        return out


@pytest.mark.parametrize("count", [12, pytest.param(None, marks=pytest.mark.slow)], ids=["seeded-12", "all-164"])
def test_canonical_solutions_pass_and_wrong_bodies_fail(count):
    prompts = load_prompts(PromptsConfig(builtin="humaneval"))
    assert len(prompts) == 164
    if count is not None:
        prompts = random.Random(0).sample(prompts, count)
    rows = generate_rows(prompts, GenerateConfig(mode="two_attempt", n=2), Scripted(prompts), model="m", seed=0)
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)

    worker = JudgeWorker({"verifier": {"code_timeout_s": 20, "code_workers": 2}})
    judged, stats = worker.judge_table(table)

    out = judged.select(["prompt_id", "sample_idx", "verifier_score1", "verifier_score2", "verifier_error"])
    rows = out.to_pylist()
    assert len(rows) == 2 * len(prompts)
    assert [r for r in rows if r["verifier_error"]] == []
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows if r["verifier_score1"] != 1.0] == []
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows if r["verifier_score2"] != 0.0] == []
    assert stats["verifier"]["errors"] == 0
