"""What a stage is: a name, its two halves, and what it says about itself.

``prepare`` checks everything that depends only on the config and the inputs (before Ray starts,
writing nothing) and returns a plan whose ``fingerprint`` (a dict, or None) records the settings that
shape the output; ``run`` does the work with Ray up. A finished stage is skipped when its fingerprint
matches, and refused when it does not. Each gets the whole config here and hands its components only
the parts they need. Beside them a stage carries what the rest of the command asks of it: the
resources it needs from the cluster (``demands``), how its progress is read from the run directory
(``progress``, for ``selfcorrect status``) and the line printed when it finishes (``summary``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.config import Config
from cluster.runtime import Demand
from datagen import storage
from datagen.registry import Registry
from datagen.shards import STAGE_FILE, StageDir
from datagen.storage import ObjectPath, StorageError, as_location, check_writable, local_cache


class Plan(Protocol):
    """What ``prepare`` returns: anything with the fingerprint of the settings that shape the output."""

    fingerprint: dict[str, Any] | None


@dataclass(frozen=True)
class Fingerprint:
    """The plan of a stage whose run needs nothing beyond the config."""

    fingerprint: dict[str, Any] | None


State = tuple[str, str]  # (done | partial | not started, a detail such as "3/4 shards")


def no_demands(cfg: Config) -> list[Demand]:
    return []


def folder_state(stage: str) -> Callable[[Config], State]:
    """Done (``_SUCCESS.json``), partial (something in its folder) or not started."""

    def state(cfg: Config) -> State:
        out = StageDir(cfg.stage_dir(stage))
        if out.done():
            return "done", ""
        return ("partial", "") if storage.list_names(out.path) else ("not started", "")

    return state


def shard_state(out: StageDir, total: int | None) -> State:
    """A sharded stage: done with its shard count, partial with shards done of the total (where known)."""
    if out.done():
        shards = out.summary().get("shards", total)
        return "done", f"{shards} shards" if shards is not None else ""
    done = len(out.completed_shards())
    if done == 0 and not storage.exists(out.path / STAGE_FILE):
        return "not started", ""
    return "partial", f"{done}/{total if total is not None else '?'} shards"


def seconds(x: Any) -> str:
    return f"{x:.0f} s" if isinstance(x, (int, float)) else "?"


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    prepare: Callable[[Config], Plan]
    run: Callable[[Config, Any, bool], dict[str, Any]]
    demands: Callable[[Config], list[Demand]] = no_demands  # what it needs of the cluster, phase by phase
    progress: Callable[[Config], State] | None = None  # default: folder_state
    summary: Callable[[dict[str, Any]], str] | None = None  # default: its scalar fields
    needs_ray: bool = True
    in_run: bool = True  # part of `selfcorrect run`; otherwise only run by name
    always: bool = False  # cheap and derived from other stages' output: redone every time, never skipped
    skip_in_run: Callable[[Config], str | None] | None = None  # why `selfcorrect run` leaves it out, if it does
    object_storage: bool = False  # runs with run_dir on object storage (s3://...)

    def output(self, cfg: Config) -> StageDir:
        return StageDir(cfg.stage_dir(self.name))

    def state(self, cfg: Config) -> State:
        return (self.progress or folder_state(self.name))(cfg)

    def describe(self, summary: dict[str, Any]) -> str:
        """The line printed when the stage finishes; a summary of another shape gets its scalar fields."""
        if self.summary is not None:
            try:
                return self.summary(summary)
            except (AttributeError, KeyError, TypeError, ValueError):
                pass
        scalars = [
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in summary.items()
            if isinstance(v, (int, float, str))
        ]
        return f"{self.name}: {', '.join(scalars)}"


#: The stages in the order ``selfcorrect run`` takes them (``cluster.stages`` registers them).
STAGES: Registry[Stage] = Registry("stage")


def register(stage: Stage) -> Stage:
    return STAGES.register(stage.name, stage)


def check_run_dir(cfg: Config, stages: list[Stage]) -> str | None:
    """Refuse, before any stage runs, a run_dir on object storage that a stage cannot use or that cannot be
    written (``StorageError``); for one that can, return where the logs go instead (they stay on local disk)."""
    run_dir = as_location(cfg.run_dir)
    if not isinstance(run_dir, ObjectPath):
        return None
    unsupported = [s.name for s in stages if not s.object_storage]
    if unsupported:
        raise StorageError(
            f"run_dir {run_dir}: the {', '.join(unsupported)} stage{'s' if len(unsupported) > 1 else ''} "
            f"cannot write to object storage; use a local run_dir for {'them' if len(unsupported) > 1 else 'it'}"
        )
    check_writable(run_dir)
    return str(local_cache(run_dir, "logs"))
