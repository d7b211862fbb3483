"""``selfcorrect submit``: a run, or one stage of it, as a Ray job on a cluster.

The config is checked here first (a bad one is refused with exit 2 and nothing is submitted);
the working directory travels in the job's ``runtime_env`` and the job runs
``python -m cluster.cli STAGE CONFIG KEY=VALUE...`` on the cluster. Ray keeps a job's entrypoint,
runtime_env and metadata as plain text, so API keys never go there: the config names each key's
environment variable (``api_key_env``) and the nodes' environment provides it.

A run's submission id is derived from its run directory and stage, so a resubmitted run is
recognised: while its job is still pending or running, this follows it instead of starting a
second one; once that job has ended, a new one gets the next suffix (``-2``, ``-3``, ...) and the
run resumes from what its run directory holds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cluster.config import Config, ConfigError, load_config, parse_overrides
from cluster.stages import RUN_STAGES, STAGES

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded with the working directory: environments, run outputs, history and caches.
EXCLUDES = [
    ".venv", "venv", "runs/", ".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".mypy_cache",
    "*.egg-info", "/build/", "/dist/",
]
ACTIVE = {"PENDING", "RUNNING"}
METADATA_PREFIX = "selfcorrect_"


class SubmitError(ConfigError):
    """The job cannot be submitted as asked (exit 2, nothing submitted)."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="run CONFIG (or one stage of it) as a Ray job on a cluster and follow its logs",
        description="Check CONFIG here, upload the working directory and run `selfcorrect STAGE CONFIG "
        "KEY=VALUE...` as a Ray job; follow its logs and exit with its result (0 succeeded, 1 failed "
        "or stopped). Resubmitting a run follows its job while that runs, else starts a new one that "
        "resumes from run_dir. API keys are never sent: the cluster's nodes must have the variables "
        "the config's api_key_env keys name.",
    )
    p.add_argument("config", help="YAML config file, inside the working directory")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, YAML values")
    p.add_argument("--address", help=f"the Ray dashboard (job server) URL; default RAY_ADDRESS, else {DEFAULT_ADDRESS}")
    p.add_argument("--stage", default="run", choices=["run", *STAGES], help="what the job runs (default: run)")
    p.add_argument("--until", metavar="STAGE", choices=RUN_STAGES,
                   help=f"with --stage run: stop after this stage ({', '.join(RUN_STAGES)})")
    p.add_argument("--no-wait", action="store_true", help="submit and return without following the logs")
    p.add_argument("--working-dir", default=".", help="the directory uploaded as the job's code (default: .)")
    p.set_defaults(handler=submit_command)


# --- pure parts --------------------------------------------------------------------------------------


