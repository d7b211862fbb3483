"""The vLLM worker on CPU with the tiny random Llama: every mode, seeds, and context overflow."""

import pyarrow as pa
import pytest

from datagen.config import GenerateConfig
from datagen.records import SAMPLE_SCHEMA, Prompt
from datagen.turns import Request, generate_rows

PROMPTS = [
    Prompt("p0", [{"role": "user", "content": "What is 12*7?"}], reference="84", task="math"),
    Prompt("p1", [{"role": "user", "content": "Name a prime."}], reference=None),
]


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    from datagen.engine import GenerationWorker

    gen = GenerateConfig(n=2, max_tokens=12, engine={"dtype": "float32", "enforce_eager": True, "max_model_len": 512})
    w = GenerationWorker(str(tiny_model_dir), "/unused", gen.model_dump(), seed=3)
    yield w
    w.close()


def test_shard_table_matches_the_contract(worker):
    table, stats = worker({"shard": 0, "prompts": [p.to_row() for p in PROMPTS]})
    assert table.schema == SAMPLE_SCHEMA and table.num_rows == 4
    rows = table.to_pylist()
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    for r in rows:
        assert r["attempt1"] and r["attempt2"] is not None and r["review_prompt"]
        assert 0 < r["attempt1_tokens"] <= 12 and r["attempt1_finish"] in ("stop", "length")
        assert r["generated_tokens"] == r["attempt1_tokens"] + r["attempt2_tokens"]
        assert r["prompt_tokens"] > 0 and r["model"] == worker.model_name and r["seed"] == 3
    assert stats["samples"] == 4 and stats["generated_tokens"] == sum(r["generated_tokens"] for r in rows)
    assert pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA).equals(table)


def test_same_seed_same_samples_and_samples_differ(worker):
    req = [Request([{"role": "user", "content": "Say something."}], 4, 1.0, 1234)]
    a = worker.complete(req)
    b = worker.complete(req)
    assert [c.text for c in a[0]] == [c.text for c in b[0]]
    assert len({c.text for c in a[0]}) > 1


@pytest.mark.parametrize("mode", ["single", "sima", "selfee"])
def test_modes_with_the_real_engine(worker, mode):
    cfg = GenerateConfig(mode=mode, n=3, max_tokens=8, max_revisions=2, enforce_revisions=2)
    rows = generate_rows(PROMPTS, cfg, worker.complete, model="tiny", seed=0)
    assert len(rows) == 6
    table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
    assert table.num_rows == 6
    if mode == "sima":
        greedy = [r for r in rows if r["greedy"]]
        assert [r["sample_idx"] for r in greedy] == [0, 0]
    if mode == "selfee":
        # enforce_revisions=2 == max_revisions: every chain revises twice
        assert all(len(r["revisions"]) == 2 and len(r["feedbacks"]) == 2 for r in rows)
        assert all(r["attempt2"] == r["revisions"][-1] for r in rows)


def test_a_turn_without_room_in_the_context_is_recorded_not_sent(worker):
    long = [{"role": "user", "content": "word " * 600}]
    (outs,) = worker.complete([Request(long, 2, 1.0, 1)])
    assert [(c.text, c.finish) for c in outs] == [("", "context"), ("", "context")]


def test_a_large_seeded_batch_does_not_crash_the_cpu_engine(worker):
    # Regression: with chunked prefill the CPU build crashed on seeded requests whose prefill was
    # split across steps ("CPU Generator does not use offset"); 128 prompts exceed one step's budget.
    text = "Please describe, in a few words, the number {}. " * 3
    reqs = [Request([{"role": "user", "content": text.format(i, i, i)}], 4, 1.0, i) for i in range(128)]
    outs = worker.complete(reqs)
    assert len(outs) == 128 and all(len(o) == 4 for o in outs)


def test_stop_strings_and_continuing_a_reply(worker):
    """What SelFee's chain format needs from the engine: stop at a verdict, and write on from it."""
    conv = [{"role": "user", "content": "Say something."}]
    (full,) = worker.complete([Request(conv, 1, 1.0, 7)])[0]  # seeded: the same tokens again below
    text = full.text
    assert full.stop_reason is None
    # a stop string whose first occurrence is a few characters in
    k = next(k for k in range(3, len(text) - 3) if text.find(text[k : k + 3]) == k and text[k : k + 3].strip())
    stop = text[k : k + 3]
    (cut,) = worker.complete([Request(conv, 1, 1.0, 7, stop=(stop,))])[0]
    assert cut.text == text[:k] and (cut.finish, cut.stop_reason) == ("stop", stop)
    # Continuing the assistant's reply: the prompt ends inside that reply, not after an end-of-turn.
    partial = conv + [{"role": "assistant", "content": cut.text + stop}]
    ids = worker.policy.encode(partial, continue_final=True)
    assert worker.tokenizer.decode(ids).endswith(cut.text + stop)
    (more,) = worker.complete([Request(partial, 1, 0.0, 1, continue_final=True)])[0]
    assert more.tokens > 0


def test_selfee_chain_format_with_the_real_engine(worker):
    cfg = GenerateConfig(mode="selfee", selfee_format="chain", n=2, max_tokens=8, max_revisions=2, enforce_revisions=1)
    rows = generate_rows(PROMPTS, cfg, worker.complete, model="tiny", seed=0)
    assert len(rows) == 4 and pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA).num_rows == 4
    for r in rows:  # a random model writes no "### Feedback" header: each chain is its answer alone
        reply = r["conversation"][-1]
        assert reply["role"] == "assistant" and r["attempt1"] == reply["content"].strip()
        assert r["generated_tokens"] > 0 and r["revisions"] == [] and r["attempt2"] is None


def test_two_attempts_carry_what_a_trainer_needs(worker):
    """The turns SCoRe's rollouts take (``two_attempts``, as the generate stage's two_attempt rows): token ids
    that decode to the text, prompt ids that are the conversation as encoded, one log-prob per token."""
    from datagen.turns import two_attempts

    cfg = GenerateConfig(n=2, max_tokens=8, temperature=1.0)
    turns = two_attempts(PROMPTS, cfg, worker.complete, model="tiny", seed=5, logprobs=True)
    rows = generate_rows(PROMPTS, cfg, worker.complete, model="tiny", seed=5)
    assert [t.row for t in turns] == rows  # the same rows the generate stage writes
    tok = worker.tokenizer
    for t in turns:
        for c, conv in ((t.first, t.row["conversation"][:-3]), (t.second, t.row["conversation"][:-1])):
            assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
            assert list(c.prompt_ids) == worker.policy.encode(conv)
            assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
    assert all(c.logprobs == () for c in worker.complete([Request(rows[0]["conversation"][:1], 1, 1.0, 1)])[0])
