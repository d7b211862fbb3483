"""``selfcorrect status``: where a run stands, read from its run directory alone (no Ray started).

The run directory may be local or on object storage (``s3://...``): everything is read through
``datagen.storage``; a run on object storage keeps its logs on the local disk of the machine that
drove it, so its last error is found there only.

Each stage is done (``_SUCCESS.json``), partial (shards done of the total, where the total is
known), failed (``_FAILED.json``: the stage raised the last time it ran; its error and the command
that takes it up again), or not started; the last error is the last traceback in
``RUN_DIR/logs/driver.log`` and, given a job server (``--address`` or ``RAY_ADDRESS``), the run's
latest Ray job that failed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.config import Config, ConfigError, load_config
from cluster.console import DRIVER_LOG, LOG_DIR
from cluster.stages import STAGES
from datagen import storage
from datagen.shards import STAGE_FILE, StageDir
from datagen.storage import Location, ObjectPath, as_location, is_uri, local_cache

RESOLVED_CONFIG = "config.yaml"  # what cluster.cli writes beside the stages' output


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show each stage of a run as done, partial, failed or not started, and the last error",
        description="TARGET is a run directory (its config.yaml is read) or a config file with KEY=VALUE overrides.",
    )
    p.add_argument("target", metavar="CONFIG|RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, YAML values")
    p.add_argument("--address", help="a Ray job server to ask about the run's jobs (default: RAY_ADDRESS, if set)")
    p.set_defaults(handler=status_command)


def resolve(target: str, overrides: list[str]) -> Config:
    """The run's config: a run directory's resolved ``config.yaml`` (run_dir set to where it is now), or a file."""
    if is_uri(target):  # a run directory on object storage
        run_dir = as_location(target)
        try:
            text = storage.read_bytes(run_dir / RESOLVED_CONFIG)
        except FileNotFoundError:
            return load_config(None, [f"run_dir={target}", *overrides])
        except OSError as e:
            raise ConfigError(f"{run_dir / RESOLVED_CONFIG}: cannot be read: {e}") from e
        with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
            f.write(text)
            f.flush()
            return load_config(Path(f.name), [f"run_dir={target}", *overrides])
    path = Path(target)
    if path.is_dir():
        resolved = path / RESOLVED_CONFIG
        extra = [f"run_dir={path.resolve()}", *overrides]
        return load_config(resolved if resolved.exists() else None, extra)
    return load_config(path, overrides)


def _shard_state(out: StageDir, total: int | None) -> tuple[str, str]:
    if out.done():
        shards = out.summary().get("shards", total)
        return "done", f"{shards} shards" if shards is not None else ""
    done = len(out.completed_shards())
    if done == 0 and not storage.exists(out.path / STAGE_FILE):
        return "not started", ""
    return "partial", f"{done}/{total if total is not None else '?'} shards"


def generate_total(cfg: Config) -> int | None:
    """Shards of the generate stage: ceil(prompts / generate.shard_size); None when the prompts cannot be read."""
    from datagen.prompts import load_prompts

    try:
        return math.ceil(len(load_prompts(cfg.prompts)) / cfg.generate.shard_size)
    except Exception:  # a prompt file only the cluster sees, say: the total is unknown, not an error here
        return None


def _shard_stage(name: str, total: Callable[[Config], int | None]) -> Callable[[Config], tuple[str, str]]:
    return lambda cfg: _shard_state(StageDir(cfg.stage_dir(name)), total(cfg))


def _generated_shards(cfg: Config) -> int | None:
    gen = StageDir(cfg.stage_dir("generate"))
    return gen.summary().get("shards") if gen.done() else generate_total(cfg)


def _train(cfg: Config) -> tuple[str, str]:
    from rl.train import PROGRESS_FILE, RUN_NAME

    out = StageDir(cfg.stage_dir("train"))
    if out.done():
        s = out.summary()
        return "done", f"{s.get('steps', '?')} steps, model {s.get('model', out.path / 'model')}"
    checkpoints = sorted(n for n in storage.list_names(out.path / RUN_NAME) if n.startswith("checkpoint_"))
    try:  # on object storage the progress file stays beside the driver: none here
        progress = storage.read_json(out.path / PROGRESS_FILE)
    except (OSError, ValueError):
        progress = None
    if not checkpoints and progress is None and not storage.exists(out.path / STAGE_FILE):
        return "not started", ""
    parts = []
    if progress is not None:
        parts.append(f"step {progress.get('step', '?')}/{progress.get('max_steps') or '?'}")
    parts.append(f"{len(checkpoints)} checkpoint(s)" + (f", last {checkpoints[-1]}" if checkpoints else ""))
    return "partial", ", ".join(parts)


def _eval(cfg: Config) -> tuple[str, str]:
    root = cfg.stage_dir("eval")
    if StageDir(root).done():
        models = StageDir(root).summary().get("models", {})
        return "done", f"{', '.join(models)}; metrics {root / 'metrics.json'}"
    labels = sorted(n for n in storage.list_names(root) if storage.exists(root / n / "generate"))
    if not labels:
        return "not started", ""
    parts = []
    for label in labels:
        gen = StageDir(root / label / "generate")
        state, shards = _shard_state(gen, None)
        judge_total = gen.summary().get("shards") if gen.done() else None
        jstate, jshards = _shard_state(StageDir(root / label / "judge"), judge_total)
        parts.append(f"{label}: generate {shards if state == 'partial' else state}, "
                     f"judge {jshards if jstate == 'partial' else jstate}")
    return "partial", "; ".join(parts)


def _report(cfg: Config) -> tuple[str, str]:
    html = cfg.stage_dir("report") / "report.html"
    return ("done", "") if storage.exists(html) else ("not started", "")


def _default(name: str) -> Callable[[Config], tuple[str, str]]:
    def state(cfg: Config) -> tuple[str, str]:
        out = StageDir(cfg.stage_dir(name))
        if out.done():
            return "done", ""
        return ("partial", "") if storage.list_names(out.path) else ("not started", "")

    return state


#: How each stage's progress is read from disk, by stage name; other stages: done or not from _SUCCESS.json.
READERS: dict[str, Callable[[Config], tuple[str, str]]] = {
    "generate": _shard_stage("generate", generate_total),
    "judge": _shard_stage("judge", _generated_shards),
    "train": _train,
    "eval": _eval,
    "report": _report,
}


def stage_states(cfg: Config) -> list[tuple[str, str, str, Location]]:
    """``(stage, state, detail, output path)`` for each stage of a run (and the others that have output)."""
    rows = []
    for name, stage in STAGES.items():
        failure = StageDir(cfg.stage_dir(name)).failure()
        if failure is not None:  # before the readers: a report that failed may still hold an older one
            rows.append((name, "failed", f"{failure.get('error', '?')}; {failure.get('hint', '')}".rstrip("; "),
                         cfg.stage_dir(name)))
            continue
        state, detail = READERS.get(name, _default(name))(cfg)
        skipped = stage.skip_in_run(cfg) if stage.skip_in_run else None
        if skipped and state == "not started":
            state, detail = "skipped", "not part of this run: " + skipped
        if stage.in_run or state != "not started":
            rows.append((name, state, detail, cfg.stage_dir(name)))
    return rows


_TRACEBACK = "Traceback (most recent call last):"
_ERROR_LINE = re.compile(r"^(?:[\w.]+(?:Error|Exception|Interrupt|Exit)\b.*|error: .+)$")


def last_error(log: Path, tail_bytes: int = 2_000_000) -> str | None:
    """The exception line of the last traceback in ``log`` (the last ``error:`` line when there is none)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if line and not line[0].isspace() and _ERROR_LINE.match(line):
                return line[:300]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    return errors[-1][:300] if errors else None


