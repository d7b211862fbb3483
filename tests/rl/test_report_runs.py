"""The report of a run that evaluates other runs' models: one row per model with how its run made it and
what that cost, read from run directories laid out by the stages' own writers, and each run's curves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from report_metrics import md_tables, model, sample_metrics

from cluster.cli import _write_config
from cluster.config import load_config
from datagen.shards import StageDir
from rl.build import summarize
from rl.builders import BuildResult
from rl.raytrain import append_line, write_step_metrics
from rl.report import read_run, read_train_log, write_report
from rl.report_plots import plot_training
from rl.report_runs import draw, runs_table

PNG = b"\x89PNG\r\n\x1a\n"
HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECTION = "## How each model was trained"


def done(stage: Path, summary: dict) -> None:
    """A stage started (its fingerprint written) and finished with ``summary``, as each stage ends."""
    out = StageDir(stage)
    out.start({"stage": stage.name})
    out.mark_done(summary)


def _data_stages(run: Path, prompts: int, samples: int, builder: str, kind: str, pairs: int) -> None:
    """generate, judge and build done, with the summaries their stages write."""
    done(run / "generate", {
        "prompts": prompts, "samples": samples, "shards": 2, "shards_this_run": 2, "generated_tokens": 9000,
        "tokens_this_run": 9000, "wall_seconds_this_run": 120.5, "tokens_per_s_this_run": 74.7,
        "engine_tokens_per_s": 80.1,
    })  # fmt: skip
    done(run / "judge", {
        "rows": samples, "shards": 2, "shards_this_run": 2, "wall_seconds_this_run": 30.2,
        "judges": {"verifier": {"rows_flagged": 0}},
    })  # fmt: skip
    rows = [{"prompt_id": f"p{i % prompts}", "sample_idx": i // prompts} for i in range(samples)]
    examples = [{"prompt_id": f"p{i}", "pair_id": f"x{i}"} for i in range(pairs)]
    result = BuildResult(kind, examples, dropped=Counter(no_flip=samples - pairs))  # type: ignore[arg-type]
    done(run / "build", summarize(result, builder, rows, 0.8))


def _dpo_train(run: Path, steps: int, pairs: int, dropped: int, seconds: float, sft: dict | None = None) -> None:
    """train/_SUCCESS.json as ``rl.train.run_train`` writes it, and metrics.jsonl from a TRL log history."""
    history = [
        {"loss": 0.69 - 0.04 * s, "grad_norm": 1.2, "learning_rate": 2e-4, "rewards/chosen": 0.01 * s,
         "rewards/rejected": -0.02 * s, "rewards/accuracies": 0.5 + 0.05 * s, "rewards/margins": 0.03 * s,
         "epoch": s / steps, "step": s}
        for s in range(1, steps + 1)
    ] + [{"train_runtime": seconds, "train_loss": 0.6, "epoch": 1.0, "step": steps}]  # fmt: skip
    (run / "train").mkdir(parents=True, exist_ok=True)
    write_step_metrics(history, run / "train" / "metrics.jsonl")
    summary = {
        "algorithm": "dpo", "steps": steps, "pairs": pairs,
        "data": {"examples": pairs - dropped, "too_long_dropped": dropped, "longest_tokens": 600, "max_length": 512},
        "seconds": seconds, "dtype": "bfloat16", "model": str(run / "train" / "model"),
        "adapter": str(run / "train" / "adapter"),
    }  # fmt: skip
    if sft is not None:
        summary["sft_first"] = {**sft, "model": str(run / "train" / "sft" / "model")}
    done(run / "train", summary)


def dpo_run(root: Path, config: str, builder: str, kind: str, sft: dict | None = None) -> Path:
    run = root / Path(config).stem
    _write_config(load_config(Path(config), [f"run_dir={run}"]))
    _data_stages(run, prompts=128, samples=512, builder=builder, kind=kind, pairs=412)
    _dpo_train(run, steps=5, pairs=412, dropped=3, seconds=300.0, sft=sft)
    return run


def score_run(root: Path) -> Path:
    """A SCoRe run: no data stages; metrics.jsonl appended a line per step as its loop does."""
    run = root / "score"
    _write_config(load_config(Path("configs/score_quickstart.yaml"), [f"run_dir={run}"]))
    (run / "train").mkdir()
    for s in range(1, 7):
        append_line(run / "train" / "metrics.jsonl", {
            "step": s, "stage": 1 if s <= 2 else 2, "reward_t1": 0.3, "reward_t2": 0.3 + 0.02 * s, "delta": 0.02 * s,
            "episodes": 16, "flagged": 0, "pg_loss": -0.1 * s, "kl_t1": 0.001 * s, "kl_t2": 0.002 * s,
            "entropy_t1": 1.1, "entropy_t2": 1.0, "grad_norm": 0.5, "loss": -0.1 * s, "step_seconds": 40.0,
        })  # fmt: skip
    done(run / "train", {
        "algorithm": "score", "steps": 6, "stage1_steps": 2, "stage2_steps": 4, "kept": "last", "kept_step": 6,
        "kept_reward": 0.42, "weight_sync": "nccl", "prompts": 256, "episodes": 96, "flagged": 0,
        "first": {"reward_t1": 0.3, "reward_t2": 0.32}, "last": {"reward_t1": 0.3, "reward_t2": 0.42},
        "seconds": 250.25, "model": str(run / "train" / "model"), "adapter": None,
        "rollouts": str(run / "train" / "rollouts"),
    })  # fmt: skip
    return run


def compare_run(root: Path, models: dict[str, str]) -> Path:
    """The comparison's eval/metrics.json: each model as the eval names it, the trained ones by folder."""
    m = sample_metrics()
    shapes = list(m["models"].values())
    m["models"] = {
        label: model(name, 0.41 + 0.01 * i, 0.42 + 0.02 * i, shapes[0]["transitions"])
        for i, (label, name) in enumerate(models.items())
    }
    m["comparisons"] = [{**c, "model": label} for label in list(models)[1:] for c in m["comparisons"][:1]]
    m["pairwise"] = []
    for entry in m["models"].values():
        entry["selfee_k"] = None  # not a SelFee eval: one plot fewer to draw
    run = root / "compare"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    return run


