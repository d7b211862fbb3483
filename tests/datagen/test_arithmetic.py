"""The built-in arithmetic ladder: exact answers, disjoint splits, the original set unchanged, and the
pass-rate filter that keeps the prompts with signal."""

import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from datagen.arithmetic import LEVELS
from datagen.config import PassRateConfig, PromptsConfig
from datagen.prompts import PromptError, load_prompts

ROOT = Path(__file__).resolve().parents[2]


def question(p):
    return p.metadata["question"]


def solve(text):
    """The answer of a bare sum, computed from its text."""
    a, op, b = re.search(r"(\d+) ([+-]) (\d+)", text).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


@pytest.mark.parametrize("level", list(LEVELS))
def test_every_level_is_exact_seeded_and_its_splits_share_nothing(level):
    train = load_prompts(PromptsConfig(level=level, size=300, limit=300))
    assert [p.prompt_id for p in train] == [p.prompt_id for p in load_prompts(PromptsConfig(level=level, limit=300))]
    test = load_prompts(PromptsConfig(level=level, split="test", limit=300))
    assert len(train) == len(test) == 300
    assert not {question(p) for p in train} & {question(p) for p in test}
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}
    for p in train:
        assert p.task == "math" and p.metadata["level"] == level
        assert str(Fraction(p.reference)) == p.reference  # an integer or a reduced fraction
        assert p.messages[0]["content"].startswith(question(p) + "\n")
        assert 'the final answer as "The answer is N."' in p.messages[0]["content"]
        if not LEVELS[level].word:
            assert solve(question(p)) == int(p.reference)


def test_sums_split_by_calculation_so_no_test_sum_is_trained_in_another_wording():
    calc = lambda p: re.search(r"\d+ [+-] \d+", question(p)).group(0)  # noqa: E731
    train = load_prompts(PromptsConfig(level="add_sub_1digit", split="train"))
    test = load_prompts(PromptsConfig(level="add_sub_1digit", split="test"))
    assert not {calc(p) for p in train} & {calc(p) for p in test}
    # every single-digit sum and difference, in five wordings, half of them held out: an eval of 400
    assert len(train) + len(test) == 10 * 10 * 2 * 5
    assert len(test) >= 400
    assert all(-9 <= int(p.reference) <= 18 for p in train + test)


def test_two_step_word_problems_need_both_steps():
    (p,) = [x for x in load_prompts(PromptsConfig(level="word_2step", limit=50)) if " more, then " in question(x)][:1]
    a, b, c = map(int, re.findall(r"\d+", question(p)))
    assert int(p.reference) == a + b - c


def test_the_default_level_is_the_original_problem_set():
    """Runs made before the ladder keep their prompts: same ids, text and answers."""
    first = load_prompts(PromptsConfig(limit=2))
    assert [p.prompt_id for p in first] == ["arith-train-6411968bb994", "arith-train-5fdb6017237f"]
    assert first[0].messages[0]["content"] == (
        "Hana has 76 apples and Ben gives Hana 6 more. How many apples does Hana have now?\n"
        'Solve it step by step, then give the final answer as "The answer is N."'
    )
    assert first[0].reference == "82"
    easy = load_prompts(PromptsConfig(split="test", max_operand=9, limit=1))
    assert easy[0].prompt_id == "arith-test-29ff4674b552" and easy[0].reference == "9"


def test_a_small_level_gives_all_it_has_unless_size_asks_for_more():
    assert len(load_prompts(PromptsConfig(level="add_sub_1digit"))) < 1000  # size unset: all of them
    with pytest.raises(PromptError, match="only .* distinct train problems at prompts.level=add_sub_1digit"):
        load_prompts(PromptsConfig(level="add_sub_1digit", size=1000))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["prompts.level=add_sub_3digit"], "prompts.level: Value error, unknown level 'add_sub_3digit'"),
        (["prompts.level=add_sub_1digit", "prompts.max_operand=9"], "max_operand applies to the word levels"),
        (["prompts.pass_rate.above=0.5", "prompts.pass_rate.below=0.5"], "above must be < below"),
        (["eval.prompts.pass_rate={}"], "the eval measures every held-out problem"),
        (["prompts.level=add_sub_1digit", "eval.prompts.max_operand=9"], "eval.prompts.max_operand applies"),
        (["calibrate.levels=[word_3step]"], "calibrate.levels"),
    ],
)
def test_bad_ladder_settings_are_refused_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, overrides)


