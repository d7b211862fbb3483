"""SCoRe's bad input: refused with exit 2 before Ray starts, naming the key; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.score.judge=nope"], "train.score.judge: 'nope' is not one of this config's judges"),
        (["train.score.alpha=-1"], "train.score.alpha"),
        (["train.score.beta2=-0.1"], "train.score.beta2"),
        (["train.score.stage1_steps=0", "train.score.stage2_steps=0"], "nothing to train"),
        (["train.score.n=1"], "rloo needs n >= 2"),
        (["train.score.overlap=true", "train.score.max_policy_lag=0"], "max_policy_lag >= 1"),
        (["train.score.weight_sync=adapter", "train.lora.enabled=false"], "train.score.weight_sync: adapter"),
        (["train.score.weight_sync=nccl"], "nccl needs GPUs"),
        (["train.lora.target_modules=[nope_proj]"], "train.lora.target_modules"),
        (["train.score.kl_estimator=k4"], "train.score.kl_estimator"),
    ],
)
def test_score_bad_input_exits_2_naming_the_key(tmp_path, tiny_model_dir, capsys, overrides, message):
    run_dir = tmp_path / "run"
    code = main(
        ["train", str(ROOT / "configs/score_quickstart.yaml"), f"run_dir={run_dir}", f"model={tiny_model_dir}",
         *overrides]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 2, out.out + out.err
    assert message in out.out + out.err
    assert not (run_dir / "train").exists()


def test_run_leaves_out_the_offline_stages(tmp_path, tiny_model_dir, capsys):
    """`selfcorrect run` on a SCoRe config does not generate, judge or build (it samples its own rollouts)."""
    code = main(
        ["run", str(ROOT / "configs/score_quickstart.yaml"), f"run_dir={tmp_path / 'run'}", f"model={tiny_model_dir}",
         "train.score.judge=nope"]
    )  # fmt: skip
    out = capsys.readouterr()
    out = out.out + out.err
    assert code == 2
    for stage in ("generate", "judge", "build"):
        assert f"{stage}: not part of this run" in out
    assert not (tmp_path / "run" / "generate").exists()


def test_eval_of_a_score_run_asks_with_the_score_instruction(tmp_path, tiny_model_dir):
    from cluster.config import load_config
    from cluster.stages import STAGES
    from datagen.config import REVIEW_PROMPTS

    cfg = load_config(ROOT / "configs/score_quickstart.yaml", [f"run_dir={tmp_path}", f"model={tiny_model_dir}"])
    plan = STAGES["eval"].prepare(cfg)
    assert plan.models[0].generate.cfg.review_text() == REVIEW_PROMPTS["score"]
