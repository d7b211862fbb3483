"""Each builder on hand-made judged rows: what it keeps, what it drops and why."""

from __future__ import annotations

import json
import re

import pytest
from rl_rows import judged_row as row
from rl_rows import write_judged

from datagen.selfee import parse_chain
from datagen.shards import StageDir, StageMismatchError
from rl.build import run_build
from rl.builders import BuildResult, get_builder, selfee_chain
from rl.config import BuildConfig


def test_scl_keeps_only_flips():
    rows = [
        row("a", 0, attempt1="wrong", attempt2="right", verifier_score1=0.0, verifier_score2=1.0),
        row("a", 1, attempt1="right", attempt2="wrong", verifier_score1=1.0, verifier_score2=0.0),
        row("a", 2, attempt1="right", attempt2="right", verifier_score1=1.0, verifier_score2=1.0),
        row("b", 0, attempt1="x", attempt2="y", verifier_score1=0.0, verifier_score2=0.0),
        row("b", 1, attempt1="x", attempt2="y", verifier_error="timeout"),
        row("b", 2, attempt1="x", attempt2=None),
        row("b", 3, attempt1="x", attempt2="y", verifier_score1=1.0),
    ]
    out = get_builder("scl")(rows, BuildConfig())
    assert [(e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in out.examples] == [
        ("right", "wrong"),
        ("right", "wrong"),
    ]
    assert [(e["chosen_source"], e["rejected_source"]) for e in out.examples] == [
        ("attempt2", "attempt1"),
        ("attempt1", "attempt2"),
    ]
    first = out.examples[0]
    assert first["prompt"] == [{"role": "user", "content": "question a"}]
    assert first["chosen"][0]["role"] == "assistant" and first["group"] == "a"
    assert out.dropped == {
        "both_correct": 1,
        "both_wrong": 1,
        "judge_error": 1,
        "no_attempt2": 1,
        "not_scored": 1,
    }


def _review_rows():
    review = "Review your previous answer."
    return [
        row("a", 0, attempt1="6+3=8", attempt2="6+3=9", review_prompt=review, verifier_score1=0.0, verifier_score2=1.0),
        row("a", 1, attempt1="6+3=9", attempt2="I'm ready to help.", review_prompt=review,
            verifier_score1=1.0, verifier_score2=0.0),
        row("a", 2, attempt1="6+3=9", attempt2="6+3=9", review_prompt=review, verifier_score1=1.0, verifier_score2=1.0),
        row("b", 0, attempt1="7", attempt2="8", review_prompt=review, verifier_score1=0.0, verifier_score2=0.0),
    ]  # fmt: skip


def test_scl_pairs_can_answer_the_review_turn():
    """scl_prompt review: the pair's prompt is the conversation the second attempt was made in, so
    right->wrong teaches to keep a right answer when asked to review it, wrong->right to fix a wrong one."""
    rows = _review_rows()
    out = get_builder("scl")(rows, BuildConfig(scl_prompt="review"))
    keep, fix = sorted(out.examples, key=lambda e: e["chosen_source"])
    assert keep["prompt"] == [
        {"role": "user", "content": "question a"},
        {"role": "assistant", "content": "6+3=9"},
        {"role": "user", "content": "Review your previous answer."},
    ]
    assert (keep["chosen"][0]["content"], keep["rejected"][0]["content"]) == ("6+3=9", "I'm ready to help.")
    assert fix["prompt"][1]["content"] == "6+3=8"
    assert (fix["chosen"][0]["content"], fix["rejected"][0]["content"]) == ("6+3=9", "6+3=8")
    assert out.notes == {"right_to_wrong": 1, "wrong_to_right": 1}
    both = get_builder("scl")(rows, BuildConfig(scl_prompt="both"))
    assert sorted(e["pair_id"] for e in both.examples) == ["a:0", "a:0:review", "a:1", "a:1:review"]
    assert {e["group"] for e in both.examples} == {"a"}  # a prompt's pairs share a step
    assert both.dropped == out.dropped == {"both_correct": 1, "both_wrong": 1}


@pytest.mark.parametrize("correct_to_correct, kept", [(False, ["a:0"]), (True, ["a:0", "a:2"])])
def test_star_learns_the_second_attempts_that_are_right(correct_to_correct, kept):
    out = get_builder("star")(_review_rows(), BuildConfig(builder="star", star_correct_to_correct=correct_to_correct))
    assert out.kind == "sft" and [e["pair_id"] for e in out.examples] == kept
    messages = out.examples[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[1:]] == ["6+3=8", "Review your previous answer.", "6+3=9"]
    assert out.dropped["attempt2_wrong"] == 2
    assert out.dropped.get("both_correct", 0) == (0 if correct_to_correct else 1)


def test_star_sft_learns_only_the_second_attempt():
    """The train stage's SFT split: the turns before the last assistant turn are the prompt, not learned."""
    from rl.train import split_at_last_user

    messages = get_builder("star")(_review_rows(), BuildConfig(builder="star")).examples[0]["messages"]
    prompt, completion = split_at_last_user(messages)
    assert completion == [{"role": "assistant", "content": "6+3=9"}]
    assert prompt[-1] == {"role": "user", "content": "Review your previous answer."}


def _contrast_rows():
    sims = [0.95, 0.1, 0.5, 0.3, 0.8, 0.2, 0.6, 0.4, 0.7]
    rows = [
        row("p", i, attempt1=f"resp {i}", embedding_score1=s, embedding_dup=False) for i, s in enumerate(sims)
    ]
    rows.append(row("p", 9, attempt1="resp 9", embedding_score1=0.05, embedding_dup=True))
    rows.append(row("p", 10, attempt1="resp 10", embedding_error="embed failed"))
    rows.append(row("q", 0, attempt1="no ref", reference=None, embedding_score1=0.1))
    return rows


def test_self_contrast_draws_k_random_negatives_from_the_kept_ones():
    rows = _contrast_rows()
    build = get_builder("self_contrast")
    cfg = BuildConfig(builder="self_contrast", negatives=4, seed=7)
    out = build(rows, cfg)
    # 9 kept after dup/error; round(9 * 0.25) = 2 most similar (resp 0: 0.95, resp 4: 0.8) dropped;
    # 4 of the 7 left drawn at random
    negatives = [e["rejected"][0]["content"] for e in out.examples]
    allowed = {f"resp {i}" for i in (1, 2, 3, 5, 6, 7, 8)}
    assert len(negatives) == len(set(negatives)) == 4 and set(negatives) <= allowed
    assert all(e["chosen"][0]["content"] == "reference answer p" for e in out.examples)
    assert {e["group"] for e in out.examples} == {"p"}
    assert out.dropped == {
        "near_duplicate": 1,
        "judge_error": 1,
        "no_reference": 1,
        "too_similar": 2,
        "not_drawn": 3,
    }
    # the draw is a function of (seed, prompt_id): the same whatever the row order, new with the seed
    again = build(list(reversed(rows)), cfg)
    assert [e["pair_id"] for e in again.examples] == [e["pair_id"] for e in out.examples]
    draws = {
        tuple(e["pair_id"] for e in build(rows, BuildConfig(builder="self_contrast", negatives=4, seed=s)).examples)
        for s in range(8)
    }
    assert len(draws) > 1
    assert all(set(d) <= {f"p:{i}" for i in (1, 2, 3, 5, 6, 7, 8)} for d in draws)
    # the seed's rule: a prompt with fewer than k responses left gives no pairs
    few = build(rows, BuildConfig(builder="self_contrast", negatives=8))
    assert few.examples == [] and few.dropped["fewer_than_k"] == 7


def test_sima_pick_is_chosen():
    rows = [
        row("p", 0, attempt1="greedy", greedy=True),
        row("p", 1, attempt1="sample one", self_critic_pref=1),
        row("p", 2, attempt1="sample two", self_critic_pref=2),
        row("p", 3, attempt1="sample three", self_critic_pref=0),
        row("p", 4, attempt1="sample four", self_critic_pref=None, self_critic_error="garbage"),
        row("p", 5, attempt1="greedy", self_critic_pref=2),
    ]
    out = get_builder("sima")(rows, BuildConfig(builder="sima"))
    pairs = [(e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in out.examples]
    assert pairs == [("greedy", "sample one"), ("sample two", "greedy")]
    assert out.dropped == {"greedy_row": 1, "tie": 1, "judge_error": 1, "identical": 1}


def test_selfee_chain_format():
    chain = selfee_chain("42", ["The sum is off. Revision is needed.", "Looks right now. Score: 9/10."], ["41"])
    assert chain == (
        "42\n\n### Feedback 1:\nThe sum is off. Revision is needed.\n\n### Revision 1:\n41"
        "\n\n### Feedback 2:\nLooks right now. Score: 9/10. Revision is not needed."
    )
    rows = [
        row("p", 0, attempt1="42", feedbacks=["Wrong. Revision is needed.", "Fine."], revisions=["41"]),
        row("p", 1, attempt1="41", feedbacks=[], revisions=[]),
        row("p", 2, attempt1="", feedbacks=["x"], revisions=[]),
        row("p", 3, attempt1="41", feedbacks=["Good. Revision is not needed."], revisions=[]),
        row("p", 4, attempt1="41", feedbacks=["Bad. Revision is needed."], revisions=[""]),
    ]
    out = get_builder("selfee")(rows, BuildConfig(builder="selfee"))
    assert out.kind == "sft" and len(out.examples) == 2
    msgs = out.examples[0]["messages"]
    assert msgs[0] == {"role": "user", "content": "question p"} and msgs[-1]["role"] == "assistant"
    assert "### Revision 1:\n41" in msgs[-1]["content"]
    assert out.dropped == {"no_feedback": 1, "empty_answer": 1, "empty_turn": 1}
    only = get_builder("selfee")(rows, BuildConfig(builder="selfee", selfee_only_revised=True))
    assert len(only.examples) == 1 and only.dropped["not_revised"] == 1


@pytest.mark.parametrize(
    ("feedbacks", "revisions", "written"),
    [
        # an enforced "no revision" before a revision reads as a request for it, never both verdicts
        (["No revision is needed."], ["r"], ["Revision is needed."]),
        (["Score: 10/10. No revision needed."], ["r"], ["Score: 10/10. Revision is needed."]),
        # a feedback with no verdict gets the one the chain acted on
        (["Too short."], ["r"], ["Too short. Revision is needed."]),
        (
            ["Too short.", "Score: 9/10."],
            ["r"],
            ["Too short. Revision is needed.", "Score: 9/10. Revision is not needed."],
        ),
        (["Score: 5/10."], [], ["Score: 5/10. Revision is needed."]),  # a chain capped before its revision
        # verdicts already in place are kept as written
        (["Bad. Revision is needed.", "Good. Revision is not needed."], ["r"], None),
    ],
)
def test_selfee_chain_verdicts_read_as_the_paper_writes_them(feedbacks, revisions, written):
    chain = selfee_chain("a", feedbacks, revisions)
    assert parse_chain(chain)[1] == (written or feedbacks)
    assert "not needed. Revision is needed" not in chain and "No Revision" not in chain


def _scored(judge, scores):
    """SelFee rows scored (answer, revision) by ``judge``; a None revision score means no revision."""
    return [
        row("p", i, attempt1="a", attempt2=None if s2 is None else "r", feedbacks=["f"],
            revisions=[] if s2 is None else ["r"], **{f"{judge}_score1": s1, f"{judge}_score2": s2})
        for i, (s1, s2) in enumerate(scores)
    ]  # fmt: skip


def test_selfee_filters_on_the_judges_own_scale():
    # openai pointwise 1-10: default pass mark 8, on the final answer (the revision when there is one)
    rows = _scored("openai", [(2.0, 9.0), (8.0, None), (9.0, 7.0), (7.0, None)])
    for r in rows:
        r["openai_error"] = ""
    out = get_builder("selfee")(rows, BuildConfig(builder="selfee", judge="openai"))
    assert [e["pair_id"] for e in out.examples] == ["p:0", "p:1"]
    assert out.dropped == {"final_below_min_score": 2}
    strict = get_builder("selfee")(rows, BuildConfig(builder="selfee", judge="openai", min_score=9))
    assert [e["pair_id"] for e in strict.examples] == ["p:0"]
    # the verifier's 0/1: pass mark 1 keeps the correct final answers
    vrows = _scored("verifier", [(0.0, 1.0), (1.0, 0.0), (1.0, None)])
    vout = get_builder("selfee")(vrows, BuildConfig(builder="selfee", judge="verifier"))
    assert [e["pair_id"] for e in vout.examples] == ["p:0", "p:2"]
    # no judge: no filter; a judge error drops the row with its reason
    vrows[2]["verifier_error"] = "timeout"
    assert get_builder("selfee")(vrows, BuildConfig(builder="selfee", judge="verifier")).dropped == {
        "final_below_min_score": 1,
        "judge_error": 1,
    }
    assert len(get_builder("selfee")(vrows, BuildConfig(builder="selfee")).examples) == 3


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"judge": "verifier", "min_score": 8}, "outside the verifier judge's scale"),
        ({"judge": "openai", "min_score": 0.5}, "outside the openai judge's scale"),
        ({"judge": "openai", "min_score": 1}, "keep every chain or none"),
        ({"judge": "gpt", "min_score": 11}, "outside the gpt judge's scale (1-10)"),  # the scale follows the type
        ({"judge": "reward_model"}, "no known score scale"),
        ({"min_score": 5}, "needs build.judge"),
    ],
)
def test_selfee_thresholds_that_would_filter_all_or_nothing_are_refused(settings, message):
    from cluster.config import ConfigError, load_config

    judges = ["judges.verifier={}", "judges.openai={}", "judges.gpt.type=openai", "judges.reward_model.model=x"]
    overrides = [*judges, "build.builder=selfee", *(f"build.{k}={v}" for k, v in settings.items())]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)
    load_config(None, [*judges, "build.builder=selfee", "build.judge=reward_model", "build.min_score=0.2"])