def test_a_config_written_for_a_level_runs_on_a_prompt_file_or_the_pictures(tmp_path):
    """The level is the arithmetic's setting: quickstart.yaml names one, and a prompt file or the picture
    questions given on the command line replace the arithmetic without a complaint about it."""
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(json.dumps({"prompt_id": "mine-1", "prompt": "What is 2 + 2?", "reference": "4"}) + "\n")
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"prompts.path={prompts}"])
    assert cfg.prompts.builtin is None and [p.prompt_id for p in load_prompts(cfg.prompts)] == ["mine-1"]
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["prompts.builtin=pictures", "prompts.size=2",
                                                           "eval.prompts.builtin=pictures"])
    assert all(p.images for p in load_prompts(cfg.prompts))


def test_the_eval_follows_the_training_level_unless_it_names_its_own(tmp_path):
    cfg = load_config(None, ["prompts.level=add_sub_2digit"])
    assert cfg.eval.prompts.level == "add_sub_2digit" and cfg.eval.prompts.split == "test"
    cfg = load_config(None, ["prompts.level=add_sub_2digit", "eval.prompts.level=word_2step"])
    assert cfg.eval.prompts.level == "word_2step"
    cfg = load_config(None, [f"run_dir={tmp_path}", "prompts.pass_rate={}"])
    assert cfg.prompts.pass_rate.file == str(tmp_path / "calibrate" / "pass_rates.jsonl")


# --- the pass-rate filter: prompts with signal, and more read until there are enough ---------------


def rates_file(tmp_path, rates):
    path = tmp_path / "pass_rates.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": p, "pass_rate": r}) + "\n" for p, r in rates.items()))
    return str(path)


def test_pass_rate_keeps_prompts_with_signal_and_reads_on_to_the_limit(tmp_path):
    source = load_prompts(PromptsConfig(level="add_sub_2digit", limit=8))
    ids = [p.prompt_id for p in source]
    rates = dict(zip(ids, [0.0, 0.5, 1.0, 0.25, 0.0, 0.75, 1.0, 0.125], strict=True))
    keep = PassRateConfig(file=rates_file(tmp_path, rates))
    counts = Counter()
    kept = load_prompts(PromptsConfig(level="add_sub_2digit", limit=3, pass_rate=keep), counts)
    # limit counts kept prompts: the source is read past the first three to find three with 0 < p < 1
    assert [p.prompt_id for p in kept] == [ids[1], ids[3], ids[5]]
    assert counts == {"kept": 3, "too_hard": 2, "too_easy": 1}
    every = Counter()
    assert len(load_prompts(PromptsConfig(level="add_sub_2digit", pass_rate=keep), every)) == 4
    # eight measured, four with signal; the rest of the source was never measured
    assert every["kept"] == 4 and every["too_hard"] == 2 and every["too_easy"] == 2 and every["unmeasured"] > 0
    easy_too = PassRateConfig(file=keep.file, below=None)
    assert len(load_prompts(PromptsConfig(level="add_sub_2digit", limit=6, pass_rate=easy_too))) == 6


def test_pass_rate_asks_for_more_measurements_when_too_few_have_signal(tmp_path):
    ids = [p.prompt_id for p in load_prompts(PromptsConfig(limit=4))]
    keep = PassRateConfig(file=rates_file(tmp_path, dict.fromkeys(ids, 0.5)))
    with pytest.raises(PromptError, match=r"4 of the 4 prompts measured .* have 0 < pass rate < 1; "
                                          r"prompts.limit asks for 5: measure more"):
        load_prompts(PromptsConfig(limit=5, pass_rate=keep))


def test_a_bad_pass_rate_file_is_named(tmp_path):
    with pytest.raises(PromptError, match="selfcorrect calibrate"):
        load_prompts(PromptsConfig(pass_rate=PassRateConfig(file=str(tmp_path / "none.jsonl"))))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "a", "pass_rate": 0.5}\n{"prompt_id": "b"}\n')
    with pytest.raises(PromptError, match=f"{bad}:2: expected JSON with prompt_id and pass_rate"):
        load_prompts(PromptsConfig(pass_rate=PassRateConfig(file=str(bad))))
    bad.write_text('{"prompt_id": "a", "pass_rate": 2}\n')
    with pytest.raises(PromptError, match=f"{bad}:1: pass_rate 2.0 is outside"):
        load_prompts(PromptsConfig(pass_rate=PassRateConfig(file=str(bad))))
