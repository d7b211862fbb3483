"""The build stage: judged rows in RUN_DIR/judge/ -> a training set in RUN_DIR/build/."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pyarrow as pa

from datagen import storage
from datagen.shards import StageDir, StageInputError
from rl.builders import BuildResult, get_builder
from rl.config import BuildConfig


def _input_fingerprint(judge_dir: StageDir) -> str:
    """Names and sizes of the judged shards: a rebuilt judge stage invalidates the build."""
    h = hashlib.sha256()
    for path in judge_dir.shard_paths():
        h.update(f"{path.name}:{storage.size(path)};".encode())
    return h.hexdigest()[:16]


def read_rows(judge_dir: StageDir) -> list[dict[str, Any]]:
    if not judge_dir.done():
        raise StageInputError(f"{judge_dir.path}: no finished judge stage (run the judge stage first)")
    rows = judge_dir.read().to_pylist()
    rows.sort(key=lambda r: (r["prompt_id"], r["sample_idx"]))
    return rows


def summarize(result: BuildResult, builder: str, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    prompts_in = len({r["prompt_id"] for r in rows})
    prompts_out = len({e["prompt_id"] for e in result.examples})
    return {
        "builder": builder,
        "kind": result.kind,
        "rows_in": len(rows),
        "pairs_out": len(result.examples),
        "prompts_in": prompts_in,
        "prompts_out": prompts_out,
        # prompts whose samples gave nothing to learn from (no flip, all verdicts alike): compute spent
        # without signal, which prompts.pass_rate avoids next time
        "prompts_without_examples": prompts_in - prompts_out,
        "dropped": dict(sorted(result.dropped.items())),
        "notes": dict(sorted(result.notes.items())),
        "seconds": round(seconds, 3),
    }


def format_report(summary: dict[str, Any]) -> str:
    noun = "pairs" if summary["kind"] == "pairs" else "examples"
    head = f"build {summary['builder']}: {summary['rows_in']} rows in, {summary['pairs_out']} {noun} out"
    lines = [f"{head} ({summary['prompts_out']} of {summary['prompts_in']} prompts)"]
    lines += [f"  dropped {reason}: {n}" for reason, n in summary["dropped"].items() if n]
    lines += [f"  note {reason}: {n}" for reason, n in summary["notes"].items() if n]
    return "\n".join(lines)


def build_fingerprint(cfg: BuildConfig, judge_dir: StageDir) -> dict[str, Any]:
    """The settings and input that shape the build's output."""
    return {"build": cfg.model_dump(mode="json"), "input": _input_fingerprint(judge_dir)}


def run_build(
    cfg: BuildConfig, judge_dir: StageDir, out: StageDir, overwrite: bool = False, echo: bool = True
) -> dict[str, Any]:
    """Build the training set once; a completed build with the same settings is kept as is."""
    fingerprint = build_fingerprint(cfg, judge_dir)
    if out.done() and not overwrite:
        out.check(fingerprint)
        summary = out.summary()
        if echo:
            print(format_report(summary) + " (already built)")
        return summary
    start = time.perf_counter()
    rows = read_rows(judge_dir)
    builder = get_builder(cfg.builder)
    result = builder(rows, cfg)
    if not isinstance(result, BuildResult):
        raise TypeError(f"builder {cfg.builder!r} returned {type(result).__name__}, not a BuildResult")
    out.start(fingerprint, overwrite=overwrite)
    table = result.table()
    for i, offset in enumerate(range(0, max(table.num_rows, 1), cfg.shard_size)):
        out.write_shard(i, table.slice(offset, cfg.shard_size) if table.num_rows else table)
    summary = summarize(result, cfg.builder, rows, time.perf_counter() - start)
    out.mark_done(summary)
    if echo:
        print(format_report(summary))
    return summary


def read_built(build_dir: StageDir) -> pa.Table:
    if not build_dir.done():
        raise StageInputError(f"{build_dir.path}: no finished build (run the build stage first)")
    return build_dir.read()