def test_a_judge_named_otherwise_keeps_the_pass_mark_of_its_type():
    from cluster.config import load_config
    from rl.builders import selfee_threshold

    cfg = load_config(None, ["judges.gpt.type=openai", "build.builder=selfee", "build.judge=gpt"])
    assert selfee_threshold(cfg.build, cfg.judges) == 8.0


def _plugin(rows, cfg):
    return BuildResult("pairs", [], dropped={"all": len(rows)})


def test_registry_and_plugins():
    assert get_builder(f"{__name__}:_plugin") is _plugin
    with pytest.raises(ValueError, match="unknown builder"):
        get_builder("nope")
    with pytest.raises(ValueError, match="cannot import"):
        get_builder("no_such_module_x:thing")


def test_config_validation():
    with pytest.raises(ValueError):
        BuildConfig(negatives=3)
    with pytest.raises(ValueError):
        BuildConfig(typo=1)


def test_run_build_writes_trl_ready_parquet(tmp_path, capsys):
    from datasets import load_dataset

    rows = [
        row("a", 0, attempt1="wrong", attempt2="right", verifier_score1=0.0, verifier_score2=1.0),
        row("a", 1, attempt1="right", attempt2="right", verifier_score1=1.0, verifier_score2=1.0),
    ]
    judge = write_judged(tmp_path / "judge", rows)
    out = StageDir(tmp_path / "build")
    summary = run_build(BuildConfig(), judge, out)
    assert summary["rows_in"] == 2 and summary["pairs_out"] == 1 and summary["dropped"] == {"both_correct": 1}
    assert summary["prompts_in"] == 1 and summary["prompts_without_examples"] == 0
    assert json.loads((out.path / "_SUCCESS.json").read_text())["pairs_out"] == 1
    assert "dropped both_correct: 1" in capsys.readouterr().out
    ds = load_dataset("parquet", data_files=[str(p) for p in out.shard_paths()], split="train")
    assert ds[0]["prompt"] == [{"role": "user", "content": "question a"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "right"}]
    # a second run keeps the finished build; other settings need overwrite
    assert run_build(BuildConfig(), judge, out)["pairs_out"] == 1
    with pytest.raises(StageMismatchError):
        run_build(BuildConfig(min_margin=1.0), judge, out)
    assert run_build(BuildConfig(min_margin=1.0), judge, out, overwrite=True)["pairs_out"] == 1


