"""SCoRe's Ray Train worker as a recipe: ``setup``, ``resume``, one ``step`` at a time, ``checkpoint``,
``finish`` (``ScoreRecipe``; ``score_loop`` runs it).

Each step, rank 0 collects the step's episodes from the rollout engines (``EpisodeSource``: the step's
prompts in an order fixed by the seed, attempt 1, the correction instruction, attempt 2), checks their
weights version against the trainer's (``max_policy_lag``) and has the judge score both attempts; the
batch goes to every worker, which trains on its share (``rl.score_step.train_step``); rank 0 then sends
the new weights to the engines and starts the next batch (with ``overlap``, the next batch is sampled
during the update, one version behind). Every step's episodes go to ``OUT/rollouts/step-NNNNNN.parquet``
and its numbers to ``OUT/metrics.jsonl``. Every ``checkpoint_every`` steps rank 0 reports a checkpoint
(trainable weights, optimizer, ``TrainState``, the best weights so far) to Ray Train; a restarted
worker group resumes from it, and the engines are re-synced to its weights first, so no step is trained
twice into the final model.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from datagen import storage
from datagen.config import GenerateConfig
from datagen.metrics import record_rl, stage_tags
from datagen.records import Prompt
from datagen.shards import atomic_write_bytes, atomic_write_json
from judges.config import JudgeSettings
from rl.config import TrainConfig
from rl.episodes import EpisodeBatch
from rl.raytrain import FINAL_MARKER, METRICS_FILE, PROGRESS_FILE, append_line
from rl.score_math import check_lag, kept_candidate
from rl.score_source import EpisodeSource, logp_mismatch
from rl.score_step import Policy, StepStats, Workers, train_step
from rl.trl_bridge import peft_config, train_dtype

ROLLOUT_DIR = "rollouts"
STATE_FILE = "state.json"
# The engine-vs-trainer log-prob mismatch (mean |difference| per token) on the same weights, above which a
# sync is suspect. Measured on SmolLM2-135M, the laptop config, a 2-core AMD EPYC with avx512_bf16
# (benchmarks/bench_score.py): float32 engine and trainer 1.1e-5 (and under 5e-5 again); bfloat16 both,
# 0.032-0.044 over steps 1-4. The bounds leave about twice the largest seen; a failed sync differs by
# whole nats. float16 is taken as bfloat16 (not measured).
MISMATCH_LIMITS = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.1}


def use_engine_logprobs(setting: str, lag: int, mismatch: float, limit: float, dtypes: set[str]) -> bool:
    """Whether a batch's KL penalty (``kl_in: reward``) takes the policy's log-probs from the engines
    (``train.score.kl_logprobs``) rather than from a forward of the trainer's own.

    Only a batch sampled with the trainer's current weights (``lag`` 0) whose engine passed the sync check
    (``mismatch`` measured and under ``limit``). ``auto`` also needs both sides in float32: there the two
    differ by about 1e-5 a token, while in bfloat16 by 0.03-0.04 (mean absolute), as much as 2 nats over a
    64-token attempt, which the trainer's own forward (beside pi_ref's, in the same kernels) does not add.

    >>> use_engine_logprobs("auto", 0, 1e-5, 1e-3, {"float32"}), use_engine_logprobs("auto", 0, 0.03, 0.1, {"bfloat16"})
    (True, False)
    """
    if setting == "trainer" or lag != 0 or not mismatch <= limit:  # NaN: not measured
        return False
    return setting == "engine" or dtypes == {"float32"}


@dataclass
class ScoreLoopConfig:
    """What the driver hands every worker (``train_loop_config``): the settings and where things go."""

    train: TrainConfig
    model_path: str
    model_name: str
    prompts: list[Prompt]
    generate: GenerateConfig  # the engines' (max_tokens is the attempts')
    judge: JudgeSettings  # the settings of train.score.judge
    actors: list[Any]  # the rollout engines (Ray actor handles)
    sync: str  # the weight-sync backend
    out_dir: str  # the stage's folder, local or on object storage: rollouts go straight there
    local_dir: str  # on local disk: the metrics log (uploaded after each line when out_dir is remote), progress
    metrics_object: str | None = None  # the metrics log's object, when out_dir is on object storage

    @property
    def metrics_file(self) -> Path:
        return Path(self.local_dir) / METRICS_FILE

    @property
    def progress_file(self) -> Path:
        return Path(self.local_dir) / PROGRESS_FILE


@dataclass
class TrainState:
    """Where the run stands (saved in each checkpoint as ``state.json``)."""

    step: int = 0
    version: int = 0  # updates the weights have had
    best: dict[str, Any] | None = None  # {"reward", "step", "version"} of the best weights so far
    window: list[float] = field(default_factory=list)  # the last select_window steps' training rewards


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def _pull_metrics(uri: str | None, local: Path) -> None:
    """On object storage, start from the log as uploaded (a worker resumed on another machine keeps its lines)."""
    if uri and storage.exists(storage.as_location(uri)):
        local.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(local, storage.read_bytes(storage.as_location(uri)))


def make_scheduler(optimizer: Any, t: TrainConfig) -> Any:
    """``train.scheduler`` over SCoRe's steps, ``train.warmup_ratio`` of them warming up (transformers'
    schedulers, as DPO/SFT use them)."""
    from transformers import get_scheduler

    total = t.score.total_steps
    return get_scheduler(t.scheduler, optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total),
                         num_training_steps=total)  # fmt: skip


class ScoreRecipe:
    """The SCoRe loop of one Ray Train worker, resumable from the last reported checkpoint."""

    def __init__(self, c: ScoreLoopConfig):
        self.c, self.t, self.s = c, c.train, c.train.score
        self.state = TrainState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.source: EpisodeSource | None = None  # rank 0's

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """The policy, pi_ref (LoRA's disabled adapter, or a frozen copy) and the optimizer on this worker.

        ``train.precision`` (``auto``: bfloat16 where the hardware computes it, ``datagen.hardware``) is the
        dtype of the forward passes. The weights the optimizer updates stay float32: with LoRA the adapter
        (PEFT keeps it float32 over a bfloat16 base, whose frozen weights are stored in bfloat16); without,
        the whole model in float32 under autocast, because an Adam step of lr 5e-6 on a weight is below
        bfloat16's resolution (8 bits of mantissa: relative steps under 2^-8 round away) and would be lost.
        """
        import ray.train
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ctx = ray.train.get_context()
        self.workers = Workers(ctx.get_world_rank(), ctx.get_world_size())
        t = self.t
        use_cpu = not torch.cuda.is_available()
        if use_cpu:
            torch.set_num_threads(max(1, math.ceil(t.cpus_per_worker)))
        device = ray.train.torch.get_device()
        torch.manual_seed(t.seed)
        tokenizer = AutoTokenizer.from_pretrained(self.c.model_path)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        chosen = train_dtype(t, use_cpu)
        print(f"[score] trainer dtype {chosen}", flush=True)
        dtype = getattr(torch, chosen.name)
        autocast = None
        if t.lora.enabled:
            from peft import get_peft_model

            base = AutoModelForCausalLM.from_pretrained(self.c.model_path, dtype=dtype).to(device)
            model, ref = get_peft_model(base, peft_config(t)), None
        else:
            model = AutoModelForCausalLM.from_pretrained(self.c.model_path, dtype=torch.float32).to(device)
            ref = copy.deepcopy(model).to(dtype).eval()  # frozen: no master weights needed
            for p in ref.parameters():
                p.requires_grad_(False)
            autocast = dtype if dtype != torch.float32 else None
        if t.gradient_checkpointing:  # non-reentrant: gradients reach LoRA weights behind frozen embeddings
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.dtype = chosen.name
        self.policy = Policy(model, ref, pad_id, device, self.s.temperature, autocast)
        self.optimizer = torch.optim.AdamW(  # Adam when weight_decay is 0, as the paper
            self.policy.trainable(), lr=t.lr, weight_decay=t.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, t)

    def resume(self) -> bool:
        """Load the last reported checkpoint, if any; False when it is the final one (reported again: done)."""
        import ray.train
        import safetensors.torch

        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                d = Path(d)
                if (d / FINAL_MARKER).exists():
                    ray.train.report({"final": 1}, checkpoint=checkpoint if self.workers.rank == 0 else None)
                    return False
                self.state = TrainState(**json.loads((d / STATE_FILE).read_text()))
                _load_trainable(self.policy.model, safetensors.torch.load_file(str(d / "trainable.safetensors")))
                self.optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=False))
                if (d / "scheduler.pt").exists():
                    self.scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=False))
                if (d / "best.safetensors").exists():
                    self.best_weights = safetensors.torch.load_file(str(d / "best.safetensors"))
        if self.workers.rank == 0:
            storage.makedirs(storage.as_location(self.c.out_dir) / ROLLOUT_DIR)
            _pull_metrics(self.c.metrics_object, self.c.metrics_file)
            from rl.rollout import RolloutClient

            c = self.c
            client = RolloutClient(c.actors, c.sync, self.s.sync_timeout_s, int(c.generate.engine.num_gpus))
            self.source = EpisodeSource(c.prompts, c.train, c.judge, client)
            if self.state.version:
                self.source.client.sync_weights(self.policy.model, self.state.version)  # they hold the start's
        return True

    # --- a step --------------------------------------------------------------------------------
    def _next_batch(self, step: int, stage: int) -> EpisodeBatch:
        """Rank 0 collects and judges the batch of ``step`` (and starts the next with ``overlap``), samples more
        where dynamic sampling needs it; every worker gets it."""
        payload: list[Any] = [None]
        if self.workers.rank == 0:
            assert self.source is not None
            version = self.state.version
            batch = self.source.collect(step, self.policy.model, version)
            check_lag(batch.version, version, self.s.max_policy_lag)
            if self.s.overlap and step + 1 < self.s.total_steps:
                self.source.submit(step + 1, version)  # sampled during this update: one version behind
            self.source.score(batch)
            self.source.fill(batch, step, stage, self.policy.model, version)
            batch.lag = check_lag(batch.version, version, self.s.max_policy_lag)  # of its oldest episode
            if batch.lag == 0:
                batch.rollout.mismatch = logp_mismatch(batch, self.policy)
                dtypes = {self.source.client.dtype, self.dtype}  # the engine's and the trainer's: the coarser one
                limit = max(MISMATCH_LIMITS.get(d, MISMATCH_LIMITS["float32"]) for d in dtypes)
                batch.engine_logp = self.s.kl_in == "reward" and use_engine_logprobs(
                    self.s.kl_logprobs, batch.lag, batch.rollout.mismatch, limit, dtypes
                )
                if batch.rollout.mismatch > limit:
                    print(f"[score] warning: step {step + 1}: the engine's log-probs differ from the trainer's by "
                          f"{batch.rollout.mismatch:.3g} per token (expected under {limit:g} with "
                          f"{' and '.join(sorted(dtypes))}): are the engines on the trainer's weights?", flush=True)
            payload = [batch]
        if self.workers.world > 1:
            import torch.distributed as dist

            dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def _keep(self, batch: EpisodeBatch, step: int) -> float:
        """The training reward of the weights that sampled ``batch``; keep: best snapshots them before the update."""
        state, s = self.state, self.s
        valid = batch.valid
        if valid:
            state.window = [*state.window, (batch.accuracy(1) + batch.accuracy(2)) / 2][-s.select_window :]
        best = state.best["reward"] if state.best else None
        candidate = kept_candidate(state.window, s.select_window, state.version, best) if valid else None
        if self.workers.rank == 0 and s.keep == "best" and candidate is not None:
            state.best = {"reward": candidate, "step": step, "version": state.version}
            self.best_weights = _trainable_state(self.policy.model)
        return fmean(state.window) if state.window else float("nan")

    def step(self, step: int) -> None:
        started = time.perf_counter()
        total = self.s.total_steps
        stage = 1 if step < self.s.stage1_steps else 2
        batch = self._next_batch(step, stage)
        window = self._keep(batch, step)
        train_started = time.perf_counter()
        stats = train_step(self.policy, self.optimizer, batch.trained, stage, self.t, self.workers, batch.engine_logp)
        self.scheduler.step()
        train_seconds = time.perf_counter() - train_started
        self.state.version += 1
        self.state.step = step + 1
        if self.workers.rank == 0:
            assert self.source is not None
            last = step + 1 == total
            sync = {"seconds": 0, "bytes": 0} if last else self.source.client.sync_weights(
                self.policy.model, self.state.version
            )  # fmt: skip
            if not self.s.overlap and not last:
                self.source.submit(step + 1, self.state.version)
            path = storage.as_location(self.c.out_dir) / ROLLOUT_DIR / f"step-{step:06d}.parquet"
            atomic_write_bytes(path, batch.to_parquet(step, stage))
            record = self._record(step, stage, batch, stats, window, sync, train_seconds, started)
            self._log(record, stats, batch, sync)
        if (step + 1) % self.t.checkpoint_every == 0 and step + 1 < total:
            self.checkpoint()

    def _record(self, step: int, stage: int, batch: EpisodeBatch, stats: StepStats, window: float,
                sync: dict[str, Any], train_seconds: float, started: float) -> dict[str, Any]:  # fmt: skip
        """The step's line of ``metrics.jsonl``."""
        valid, ro = batch.valid, batch.rollout
        acc1, acc2 = batch.accuracy(1), batch.accuracy(2)
        i2c = sum(1 for e in valid if e.second.reward > e.first.reward)  # type: ignore[operator]
        c2i = sum(1 for e in valid if e.second.reward < e.first.reward)  # type: ignore[operator]
        numbers = stats.as_dict()
        return {
            "step": step + 1, "stage": stage, "reward_t1": acc1, "reward_t2": acc2, "delta": acc2 - acc1,
            "delta_i2c": i2c / len(valid) if valid else float("nan"),
            "delta_c2i": c2i / len(valid) if valid else float("nan"),
            "reward_window": window, "episodes": len(batch.episodes), "flagged": len(batch.episodes) - len(valid),
            **{f"flagged_{k}": v for k, v in batch.flags.items()}, "episodes_trained": len(batch.trained),
            **batch.sampling,
            **numbers, "loss": numbers["pg_loss"], "policy_lag": batch.lag, "version": self.state.version,
            "rollout_seconds": ro.seconds, "rollout_tokens": ro.tokens,
            "rollout_tokens_per_s": ro.tokens / ro.seconds if ro.seconds else 0.0,
            "rollouts_redone": ro.redone, "engine_restarts": self.source.client.restarts if self.source else 0,
            "judge_seconds": ro.judge_seconds, "logp_mismatch": ro.mismatch,
            "train_seconds": train_seconds, "sync_seconds": sync["seconds"], "sync_bytes": sync["bytes"],
            "step_seconds": time.perf_counter() - started,
        }  # fmt: skip

    def _log(self, record: dict[str, Any], stats: StepStats, batch: EpisodeBatch, sync: dict[str, Any]) -> None:
        """Rank 0: the metrics log (and its upload), the Ray metrics, the position the driver's bar follows."""
        c, step = self.c, record["step"]
        if step % self.t.log_every == 0 or step == self.s.total_steps:
            append_line(c.metrics_file, record)
            if c.metrics_object:
                storage.write_bytes(storage.as_location(c.metrics_object), c.metrics_file.read_bytes())
        record_rl(
            stage_tags(storage.as_location(c.out_dir)), step=step, loss=record["loss"],
            kl={"turn1": stats.kl_t1, "turn2": stats.kl_t2},
            rewards={"turn1": record["reward_t1"], "turn2": record["reward_t2"]},
            rollout_tokens=batch.rollout.tokens, rollout_seconds=batch.rollout.seconds,
            weight_sync_s=sync["seconds"] if sync["bytes"] else None, weight_sync_bytes=sync["bytes"] or None,
            policy_lag=batch.lag, flagged=record["flagged"], grad_norm=stats.grad_norm,
        )  # fmt: skip
        pids = self.source.client.pids if self.source else []
        progress = {"step": step, "max_steps": self.s.total_steps, "pid": os.getpid(), "engine_pids": pids}
        atomic_write_json(c.progress_file, progress)

    # --- checkpoints and the end ---------------------------------------------------------------
    def checkpoint(self) -> None:
        """Every rank reports (a barrier); rank 0 with the trainable weights, optimizer, state, best weights."""
        import ray.train
        import safetensors.torch

        metrics = {"step": self.state.step, "version": self.state.version}
        if self.workers.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            safetensors.torch.save_file(_trainable_state(self.policy.model), str(d / "trainable.safetensors"))
            torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), d / "scheduler.pt")
            if self.best_weights is not None:
                safetensors.torch.save_file(self.best_weights, str(d / "best.safetensors"))
            (d / STATE_FILE).write_text(json.dumps(asdict(self.state)))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def finish(self) -> None:
        """Rank 0 saves the kept weights (best or last) as the final model; every rank reports."""
        import ray.train
        from transformers import AutoTokenizer

        state = self.state
        kept = {"kept": "last", "kept_step": state.step, "kept_reward": None, "version": state.version}
        metrics = {"final": 1, "step": state.step, **kept}
        if self.workers.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        model = self.policy.model
        if self.s.keep == "best" and self.best_weights is not None and state.best is not None:
            _load_trainable(model, self.best_weights)
            metrics.update(kept="best", kept_step=state.best["step"], kept_reward=state.best["reward"])
        with tempfile.TemporaryDirectory() as tmp:
            final = Path(tmp)
            tokenizer = AutoTokenizer.from_pretrained(self.c.model_path)
            if hasattr(model, "peft_config"):
                model.save_pretrained(final / "adapter")
                tokenizer.save_pretrained(final / "adapter")
                model = model.merge_and_unload()
            model.save_pretrained(final / "model")
            tokenizer.save_pretrained(final / "model")
            atomic_write_json(final / FINAL_MARKER, metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def run(self) -> None:
        self.setup()
        if not self.resume():
            return
        total = self.s.total_steps
        if self.source is not None and self.state.step < total:
            self.source.submit(self.state.step, self.state.version)
        for step in range(self.state.step, total):
            self.step(step)
        self.finish()


def score_loop(config: dict[str, ScoreLoopConfig]) -> None:
    """The Ray Train worker (``train_loop_config`` is ``{"loop": ScoreLoopConfig}``)."""
    ScoreRecipe(config["loop"]).run()
