"""What the ``selfcorrect`` command shows: a progress bar and one line per stage; the rest goes to a log.

Ray, vLLM, transformers and their worker processes print hundreds of lines (warnings, engine
start-up, shutdown tracebacks) that say nothing about the run's outcome. Unless ``-v`` is given,
the command points its own file descriptors 1 and 2 at ``RUN_DIR/logs/driver.log`` — which catches
Python ``logging``, ``warnings``, C-level prints and any child process that inherits them — and
keeps a duplicate of the terminal for the progress bars (``datagen.progress``) and the summary
lines printed here. Ray's worker output is not forwarded to the driver then; the Ray session's
log files are copied into ``RUN_DIR/logs/ray/`` at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from datagen import progress

LOG_DIR = "logs"
DRIVER_LOG = "driver.log"


class Console:
    """The terminal of one command, and (quiet mode) the redirection of everything else to a log."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.term: TextIO = sys.stderr
        self.log_dir: Path | None = None  # set once the run directory holds the log
        self._log_path: Path | None = None
        self._saved: dict[int, int] = {}

    @property
    def driver_log(self) -> Path | None:
        """Where the libraries' output is going: the run's log once settled, a temporary file before."""
        return self._log_path

    def capture(self) -> None:
        """From now on, send this process's stdout and stderr to a log file (not with -v).

        The file is a temporary one until ``settle`` moves it into the run directory: a command
        refused for bad input leaves no run directory behind.
        """
        if self.verbose or self._saved:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if _is_fd(sys.stderr, 2):
            # The terminal lives on as a duplicate of fd 2; otherwise (a test capturing sys.stderr)
            # the summaries keep going to whatever sys.stderr is.
            self.term = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        fd, path = tempfile.mkstemp(prefix="selfcorrect-", suffix=".log")
        self._log_path = Path(path)
        for target in (1, 2):
            self._saved[target] = os.dup(target)
        self._point_at(fd)
        progress.set_stream(self.term)

    def settle(self, log_dir: Path) -> None:
        """Move the log to ``log_dir/driver.log`` (appending to an earlier run's) and keep writing there."""
        self.log_dir = log_dir
        if not self._saved or self._log_path == log_dir / DRIVER_LOG:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        fd = os.open(log_dir / DRIVER_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        assert self._log_path is not None
        os.write(fd, self._log_path.read_bytes())
        self._point_at(fd)
        self._log_path.unlink(missing_ok=True)
        self._log_path = log_dir / DRIVER_LOG

    def _point_at(self, fd: int) -> None:
        for target in (1, 2):
            os.dup2(fd, target)
        os.close(fd)

    def release(self, keep_log: bool = False, restore: bool = True) -> None:
        """Give fds 1 and 2 back to the terminal; a log never settled is deleted unless ``keep_log``.

        ``restore=False`` only deletes that log: the process is about to exit, and what the
        libraries print at exit still goes to the log (or nowhere, once deleted).
        """
        if self._log_path is not None and self.log_dir is None and not keep_log:
            self._log_path.unlink(missing_ok=True)
        if not self._saved or not restore:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        progress.set_stream(None)
        if self.term is not sys.stderr:
            self.term.close()
            self.term = sys.stderr

    def say(self, text: str) -> None:
        print(text, file=self.term, flush=True)

    def copy_ray_logs(self, logs_dir: str | None) -> None:
        """Copy the Ray session's log files (every worker's stdout/stderr) into ``RUN_DIR/logs/ray``."""
        if self.log_dir is None or not logs_dir or not Path(logs_dir).is_dir():
            return
        dst = self.log_dir / "ray" / Path(logs_dir).parent.name
        shutil.copytree(logs_dir, dst, dirs_exist_ok=True, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns("*.sock"))


def _is_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False


# --- one line per stage --------------------------------------------------------------------------


def _s(x: Any) -> str:
    return f"{x:.0f} s" if isinstance(x, (int, float)) else "?"


def _generate(s: dict[str, Any]) -> str:
    rate = s.get("tokens_per_s_this_run")
    speed = f" ({rate:.0f} tokens/s)" if rate else ""
    dtype = f", {s['dtype']}" if s.get("dtype") else ""
    left_out = ", ".join(f"{k} {v}" for k, v in (s.get("prompt_selection") or {}).items() if k != "kept" and v)
    left_out = f"; pass rate filter left out {left_out}" if left_out else ""
    return (f"generate: {s['prompts']} prompts -> {s['samples']} samples, {s['generated_tokens']:,} tokens{speed}, "
            f"{_s(s.get('wall_seconds_this_run'))}{dtype}{left_out}")


def _judge(s: dict[str, Any]) -> str:
    judges = s.get("judges", {})
    flagged = ", ".join(f"{n} {j.get('rows_flagged', 0)}" for n, j in judges.items())
    return (f"judge: {s['rows']} rows judged by {', '.join(judges) or 'no judge'} (flagged: {flagged or 'none'}), "
            f"{_s(s.get('wall_seconds_this_run'))}")


def _build(s: dict[str, Any]) -> str:
    noun = "pairs" if s.get("kind") == "pairs" else "examples"
    dropped = ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items() if v)
    of = f" of {s['prompts_in']}" if "prompts_in" in s else ""
    return (f"build: {s['builder']}, {s['rows_in']} rows -> {s['pairs_out']} {noun} ({s['prompts_out']}{of} prompts)"
            + (f"; dropped {dropped}" if dropped else ""))


def _train(s: dict[str, Any]) -> str:
    dtype = f", {s['dtype']}" if s.get("dtype") else ""
    return (f"train: {s['algorithm']}, {s['steps']} steps on {s['pairs']} pairs, {_s(s.get('seconds'))}{dtype} "
            f"-> {s['model']}")


def _eval(s: dict[str, Any]) -> str:
    models = s["models"]
    problems = sorted({m["problems"] for m in models.values()})
    return f"eval: {', '.join(models)} on {'/'.join(map(str, problems))} problems each, {_s(s['seconds'])}"


def _calibrate(s: dict[str, Any]) -> str:
    return f"calibrate: {_s(s['seconds'])}\n\n{s['table']}\n\ncalibrate: {s['calibration']}, {s['pass_rates']}"


def _report(s: dict[str, Any]) -> str:
    from rl.report import before_after

    table = ""
    metrics = Path(s["html"]).parents[1] / "eval" / "metrics.json"
    if metrics.exists():
        table = "\n" + before_after(json.loads(metrics.read_text())) + "\n\n"
    return f"{table}report: {s['html']} (report.md and the plots beside it)"


SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "generate": _generate,
    "judge": _judge,
    "build": _build,
    "train": _train,
    "eval": _eval,
    "report": _report,
    "calibrate": _calibrate,
}


def summarize(stage: str, summary: dict[str, Any]) -> str:
    """The line printed when ``stage`` finishes; a stage without its own gets its scalar fields."""
    describe = SUMMARIES.get(stage)
    if describe is not None:
        try:
            return describe(summary)
        except (AttributeError, KeyError, TypeError, ValueError):
            pass  # a summary of another shape: the generic line below
    scalars = [
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in summary.items()
        if isinstance(v, (int, float, str))
    ]
    return f"{stage}: {', '.join(scalars)}"
