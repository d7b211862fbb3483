"""The train stage's checks before Ray Train starts: sequence lengths against max_length, the build's
kind, and the CLI's exit status 2 for each."""

from __future__ import annotations

from pathlib import Path

import pytest
from rl_rows import judged_row, toy_scl_rows, write_judged

from cluster.cli import main
from datagen.shards import StageDir, StageInputError
from rl.build import run_build
from rl.config import BuildConfig, TrainConfig
from rl.train import _token_lengths, check_data

ROOT = Path(__file__).parents[2]
LONG = "It is long. " * 60  # ~240 tokens


def _rows() -> list[dict]:
    """Four flips; the wrong attempts of p2 and p3 are long."""
    return [
        judged_row(
            f"p{p}",
            0,
            messages=[{"role": "user", "content": f"What is {p}+{p}?"}],
            attempt1=(LONG if p >= 2 else "") + f"{p}+{p} = {2 * p + 1}.",
            attempt2=f"{p}+{p} = {2 * p}.",
            verifier_score1=0.0,
            verifier_score2=1.0,
        )
        for p in range(4)
    ]


def _build(run_dir: Path, rows, cfg: BuildConfig | None = None) -> StageDir:
    out = StageDir(run_dir / "build")
    run_build(cfg or BuildConfig(), write_judged(run_dir / "judge", rows), out, echo=False)
    return out


def test_lengths_are_measured_as_the_chat_template_renders_them(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]
    long = [short[0], {"role": "assistant", "content": LONG}]
    expected = [len(tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in (short, long)]
    assert _token_lengths(str(tiny_model_dir), [short, long], batch=1) == expected
    assert _token_lengths(str(tiny_model_dir), [short, long]) == expected
    assert expected[1] > expected[0] + 200


def test_too_long_is_refused_with_counts_or_dropped_and_counted(tmp_path, tiny_model_dir, capsys):
    build = _build(tmp_path, _rows())
    fits = check_data(TrainConfig(max_length=1024), str(tiny_model_dir), build)
    assert fits["too_long_dropped"] == 0 and fits["examples"] == 4 and fits["exclude"] == []
    assert 240 < fits["longest_tokens"] < 1024
    with pytest.raises(StageInputError, match=r"train.max_length 128: 2 of 4 pairs are longer .*too_long=drop"):
        check_data(TrainConfig(max_length=128), str(tiny_model_dir), build)
    dropped = check_data(TrainConfig(max_length=128, too_long="drop"), str(tiny_model_dir), build)
    assert dropped["too_long_dropped"] == 2 and dropped["examples"] == 2
    assert sorted(dropped["exclude"]) == ["p2:0", "p3:0"]
    assert "2 of 4 pairs are longer" in capsys.readouterr().err
    with pytest.raises(StageInputError, match="4 of 4 pairs"):  # nothing left to train on
        check_data(TrainConfig(max_length=16, too_long="drop"), str(tiny_model_dir), build)


def test_groups_larger_than_a_step_are_counted(tmp_path, tiny_model_dir):
    rows = [
        judged_row(f"p{p}", i, attempt1="wrong", attempt2=f"right {i}", verifier_score1=0.0, verifier_score2=1.0)
        for p, n in enumerate((3, 1, 2))
        for i in range(n)
    ]
    report = check_data(TrainConfig(batch_size=1, grad_accum=2), str(tiny_model_dir), _build(tmp_path, rows))
    assert report["groups"] == 3 and report["groups_split"] == 1
    assert report["padding"] == 0 and report["steps_per_epoch"] == 3


def _cli(run_dir: Path, model: Path, *overrides: str) -> int:
    return main(["train", str(ROOT / "configs/quickstart.yaml"), f"run_dir={run_dir}", f"model={model}", *overrides])


def test_cli_exit_2_before_ray_for_each_bad_input(tmp_path, tiny_model_dir, capsys):
    run_dir = tmp_path / "run"
    assert _cli(run_dir, tiny_model_dir) == 2  # no build yet
    assert "no finished build" in capsys.readouterr().err
    _build(run_dir, _rows())
    assert _cli(run_dir, tiny_model_dir, "train.max_length=128") == 2
    err = capsys.readouterr().err
    assert "train.max_length 128: 2 of 4 pairs are longer" in err and "Raise train.max_length to" in err
    assert _cli(run_dir, tiny_model_dir, "train.lora.target_modules=[q_proj,qkv_proj]") == 2
    assert "['qkv_proj'] are not modules of" in capsys.readouterr().err
    assert not (run_dir / "train").exists()  # nothing written


def test_cli_exit_2_for_dpo_on_sft_examples_and_for_an_empty_build(tmp_path, tiny_model_dir, capsys):
    selfee = [judged_row("p", 0, attempt1="41", feedbacks=["Wrong. Revision is needed."], revisions=["42"])]
    run_dir = tmp_path / "sft"
    _build(run_dir, selfee, BuildConfig(builder="selfee"))
    assert _cli(run_dir, tiny_model_dir) == 2
    assert "needs preference pairs" in capsys.readouterr().err
    empty = tmp_path / "empty"
    _build(empty, toy_scl_rows(2, flips=False))
    assert _cli(empty, tiny_model_dir) == 2
    assert "holds no training examples" in capsys.readouterr().err
