"""The command's terminal: progress bars and summary lines only; everything the libraries and their
processes print goes to RUN_DIR/logs/ — unless -v. On real runs: the quiet terminal of every stage is
tests/cluster/test_run_cli.py's, -v tests/datagen/test_generate_cli.py's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cluster.console import summarize

ROOT = Path(__file__).parents[2]


def _run(argv: list[str], timeout: int) -> tuple[int, str, str]:
    """Run and decode without universal newlines: a bar redrawn with carriage returns stays one line."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=_env())
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_everything_but_the_console_goes_to_the_log(tmp_path):
    script = tmp_path / "noisy.py"
    script.write_text(
        textwrap.dedent(f"""
        import logging, os, subprocess, sys, warnings
        from pathlib import Path
        from cluster.console import Console
        from datagen import progress

        console = Console()
        console.capture()
        print("library stdout")
        print("library stderr", file=sys.stderr)
        warnings.warn("a library WARNING")
        logging.getLogger("lib").warning("a logging WARNING")
        os.write(2, b"C-level write\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('child', file=sys.stderr)"])
        console.settle(Path({str(tmp_path)!r}) / "logs")
        with progress.bar(total=2, desc="stage", unit="shard") as bar:
            bar.update(2)
        progress.set_stage("eval")  # a stage that runs another stage's code: both names on its bar
        with progress.bar(total=1, desc="generate") as bar:
            bar.update(1)
        progress.set_stage(None)
        console.say("stage: done")
        raise_later = "after settle"
        print(raise_later, file=sys.stderr)
        console.release()
        print("back on the terminal", file=sys.stderr)
    """)
    )
    code, out, err = _run([sys.executable, str(script)], 120)
    assert code == 0, err
    lines = err.split("\n")
    assert lines[0].startswith("\rstage:") and "2/2" in lines[0]
    assert lines[1].startswith("\reval generate:") and "1/1" in lines[1]
    assert lines[2:] == ["stage: done", "back on the terminal", ""]
    assert out == ""
    log = (tmp_path / "logs" / "driver.log").read_text()
    for text in ("library stdout", "library stderr", "a library WARNING", "a logging WARNING", "C-level write",
                 "child", "after settle"):
        assert text in log, text
    assert "back on the terminal" not in log


def test_summary_lines():
    line = summarize("generate", {"prompts": 16, "samples": 64, "generated_tokens": 12345,
                                  "tokens_per_s_this_run": 41.2, "wall_seconds_this_run": 299.6})
    assert line == "generate: 16 prompts -> 64 samples, 12,345 tokens (41 tokens/s), 300 s"
    assert summarize("build", {"builder": "scl", "kind": "pairs", "rows_in": 64, "pairs_out": 9, "prompts_out": 6,
                               "dropped": {"both_wrong": 40, "both_correct": 15, "x": 0}}) == (
        "build: scl, 64 rows -> 9 pairs (6 prompts); dropped both_wrong 40, both_correct 15"
    )
    assert summarize("build", {"builder": "scl", "kind": "pairs", "rows_in": 64, "pairs_out": 9, "prompts_in": 16,
                               "prompts_out": 6, "dropped": {}}) == "build: scl, 64 rows -> 9 pairs (6 of 16 prompts)"
    filtered = {"prompts": 16, "samples": 64, "generated_tokens": 100, "wall_seconds_this_run": 9,
                "prompt_selection": {"kept": 16, "too_easy": 3, "too_hard": 7, "unmeasured": 0}}
    assert summarize("generate", filtered).endswith("; pass rate filter left out too_easy 3, too_hard 7")
    calibrated = {"seconds": 61, "table": "level ...", "calibration": "c.json", "pass_rates": "p.jsonl"}
    assert summarize("calibrate", calibrated) == "calibrate: 61 s\n\nlevel ...\n\ncalibrate: c.json, p.jsonl"
    assert summarize("eval", {"seconds": 80.4, "models": {"base": {"problems": 40}, "trained": {"problems": 40}}}) == (
        "eval: base, trained on 40 problems each, 80 s"
    )
    # a stage without a summary of its own, or a summary of another shape: its scalar fields
    assert summarize("eval", {"models": 2, "seconds": 12.3456, "x": [1]}) == "eval: models 2, seconds 12.3"
    assert summarize("export", {"pairs": 3, "path": "/x"}) == "export: pairs 3, path /x"
    assert summarize("train", {"steps": 3}) == "train: steps 3"
