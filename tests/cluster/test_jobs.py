"""`selfcorrect submit` against a real `ray start --head` cluster: exit codes, the printed id and
dashboard URL, followed logs, resubmission, and API keys kept out of what Ray stores."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from head_node import job_client

from cluster.cli import main
from cluster.jobs import entrypoint, key_variables, next_submission, short_message, submission_id, submit_job

ROOT = Path(__file__).parents[2]
CONFIG = "configs/quickstart.yaml"
SECRET = "sk-planted-0123456789abcdef"


def sample_metrics() -> dict:
    spec = importlib.util.spec_from_file_location("report_metrics", ROOT / "tests" / "rl" / "report_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sample_metrics()


def test_next_submission_follows_an_active_job_else_takes_the_next_suffix():
    assert next_submission("r", {}) == ("r", False)
    assert next_submission("r", {"r": "PENDING"}) == ("r", True)
    assert next_submission("r", {"r": "SUCCEEDED"}) == ("r-2", False)
    assert next_submission("r", {"r": "FAILED", "r-2": "STOPPED", "r-3": "RUNNING"}) == ("r-3", True)
    assert next_submission("r", {"r": "FAILED", "r-7": "FAILED", "r-x": "RUNNING", "rr": "RUNNING"}) == ("r-8", False)


def test_submission_id_is_the_runs_own():
    a = submission_id("/data/runs/scl 1", "run")
    assert a == submission_id("/data/runs/scl 1", "run") and a.startswith("selfcorrect-scl-1-") and a.endswith("-run")
    assert a != submission_id("/other/runs/scl 1", "run") and a != submission_id("/data/runs/scl 1", "train")


def test_key_variables_and_entrypoint_carry_names_only():
    tree = {"judges": {"gpt": {"api_key_env": "MY_KEY"}}, "generate": {"teacher": {"api_key_env": "T_KEY"}}}
    assert key_variables(tree) == {"judges.gpt.api_key_env": "MY_KEY", "generate.teacher.api_key_env": "T_KEY"}
    command = entrypoint("train", "configs/a b.yaml", ["x=1 2"])
    assert command == "python -m cluster.cli train 'configs/a b.yaml' 'x=1 2'"
    until = entrypoint("run", "configs/a.yaml", ["x=1"], until="build")
    assert until == "python -m cluster.cli run --until build configs/a.yaml x=1"


def test_short_message_leaves_out_the_logs_copy():
    message = "Job entrypoint command failed with exit code 2, last available logs (truncated to 20,000 chars):\nx\n"
    assert short_message(message) == "Job entrypoint command failed with exit code 2"
    assert short_message(None) == ""


class DroppingJobServer:
    """A job server whose first ``drops`` requests lose their connection (the one a real head sometimes
    drops under load cannot be caused on demand), after which it keeps jobs by id as Ray's does."""

    def __init__(self, drops: int, arrives: bool):
        self.drops, self.arrives, self.jobs = drops, arrives, []

    def submit_job(self, submission_id: str, **job):
        if submission_id in self.jobs:
            raise RuntimeError(f"Request failed with status code 400: Job with submission_id {submission_id} "
                               "already exists. Please use a different submission_id.")
        if self.drops:
            self.drops -= 1
            if self.arrives:  # the request got through; its answer was lost
                self.jobs.append(submission_id)
            raise requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed "
                                           "connection without response'))")
        self.jobs.append(submission_id)


@pytest.mark.parametrize("arrives", [False, True])
def test_a_dropped_connection_is_tried_again_and_never_submits_twice(monkeypatch, arrives):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server = DroppingJobServer(drops=2, arrives=arrives)
    assert submit_job(server, "run-1", {"entrypoint": "x"}) is True
    assert server.jobs == ["run-1"]
    # someone else's job of the same id, with no drop: not ours
    assert submit_job(server, "run-1", {"entrypoint": "x"}) is False
    with pytest.raises(requests.ConnectionError):
        submit_job(DroppingJobServer(drops=9, arrives=False), "run-2", {"entrypoint": "x"})


def test_submit_follow_resubmit(ray_head_module, tmp_path, monkeypatch, capsys):
    url = ray_head_module
    client = job_client(url)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SC_PLANTED_KEY", SECRET)
    monkeypatch.delenv("SC_MISSING_KEY", raising=False)
    overrides = [
        f"run_dir={run_dir}", "judges.openai.api_key_env=SC_PLANTED_KEY",
        "judges.api2.type=openai", "judges.api2.api_key_env=SC_MISSING_KEY",
    ]
    args = ["--stage", "report", "--address", url, "--working-dir", str(ROOT), CONFIG, *overrides]

    # a bad config: refused here, nothing submitted
    assert main(["submit", *args, "generate.n=0"]) == 2
    assert "generate.n" in capsys.readouterr().err
    assert main(["submit", "--until", "build", *args]) == 2  # --until stops a run, not the report
    assert "--until build stops a run: it goes with --stage run, not --stage report" in capsys.readouterr().err
    assert client.list_jobs() == []

    # the report of a run with no eval yet: the job fails, and so does the command
    first = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", *args], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = submission_id(str(run_dir), "report")
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert f"submit: submitted {base}\n" in first.stdout
    assert f"submit: dashboard: {url}/#/jobs/{base}" in first.stdout
    assert "metrics.json" in first.stdout  # the job's own log, followed
    assert first.stdout.rstrip().endswith(f"submit: {base} failed: Job entrypoint command failed with exit code 2")
    assert "SC_MISSING_KEY, which is not set here" in first.stderr and "SC_PLANTED_KEY," not in first.stderr

    # status, asked about the run's jobs, names the failed one
    capsys.readouterr()
    assert main(["status", "--address", url, CONFIG, *overrides]) == 0
    assert f"last job: {base} FAILED: " in capsys.readouterr().out

    # with the eval's metrics in place, a resubmitted run gets a new job; a second submit while
    # that one is pending or running follows it instead of starting another
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval" / "metrics.json").write_text(json.dumps(sample_metrics()))
    assert main(["submit", *args, "--no-wait"]) == 0
    assert main(["submit", *args, "seed=7"]) == 0  # the run's job is followed, though its command differs
    out = capsys.readouterr().out
    assert f"submit: submitted {base}-2 " in out
    assert f"submit: {base}-2 is already" in out and "following it" in out
    followed = entrypoint("report", CONFIG, overrides)  # the --no-wait submit's, without seed=7
    assert f"following it instead of submitting the run twice (it runs `{followed}`)" in out
    assert f"report: {run_dir / 'report' / 'report.html'}" in out  # the job's log, followed
    assert out.rstrip().endswith(f"submit: {base}-2 succeeded")
    assert (run_dir / "report" / "report.html").exists()

    jobs = {j.submission_id: j for j in client.list_jobs()}
    assert sorted(jobs) == [base, f"{base}-2"]
    assert [str(jobs[s].status) for s in sorted(jobs)] == ["FAILED", "SUCCEEDED"]
    for job in jobs.values():
        stored = json.dumps([job.entrypoint, job.runtime_env, job.metadata])
        assert SECRET not in stored and "SC_PLANTED_KEY" in job.entrypoint
        assert job.metadata["selfcorrect_run_dir"] == str(run_dir)
