"""DPO and SFT on Ray Train: TRL's trainers inside a ``TorchTrainer``, with LoRA, checkpoints and resume.

Each Ray Train worker builds TRL's ``DPOTrainer`` or ``SFTTrainer`` over the build stage's Parquet;
Ray Train sets up the process group (gloo on CPU, NCCL on GPU) and transformers' Trainer trains
data-parallel over it. Every ``checkpoint_every`` optimizer steps the Trainer saves a checkpoint
and rank 0 reports it to Ray Train, which keeps it under ``OUT_DIR/ray/``. When a worker dies, Ray
Train restarts the worker group (``max_failures`` times) and each worker resumes from the last
reported checkpoint: the Trainer restores model, optimizer, scheduler and step, and skips the
batches it already trained on. The order of the batches is a pure function of the seed and epoch
(``GroupedWindowSampler``), so the resumed run sees exactly the data the uninterrupted one would.
Running the stage again after the driver died resumes the same way (same run name and storage).
Ray Train registers a reported checkpoint when its controller next polls the workers (every 2 s
by default): a worker group that dies inside that window resumes from the checkpoint before, and
the model state goes back with it, so no step is ever trained twice into the final model.

At the end rank 0 saves the adapter (``OUT_DIR/adapter``) and a full Hugging Face model folder
(``OUT_DIR/model``, the adapter merged in) that the generate stage loads as its ``model``.

Before Ray Train starts, ``check_data`` measures every sequence with the model's tokenizer: TRL
would cut an over-long one at ``max_length`` (the end of the answer), so such examples are refused
or, with ``too_long: drop``, left out and counted. ``sft_first`` runs an SFT on the chosen answers
into ``OUT_DIR/sft`` first (a run of its own, resumable) and DPO starts from its merged model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datagen.images import store_location
from datagen.metrics import stage_tags
from datagen.shards import STAGE_FILE, SUCCESS_FILE, StageDir, atomic_write_json
from datagen.storage import Location, ObjectPath, read_json, upload_folder

# The seams this module was split along; their names stay importable from here.
from rl.checks import _token_lengths, check_data, check_lora_targets  # noqa: F401
from rl.config import TrainConfig, TrainInputs
from rl.raytrain import (  # noqa: F401
    FINAL_MARKER,
    METRICS_FILE,
    PROGRESS_FILE,
    RUN_NAME,
    _storage_args,
    append_line,
    local_folder,
    make_trainer,
    publish_final,
    step_bar,
    write_step_metrics,
)
from rl.sampler import GroupedWindowSampler  # noqa: F401
from rl.trl_bridge import (  # noqa: F401
    _callbacks,
    _chosen_as_sft,
    _load_dataset,
    _peft_config,
    _prompt_completion,
    _save_final,
    _trainer_class,
    _trl_args,
    _with_row_ids,
    build_trainer,
    split_at_last_user,
    train_dtype,
)


def train_loop(cfg: dict[str, Any]) -> None:
    """The Ray Train worker: build the trainer, resume from the last checkpoint, train, save."""
    import ray.train

    ctx = ray.train.get_context()
    use_cpu = not torch.cuda.is_available()
    if use_cpu:
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    checkpoint = ray.train.get_checkpoint()
    resume_dir: str | None = None
    with (
        tempfile.TemporaryDirectory() as work,
        checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as ckpt_dir,
    ):
        if ckpt_dir and (Path(ckpt_dir) / FINAL_MARKER).exists():
            # Training had finished before the driver went away: hand the final model back again.
            ray.train.report({"final": 1}, checkpoint=checkpoint if ctx.get_world_rank() == 0 else None)
            return
        if ckpt_dir:
            resume_dir = str(Path(ckpt_dir) / "checkpoint")
        trainer, pair_ids = build_trainer(cfg, str(Path(work) / "hf"), use_cpu, cfg.get("callbacks"))
        for cb in _callbacks(trainer, cfg, pair_ids):
            trainer.add_callback(cb)
        trainer.train(resume_from_checkpoint=resume_dir)
        final = Path(work) / "final"
        metrics = {"final": 1, "step": trainer.state.global_step, "dtype": str(train_dtype(
            TrainConfig.model_validate(cfg["train"]), use_cpu))}
        if ctx.get_world_rank() == 0:
            _save_final(trainer, cfg["model_path"], final, cfg["train"]["merge"])
            atomic_write_json(final / "log_history.json", trainer.state.log_history)
            atomic_write_json(final / FINAL_MARKER, metrics)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(final))
        else:
            ray.train.report(metrics, checkpoint=None)


def sft_first_config(cfg: TrainConfig) -> TrainConfig:
    """The SFT run that ``train.sft_first`` puts before DPO: same model, LoRA and batch, its own epochs and lr."""
    assert cfg.sft_first is not None
    return cfg.model_copy(
        update={
            "algorithm": "sft",
            "sft_beta": 0.0,
            "sft_first": None,
            "epochs": cfg.sft_first.epochs,
            "lr": cfg.sft_first.lr or cfg.lr,
            "grad_accum": cfg.sft_first.grad_accum or cfg.grad_accum,
            "max_steps": -1,
            "merge": True,  # DPO starts from the merged model, which is also its reference
        }
    )


def train_fingerprint(cfg: TrainConfig, model_path: str, build_dir: StageDir) -> dict[str, Any]:
    """The settings and inputs that shape the trained model (the build by its own fingerprint)."""
    stage_file = build_dir.path / "_stage.json"
    try:
        build = read_json(stage_file)
    except FileNotFoundError:
        build = None
    return {"train": cfg.model_dump(mode="json"), "model": model_path, "build": build}


@dataclass(frozen=True)
class TrainPlan:
    """DPO/SFT's plan: the settings, the model, the build, and ``check_data``'s report (None when the stage
    had finished: then only its fingerprint is compared; with --overwrite ``run_train`` checks the data)."""

    train: TrainConfig
    model_path: str
    build: StageDir
    report: dict[str, Any] | None
    fingerprint: dict[str, Any]


def plan_train(inputs: TrainInputs) -> TrainPlan:
    """The build's kind and size, and every sequence's length against train.max_length, checked before Ray
    Train starts (``StageInputError``: exit 2)."""
    report = None if inputs.done else check_data(inputs.train, inputs.model_path, inputs.build)
    fingerprint = train_fingerprint(inputs.train, inputs.model_path, inputs.build)
    return TrainPlan(inputs.train, inputs.model_path, inputs.build, report, fingerprint)


def run_train(
    cfg: TrainConfig,
    model_path: str,
    build_dir: StageDir,
    out_dir: Location | str | os.PathLike[str],
    overwrite: bool = False,
    callbacks: list | None = None,
    report: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train on the build stage's output; the final model lands in ``out_dir/model``.

    A finished run is kept; a run stopped part way resumes from its last checkpoint. Needs Ray
    initialised. ``callbacks`` are extra ``transformers.TrainerCallback`` objects for the workers;
    ``report`` is ``check_data``'s (computed here when not given); ``tags`` label the Ray metrics
    (``datagen.metrics.stage_tags``; default: from ``out_dir``'s path). With ``sft_first`` the SFT run
    goes to ``out_dir/sft`` (resumable on its own) and DPO starts from its model.

    ``out_dir`` may be on object storage: Ray Train's checkpoints go there directly (a new driver anywhere
    resumes from them); the folder the workers append metrics to is a local mirror (``local_folder``),
    uploaded when training ends, and the summary names the objects.
    """
    out = StageDir(out_dir)
    fingerprint = train_fingerprint(cfg, model_path, build_dir)
    if out.done() and not overwrite:
        out.check(fingerprint)
        return out.summary()
    if report is None:
        report = check_data(cfg, model_path, build_dir)
    build = build_dir.summary()
    out.start(fingerprint, overwrite=overwrite)  # other settings refused; --overwrite drops old checkpoints
    local = local_folder(out, overwrite)
    tags = tags or stage_tags(out.path)
    sft_summary = None
    if cfg.sft_first is not None:
        sft_tags = {**tags, "stage": f"{tags['stage']}/sft"}
        sft_cfg = sft_first_config(cfg)
        sft_summary = run_train(sft_cfg, model_path, build_dir, out.path / "sft", False, callbacks, report, sft_tags)
        model_path = str(local / "sft" / "model")  # on local disk, where the workers load it
    loop_cfg = {
        "train": cfg.model_dump(mode="json"),
        "model_path": model_path,
        "exclude": report["exclude"],
        "data_files": [str(p) for p in build_dir.shard_paths()],
        "image_dir": str(store_location(build_dir.path.parent)),  # the run's images (RUN_DIR/images)
        "cpus_per_worker": cfg.cpus_per_worker,
        "log_samples": cfg.log_samples,
        "sample_log_dir": str(local / "samples"),
        "metrics_file": str(local / METRICS_FILE),
        "metric_tags": tags,
        "callbacks": callbacks or [],
    }
    trainer = make_trainer(train_loop, loop_cfg, cfg, out.path)
    start = time.perf_counter()
    with step_bar(local / PROGRESS_FILE):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training ended without a final checkpoint")
    metrics = publish_final(result.checkpoint, local)
    history = local / "log_history.json"
    if history.exists():
        write_step_metrics(json.loads(history.read_text()), local / METRICS_FILE)
    summary = {
        "algorithm": cfg.algorithm,
        "steps": metrics["step"],
        "pairs": build["pairs_out"],
        "data": {k: v for k, v in report.items() if k != "exclude"},
        "seconds": round(time.perf_counter() - start, 2),
        "dtype": metrics.get("dtype"),
        "model": str(out.path / "model"),
        "adapter": str(out.path / "adapter") if cfg.lora.enabled else None,
    }
    if sft_summary is not None:
        summary["sft_first"] = {k: sft_summary[k] for k in ("steps", "seconds", "model")}
    if isinstance(out.path, ObjectPath):  # the SFT run uploaded its own folder
        upload_folder(local, out.path, skip=(STAGE_FILE, SUCCESS_FILE, "sft"))
    out.mark_done(summary)  # last: the model and its metrics are in place
    return summary