def test_export_llamafactory_and_alpaca(tmp_path):
    from rl.export import run_export

    rows = [
        row(
            "a",
            0,
            attempt1="wrong",
            attempt2="right",
            verifier_score1=0.0,
            verifier_score2=1.0,
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
        ),
    ]
    out = StageDir(tmp_path / "build")
    run_build(BuildConfig(), write_judged(tmp_path / "judge", rows), out, echo=False)
    result = run_export(out, tmp_path / "export")
    pairwise = json.loads((tmp_path / "export" / "llamafactory_pairwise.json").read_text())
    assert pairwise == [
        {"instruction": "2+2?", "input": "", "system": "be brief", "chosen": "right", "rejected": "wrong"}
    ]
    alpaca = json.loads((tmp_path / "export" / "alpaca.json").read_text())
    assert alpaca[0]["output"] == "right" and alpaca[0]["instruction"] == "2+2?"
    assert result["files"] == {"llamafactory_pairwise.json": 1, "alpaca.json": 1}
    info = json.loads((tmp_path / "export" / "dataset_info.json").read_text())
    assert info["selfcorrect_pairwise"]["ranking"] is True


def test_a_judge_that_did_not_run_is_named_not_silently_dropped():
    from datagen.shards import StageInputError

    rows = [row("a", 0, attempt1="x", attempt2="y")]
    for judge in ("verifier", "reward_model"):
        del rows[0][f"{judge}_score1"], rows[0][f"{judge}_score2"], rows[0][f"{judge}_error"]
    with pytest.raises(StageInputError, match=r"needs the columns \['verifier_score1'.*set build.judge"):
        get_builder("scl")(rows, BuildConfig(builder="scl"))
    with pytest.raises(StageInputError, match="reward_model_score1"):
        get_builder("best_vs_worst")(rows, BuildConfig(builder="best_vs_worst"))