def section_table(md: str) -> list[list[str]]:
    section = md[md.index(SECTION) : md.index("\n## ", md.index(SECTION) + 1)]
    (table,) = md_tables(section)
    return table


def test_each_trained_model_has_its_runs_method_cost_and_curves(tmp_path):
    scl = dpo_run(tmp_path, "configs/laptop/scl.yaml", "scl", "pairs")
    contrast = dpo_run(tmp_path, "configs/laptop/self_contrast.yaml", "self_contrast", "pairs",
                       sft={"steps": 3, "seconds": 50.0})  # fmt: skip
    score = score_run(tmp_path)
    plain = tmp_path / "plain" / "train" / "model"  # a folder shaped like a run's model, with no run around it
    plain.mkdir(parents=True)
    compare = compare_run(tmp_path, {
        "base": HUB, "scl": str(scl / "train" / "model"), "contrast": str(contrast / "train" / "model"),
        "score": str(score / "train" / "model"), "plain": str(plain),
    })  # fmt: skip

    summary = write_report(compare)
    md = Path(summary["report"]).read_text()
    table = section_table(md)
    assert table[0] == [
        "model", "run", "method", "data", "training set", "optimizer steps", "generate s", "judge s", "build s",
        "train s", "total s", "last training numbers", "notes",
    ]  # fmt: skip
    rows = {r[0]: r for r in table[1:]}
    assert list(rows) == ["scl", "contrast", "score"]  # metrics.json's order; the hub model and the folder: none
    assert rows["scl"][1:11] == [
        str(scl), "dpo", "two_attempt → scl", "409 pairs (3 too long, left out)", "5", "120.5", "30.2", "0.8",
        "300.0", "451.5",
    ]  # fmt: skip
    assert rows["scl"][11].startswith("5 logged steps, last step 5; final loss 0.49;")
    assert "final rewards/margins 0.15" in rows["scl"][11] and rows["scl"][12] == "–"
    assert rows["contrast"][2:11] == [
        "dpo after SFT", "single → self_contrast", "409 pairs (3 too long, left out)", "5 + 3 SFT", "120.5", "30.2",
        "0.8", "350.0", "501.5",
    ]  # fmt: skip
    assert rows["score"][1:11] == [
        str(score), "score", "on-policy rollouts", "96 episodes on 256 prompts", "6 (stage I 2, stage II 4)",
        "–", "–", "–", "250.2", "250.2",
    ]  # fmt: skip
    assert "final reward_t2 0.42; final delta 0.12; final kl_t1 0.006; final kl_t2 0.012." in rows["score"][11]

    for label in ("scl", "contrast", "score"):
        name = f"training-{label}.png"
        assert name in summary["plots"] and (compare / "report" / name).read_bytes().startswith(PNG)
        assert f"### Training of {label}\n\n![Training of {label} per optimizer step]({name})" in md
    untitled = plot_training(read_train_log(score / "train" / "metrics.jsonl"))
    assert (compare / "report" / "training-score.png").read_bytes() != untitled  # titled with its label
    assert "training-base.png" not in summary["plots"] and "training-plain.png" not in summary["plots"]
    assert md.index(SECTION) < md.index("## Eval speed")
    assert "This run trained no model of its own" in md
    html = (compare / "report" / "report.html").read_text()
    assert "<h2>How each model was trained</h2>" in html and "<td>96 episodes on 256 prompts</td>" in html


