"""Ray Train plumbing shared by every training algorithm: the ``TorchTrainer`` with its storage and
failure settings, the final checkpoint published into the stage's folder, the metrics log and the
driver's progress bar that follows rank 0's position.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datagen.shards import StageDir, atomic_write_bytes
from datagen.storage import Location, ObjectPath, filesystem, local_cache
from rl.config import TrainConfig

RUN_NAME = "ray"
FINAL_MARKER = "final.json"
METRICS_FILE = "metrics.jsonl"  # per logged step, rank 0: loss, rewards/*, learning_rate, epoch, step
PROGRESS_FILE = "_progress.json"


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an O_APPEND file: a reader sees whole lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def write_step_metrics(log_history: list[dict[str, Any]], path: Path) -> int:
    """Rewrite ``metrics.jsonl`` from the trainer's final log history: one line per logged step.

    The lines appended during training repeat the steps a resumed run trained again; the final
    history (restored from the checkpoint, then extended) holds each step once.
    """
    by_step = {h["step"]: h for h in log_history if "loss" in h and "step" in h}
    lines = [json.dumps({k: v for k, v in by_step[s].items() if isinstance(v, (int, float))}) for s in sorted(by_step)]
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())
    return len(lines)


@contextlib.contextmanager
def step_bar(progress_file: Path) -> Iterator[None]:
    """A driver-side bar over optimizer steps, following the ``_progress.json`` rank 0 writes."""
    from datagen import progress

    bar = progress.bar(desc="train", unit="step", total=None)
    stop = threading.Event()

    def update() -> None:
        try:
            pos = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            return
        total, step = pos.get("max_steps") or bar.total, pos.get("step", bar.n)
        if (total, step) != (bar.total, bar.n):  # redrawn on a change only: a piped log stays short
            bar.total, bar.n = total, step
            bar.refresh()

    def follow() -> None:
        while not stop.wait(1.0):
            update()

    thread = threading.Thread(target=follow, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        update()
        bar.close()


def local_folder(out: StageDir, overwrite: bool = False) -> Path:
    """Where a training run writes through the file system: the stage's own folder, or, for a stage on object
    storage, a local mirror of it (emptied by ``overwrite``), which the run uploads when it ends."""
    if not isinstance(out.path, ObjectPath):
        out.path.mkdir(parents=True, exist_ok=True)
        return out.path.resolve()
    local = local_cache(out.path.parent, out.path.name).resolve()
    if overwrite:
        shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True, exist_ok=True)
    return local


def make_trainer(loop: Any, loop_cfg: dict[str, Any], cfg: TrainConfig, storage: Location) -> Any:
    """A ``TorchTrainer`` running ``loop`` on ``cfg.num_workers`` workers, checkpoints under ``storage/ray``.

    The same (storage, name) resumes a run whose driver died. ``storage`` may be on object storage.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            **_storage_args(storage),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )


def _storage_args(storage: Location) -> dict[str, Any]:
    if isinstance(storage, ObjectPath):
        fs, inner = filesystem(storage)
        return {"storage_path": inner, "storage_filesystem": fs}
    return {"storage_path": str(storage.resolve())}


def publish_final(checkpoint: Any, out: Path) -> dict[str, Any]:
    """Copy the final checkpoint's model, adapter and log into ``out`` (each replaced whole); its metrics."""
    with checkpoint.as_directory() as final:
        for name in ("model", "adapter", "log_history.json"):
            src = Path(final) / name
            if not src.exists():
                continue
            dst = out / name
            tmp = out / f".{name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
            if dst.is_dir():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        return json.loads((Path(final) / FINAL_MARKER).read_text())