def test_build_stage_takes_the_run_seed_for_the_negatives(tmp_path):
    from cluster.config import load_config
    from cluster.stages import STAGES

    cfg = load_config(None, [f"run_dir={tmp_path}", "seed=7", "build.builder=self_contrast"])
    plan = STAGES["build"].prepare(cfg)
    assert plan.build.seed == 7 and plan.fingerprint["build"]["seed"] == 7
    own = load_config(None, [f"run_dir={tmp_path}", "seed=7", "build.seed=3"])
    assert STAGES["build"].prepare(own).build.seed == 3


def test_pairs_and_exports_carry_the_prompt_images(tmp_path):
    from rl.export import run_export

    flip = {"attempt1": "wrong", "attempt2": "right", "verifier_score1": 0.0, "verifier_score2": 1.0}
    rows = [row("a", 0, images=["ab12.png", "cd34.jpeg"], **flip), row("b", 0, **flip)]
    out = StageDir(tmp_path / "build")
    run_build(BuildConfig(), write_judged(tmp_path / "judge", rows), out, echo=False)
    assert {p["prompt_id"]: p["images"] for p in out.read().to_pylist()} == {"a": ["ab12.png", "cd34.jpeg"], "b": []}
    run_export(out, tmp_path / "export")
    a, b = json.loads((tmp_path / "export" / "llamafactory_pairwise.json").read_text())
    assert a["instruction"].startswith("<image><image>") and a["images"] == [
        str(tmp_path / "images" / "ab12.png"),
        str(tmp_path / "images" / "cd34.jpeg"),
    ]
    assert b["images"] == [] and not b["instruction"].startswith("<image>")
    info = json.loads((tmp_path / "export" / "dataset_info.json").read_text())
    assert info["selfcorrect_pairwise"]["columns"]["images"] == "images"