def test_unreadable_files_of_a_run_are_noted_in_its_row(tmp_path):
    scl = dpo_run(tmp_path, "configs/laptop/scl.yaml", "scl", "pairs")
    score = score_run(tmp_path)
    (scl / "train" / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage\n{not json")  # cut and corrupted
    (score / "config.yaml").write_text("train: [algorithm: score\n")
    (score / "train" / "_SUCCESS.json").write_text('{"algorithm": "sc')
    compare = compare_run(tmp_path, {"base": HUB, "scl": str(scl / "train" / "model"),
                                     "score": str(score / "train" / "model")})  # fmt: skip
    (compare / "report").mkdir()
    (compare / "report" / "training-gone.png").write_bytes(PNG)  # drawn by an earlier report: a model since dropped

    summary = write_report(compare)
    md = Path(summary["report"]).read_text()
    rows = {r[0]: r for r in section_table(md)[1:]}
    assert rows["scl"][5:11] == ["5", "120.5", "30.2", "0.8", "300.0", "451.5"]  # the rest of the run is there
    assert rows["scl"][11] == "–" and rows["scl"][12].startswith("train/metrics.jsonl unreadable (UnicodeDecodeError")
    notes = rows["score"][12]
    assert "config.yaml unreadable (ParserError" in notes and "train/_SUCCESS.json unreadable (JSONDecodeError" in notes
    assert rows["score"][2] == "–" and rows["score"][10] == "–"  # neither the algorithm nor a time: not guessed
    assert "final reward_t2 0.42" in rows["score"][11]  # its training log still reads
    assert sorted(n for n in summary["plots"] if n.startswith("training-")) == ["training-score.png"]
    assert not (compare / "report" / "training-gone.png").exists()


def test_a_run_whose_own_model_is_evaluated_shows_no_such_section(tmp_path):
    """A run's own trained model is described by its own sections (Training, Data, Wall time)."""
    run = dpo_run(tmp_path, "configs/laptop/scl.yaml", "scl", "pairs")
    m = sample_metrics()
    m["models"]["base"]["model"], m["models"]["trained"]["model"] = HUB, str(run / "train" / "model")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(m))
    summary = write_report(run)
    md = Path(summary["report"]).read_text()
    assert SECTION not in md and "## Wall time" in md and "training.png" in summary["plots"]


def test_runs_on_object_storage_read_as_the_same_runs_on_disk(s3, tmp_path):
    from s3_server import BUCKET

    from datagen import storage
    from datagen.storage import ObjectPath

    local = {"scl": dpo_run(tmp_path, "configs/laptop/scl.yaml", "scl", "pairs"), "score": score_run(tmp_path)}
    uris = {k: f"s3://{BUCKET}/compare/{k}" for k in local}
    for k, run in local.items():
        storage.upload_folder(run, ObjectPath(uris[k]))
    on_disk = read_run(compare_run(tmp_path, {"base": HUB, **{k: f"{v}/train/model" for k, v in local.items()}}))
    remote = read_run(compare_run(tmp_path / "s3", {"base": HUB, **{k: f"{u}/train/model" for k, u in uris.items()}}))
    rows, disk_rows = runs_table(remote.trained_runs).rows, runs_table(on_disk.trained_runs).rows
    assert [r[:2] for r in rows] == [["scl", uris["scl"]], ["score", uris["score"]]]
    assert [r[2:] for r in rows] == [r[2:] for r in disk_rows] and rows[0][10] == "451.5"
    pngs, _ = draw(remote.trained_runs)
    assert sorted(pngs) == ["training-scl.png", "training-score.png"]