def run_prefix(run_dir: str) -> str:
    """The start of every submission id of the run in ``run_dir``: its folder name and a hash of its path."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(run_dir).name).strip("-")[:40] or "run"
    return f"selfcorrect-{slug}-{hashlib.sha256(run_dir.encode()).hexdigest()[:8]}-"


def submission_id(run_dir: str, stage: str) -> str:
    return f"{run_prefix(run_dir)}{stage}"


def next_submission(base: str, jobs: dict[str, str]) -> tuple[str, bool]:
    """``(id, follow)``: the job of run ``base`` to follow (one still pending or running), or a new id.

    ``jobs`` maps submission ids to statuses. A finished ``base`` is followed by ``base-2``, ``base-3``...

    >>> next_submission("r", {"r": "FAILED", "r-2": "RUNNING"})
    ('r-2', True)
    >>> next_submission("r", {"r": "FAILED", "r-2": "STOPPED", "other": "RUNNING"})
    ('r-3', False)
    """
    ours = {}
    for sid, status in jobs.items():
        if sid == base:
            ours[1] = (sid, status)
        elif sid.startswith(base + "-") and sid[len(base) + 1 :].isdigit():
            ours[int(sid[len(base) + 1 :])] = (sid, status)
    for n in sorted(ours, reverse=True):
        if ours[n][1] in ACTIVE:
            return ours[n][0], True
    if not ours:
        return base, False
    return f"{base}-{max(ours) + 1}", False


def key_variables(tree: Any, path: str = "") -> dict[str, str]:
    """Every ``api_key_env`` in a config dump, by dotted key: the NAMES of the variables that hold keys."""
    found: dict[str, str] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{path}.{k}" if path else str(k)
            if k == "api_key_env" and isinstance(v, str):
                found[key] = v
            else:
                found.update(key_variables(v, key))
    return found


def entrypoint(stage: str, config: str, overrides: list[str], until: str | None = None) -> str:
    flags = ["--until", until] if until else []
    return shlex.join(["python", "-m", "cluster.cli", stage, *flags, config, *overrides])


def _raw_run_dir(config: Path, overrides: list[str]) -> str | None:
    """run_dir as the user wrote it (the loaded config has it made absolute against this machine's cwd)."""
    value = parse_overrides(overrides).get("run_dir")
    if value is None:
        try:
            value = (yaml.safe_load(config.read_text()) or {}).get("run_dir")
        except (OSError, yaml.YAMLError, AttributeError):
            value = None
    return None if value is None else str(value)


# --- the command -----------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"submit: {text}", flush=True)


def client(address: str) -> Any:
    """The job server's client. A token in RAY_AUTH_TOKEN is sent whatever this process's Ray settings."""
    from ray.job_submission import JobSubmissionClient

    token = os.environ.get("RAY_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as e:  # connection refused, a 401/403, a bad URL: all said by Ray's message
        raise SubmitError(f"cannot reach the Ray job server at {address}: {str(e).splitlines()[0][:300]}") from None


def prepare(args: argparse.Namespace) -> tuple[Config, dict[str, Any]]:
    """Check everything that can be checked here; return the config and ``submit_job``'s arguments."""
    cfg = load_config(args.config, args.overrides)
    if args.until and args.stage != "run":
        raise SubmitError(f"--until {args.until} stops a run: it goes with --stage run, not --stage {args.stage}")
    workdir = Path(args.working_dir).resolve()
    if not workdir.is_dir():
        raise SubmitError(f"--working-dir {args.working_dir}: not a directory")
    config = Path(args.config).resolve()
    if not config.is_relative_to(workdir):
        raise SubmitError(f"{args.config} is outside the working directory {workdir}: the job could not read it")
    if not (workdir / "cluster" / "cli.py").exists():
        raise SubmitError(f"--working-dir {workdir} does not hold this project (cluster/cli.py)")
    rel = config.relative_to(workdir).as_posix()
    raw = _raw_run_dir(config, args.overrides)
    if raw is None or not Path(raw).expanduser().is_absolute():
        print(
            f"submit: warning: run_dir {raw or '(default) ' + cfg.run_dir} is relative: on the cluster it lands in "
            "the job's unpacked working directory; give an absolute path on storage every node mounts",
            file=sys.stderr,
        )
    for key, name in key_variables(cfg.model_dump(mode="json")).items():
        if name not in os.environ:
            print(f"submit: warning: {key} names {name}, which is not set here: the cluster's nodes must have it",
                  file=sys.stderr)
    job = {
        "entrypoint": entrypoint(args.stage, rel, args.overrides, args.until),
        "runtime_env": {"working_dir": str(workdir), "excludes": EXCLUDES},
        "metadata": {
            f"{METADATA_PREFIX}run_dir": cfg.run_dir,
            f"{METADATA_PREFIX}stage": args.stage,
            f"{METADATA_PREFIX}config": rel,
        },
    }
    return cfg, job


def _quiet_ray() -> None:
    """Ray's lines about packaging the working directory (one per ignored file, and that it leaves .git out,
    as asked) say nothing the lines printed here do not."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


def submit_command(args: argparse.Namespace) -> int:
    import requests

    try:
        cfg, job = prepare(args)
        address = args.address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
        jobs = client(address)
        _quiet_ray()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = submission_id(cfg.run_dir, args.stage)
    try:
        listed = {j.submission_id: j for j in jobs.list_jobs() if j.submission_id}
        known = {sid: str(j.status) for sid, j in listed.items()}
        sid, follow = next_submission(base, known)
        if follow:
            # the run's job may run another command (other overrides, or --until): say so, as it is not ours
            theirs = listed[sid].entrypoint
            differs = f" (it runs `{theirs}`)" if theirs != job["entrypoint"] else ""
            _say(f"{sid} is already {known[sid].lower()}: following it instead of submitting the run twice{differs}")
        else:
            _say(f"uploading {job['runtime_env']['working_dir']} and submitting `{job['entrypoint']}`")
            if not submit_job(jobs, sid, job):
                _say(f"{sid} was submitted a moment ago from elsewhere: following it")
            else:
                _say(f"submitted {sid}" + (f" (earlier jobs of this run ended; it resumes from {cfg.run_dir})"
                                           if sid != base else ""))
    except RuntimeError as e:
        print(f"error: the job server at {address} refused: {str(e).strip()[:500]}", file=sys.stderr)
        return 1
    except requests.ConnectionError as e:
        print(f"error: lost the connection to the job server at {address}: {str(e)[:300]}", file=sys.stderr)
        return 1
    _say(f"dashboard: {jobs.get_address()}/#/jobs/{sid}")
    if args.no_wait:
        _say(f"not following; `{shlex.join(['selfcorrect', 'status', args.config, *args.overrides])}` "
             "or the dashboard shows its progress")
        return 0
    try:
        return follow_job(jobs, sid)
    except KeyboardInterrupt:
        _say(f"stopped following; the job goes on (`ray job stop {sid} --address {address}` stops it)")
        return 130


def submit_job(jobs: Any, sid: str, job: dict[str, Any], wait_s: float = 120, tries: int = 4) -> bool:
    """Submit; False when a job with this id appeared meanwhile (a second submit of the run, racing).

    Waits while a cluster that has just started has no job agent up yet (Ray says "try again"), and
    tries again when the connection drops mid-request (a busy dashboard, or a kept-alive connection the
    server had closed): the id is the run's own, so a request that did arrive is found, not doubled.
    """
    import requests

    deadline = time.monotonic() + wait_s
    dropped = 0
    while True:
        try:
            jobs.submit_job(submission_id=sid, **job)
            return True
        except requests.ConnectionError:
            dropped += 1
            if dropped >= tries:
                raise
            time.sleep(min(2**dropped, 10))
        except RuntimeError as e:
            if "already exists" in str(e):
                # after a dropped connection: the lost request had got through, and the job is ours
                return dropped > 0
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def short_message(message: str | None) -> str:
    """Ray's message about a job without the copy of its last logs it appends (they were just printed)."""
    first = (message or "").strip().split("\n", 1)[0]
    return first.split(", last available logs", 1)[0][:300]


def follow_job(jobs: Any, sid: str, out: Any = None) -> int:
    """Print the job's logs as they come; 0 when it succeeded, 1 when it failed or was stopped."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(sid):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log stream broke off: the status below still tells the result
        _say(f"lost the log stream ({e}); waiting for the job to end")
    while not (info := jobs.get_job_info(sid)).status.is_terminal():
        time.sleep(2)
    status = str(info.status)
    _say(f"{sid} {status.lower()}" + (f": {short_message(info.message)}" if status != "SUCCEEDED" else ""))
    return 0 if status == "SUCCEEDED" else 1
