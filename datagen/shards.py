"""Exactly-once Parquet output for a stage, shard by shard.

A stage directory holds ``part-NNNNN.parquet`` files, one per shard of the input, plus two
markers: ``_stage.json`` (the fingerprint of the settings the output was made with, written when
the stage starts) and ``_SUCCESS.json`` (a summary, written when every shard is in place). A stage
that raised leaves ``_FAILED.json`` (its error and the command that redoes it) until it is run
again; that marker never makes a stage done.

Each shard is written to a hidden temporary file beside its final name and renamed into place,
so a reader (``pyarrow.dataset`` ignores names starting with ``.`` or ``_``) only ever sees whole
files, and a shard that is written twice (a retried task, a restarted stage) ends up once under
its deterministic name. A stage killed at any moment and started again skips the shards whose
files exist and redoes the rest: every record exactly once.

The directory may be a URI on object storage (``s3://bucket/run/generate``): there a shard is one
upload under its final name instead of a rename, as ``datagen.storage`` explains, and the same
guarantees hold.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from datagen import storage
from datagen.storage import Location, ObjectPath

STAGE_FILE = "_stage.json"
SUCCESS_FILE = "_SUCCESS.json"
FAILED_FILE = "_FAILED.json"


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


def atomic_write_bytes(path: Location, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    storage.write_bytes(path, data)


def atomic_write_json(path: Location, obj: Any, sort_keys: bool = True) -> None:
    # sort_keys=False keeps an order that means something (the eval's models, in table order)
    storage.write_json(path, obj, sort_keys=sort_keys)


class StageDir:
    """The output directory of one stage of a run: a local folder or a prefix on object storage."""

    def __init__(self, path: str | os.PathLike[str] | ObjectPath):
        self.path: Location = storage.as_location(path)

    def done(self) -> bool:
        return storage.exists(self.path / SUCCESS_FILE)

    def summary(self) -> dict[str, Any]:
        return storage.read_json(self.path / SUCCESS_FILE)

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Raise ``StageMismatchError`` if existing output was made with other settings."""
        stage_file = self.path / STAGE_FILE
        if not storage.exists(stage_file):
            if self.completed_shards():
                raise StageMismatchError(
                    f"{self.path} holds shards but no {STAGE_FILE}; pass --overwrite to redo it"
                )
            return
        previous = storage.read_json(stage_file)
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
        if overwrite:
            storage.delete_prefix(self.path)
        storage.makedirs(self.path)
        self.check(fingerprint)
        if not storage.exists(self.path / STAGE_FILE):
            atomic_write_json(self.path / STAGE_FILE, fingerprint)
        if isinstance(self.path, Path):  # object storage has no temporary files to sweep
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def completed_shards(self) -> set[int]:
        found = (shard_index(name) for name in storage.list_names(self.path))
        return {i for i in found if i is not None}

    def write_shard(self, index: int, table: pa.Table) -> Location:
        """Write one shard atomically under its deterministic name."""
        final = self.path / shard_name(index)
        if isinstance(final, ObjectPath):
            # Whole in memory, then one upload: an object appears complete or not at all.
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            storage.write_bytes(final, sink.getvalue())
            return final
        tmp = self.path / f".{final.name}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return final

    def mark_done(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUCCESS_FILE, summary)

    def mark_failed(self, failure: dict[str, Any]) -> None:
        """Record why the stage's last run raised (read back by ``failure``; ``done`` is unaffected)."""
        storage.makedirs(self.path)
        atomic_write_json(self.path / FAILED_FILE, failure)

    def failure(self) -> dict[str, Any] | None:
        """What ``mark_failed`` recorded, or None: the stage has not failed since it last started."""
        try:
            return storage.read_json(self.path / FAILED_FILE)
        except (OSError, ValueError):  # none there (or unreadable: no failure to show)
            return None

    def clear_failure(self) -> None:
        storage.remove(self.path / FAILED_FILE)

    def dataset(self) -> pads.Dataset:
        if isinstance(self.path, Path):
            return pads.dataset(str(self.path), format="parquet")
        fs, inner = storage.filesystem(self.path)
        # Only the shards: the markers and a probe object (names starting with "_") are skipped anyway.
        files = [f"{inner}/{shard_name(i)}" for i in sorted(self.completed_shards())]
        return pads.dataset(files, filesystem=fs, format="parquet")

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.dataset().to_table(columns=columns)

    def shard_paths(self) -> list[Location]:
        return sorted((self.path / shard_name(i) for i in self.completed_shards()), key=str)
