"""Exactly-once Parquet output for a stage, shard by shard.

A stage directory holds ``part-NNNNN.parquet`` files, one per shard of the input, plus two
markers: ``_stage.json`` (the fingerprint of the settings the output was made with, written when
the stage starts) and ``_SUCCESS.json`` (a summary, written when every shard is in place).

Each shard is written to a hidden temporary file beside its final name and renamed into place,
so a reader (``pyarrow.dataset`` ignores names starting with ``.`` or ``_``) only ever sees whole
files, and a shard that is written twice (a retried task, a restarted stage) ends up once under
its deterministic name. A stage killed at any moment and started again skips the shards whose
files exist and redoes the rest: every record exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

STAGE_FILE = "_stage.json"
SUCCESS_FILE = "_SUCCESS.json"


class StageMismatchError(RuntimeError):
    """The directory holds output made with other settings."""


class StageInputError(ValueError):
    """A stage's input is missing or unusable (an earlier stage has not finished, say)."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_index(name: str) -> int | None:
    if name.startswith("part-") and name.endswith(".parquet"):
        try:
            return int(name[5:-8])
        except ValueError:
            return None
    return None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    # sort_keys=False keeps an order that means something (the eval's models, in table order)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


class StageDir:
    """The output directory of one stage of a run."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def done(self) -> bool:
        return (self.path / SUCCESS_FILE).exists()

    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / SUCCESS_FILE).read_text())

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Raise ``StageMismatchError`` if existing output was made with other settings."""
        stage_file = self.path / STAGE_FILE
        if not stage_file.exists():
            if any(self.path.glob("part-*.parquet")):
                raise StageMismatchError(
                    f"{self.path} holds shards but no {STAGE_FILE}; pass --overwrite to redo it"
                )
            return
        previous = json.loads(stage_file.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            raise StageMismatchError(
                f"{self.path} holds output made with other settings (changed: "
                f"{', '.join(changed)}); pass --overwrite to redo it or choose another run_dir"
            )

    def start(self, fingerprint: dict[str, Any], overwrite: bool = False) -> None:
        """Prepare the directory for (re)running the stage with the settings in ``fingerprint``.

        Output left by a killed run with the same fingerprint is kept (it is resumed); output from
        other settings is an error unless ``overwrite``, which removes it.
        """
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.check(fingerprint)
        if not (self.path / STAGE_FILE).exists():
            atomic_write_json(self.path / STAGE_FILE, fingerprint)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def completed_shards(self) -> set[int]:
        if not self.path.exists():
            return set()
        found = (shard_index(p.name) for p in self.path.iterdir())
        return {i for i in found if i is not None}

    def write_shard(self, index: int, table: pa.Table) -> Path:
        """Write one shard atomically under its deterministic name."""
        final = self.path / shard_name(index)
        tmp = self.path / f".{final.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUCCESS_FILE, summary)

    def dataset(self) -> pads.Dataset:
        return pads.dataset(str(self.path), format="parquet")

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.dataset().to_table(columns=columns)

    def shard_paths(self) -> list[Path]:
        return sorted(self.path / shard_name(i) for i in self.completed_shards())