def failed_job(cfg: Config, address: str) -> str | None:
    """The run's latest job, when it failed or was stopped: ``"ID STATUS: message"``."""
    from cluster.jobs import client, run_prefix, short_message

    prefix = run_prefix(cfg.run_dir)
    ours = [j for j in client(address).list_jobs() if (j.submission_id or "").startswith(prefix)]
    if not ours:
        return None
    last = max(ours, key=lambda j: j.start_time or 0)
    if str(last.status) not in {"FAILED", "STOPPED"}:
        return None
    return f"{last.submission_id} {last.status}: {short_message(last.message)}"


def status_command(args: argparse.Namespace) -> int:
    try:
        cfg = resolve(args.target, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = as_location(cfg.run_dir)
    print(f"run {run_dir}" + ("" if storage.list_names(run_dir) else " (does not exist yet)"))
    rows = stage_states(cfg)
    width = max(len(r[0]) for r in rows)
    for name, state, detail, path in rows:
        where = f"  {path}" if state not in ("not started", "skipped") else ""
        print(f"  {name:<{width}}  {state:<11}  {detail}{where}".rstrip())
    unfinished = any(state not in ("done", "skipped") for name, state, _, _ in rows if STAGES[name].in_run)
    log = (local_cache(run_dir, "logs") if isinstance(run_dir, ObjectPath) else run_dir / LOG_DIR) / DRIVER_LOG
    error = last_error(log) if unfinished else None
    if error and not any(state == "failed" and detail.startswith(error) for _, state, detail, _ in rows):
        print(f"last error: {error}\n  (in {log})")
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith("http"):
        try:
            job = failed_job(cfg, address)
        except ConfigError as e:
            job = None
            print(f"(no job information: {e})")
        if job:
            print(f"last job: {job}")
    return 0

