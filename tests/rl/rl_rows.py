"""Hand-made judged rows with the columns of the data contract, and a judged stage dir of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from datagen.records import SAMPLE_SCHEMA
from datagen.shards import StageDir

JUDGES = ("verifier", "embedding", "self_critic", "reward_model")


def judged_row(prompt_id: str, sample_idx: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in SAMPLE_SCHEMA.names}
    row.update(
        prompt_id=prompt_id,
        sample_idx=sample_idx,
        task="math",
        messages=[{"role": "user", "content": f"question {prompt_id}"}],
        reference=f"reference answer {prompt_id}",
        metadata="{}",
        mode="two_attempt",
    )
    for judge in JUDGES:
        for suffix in ("score1", "score2", "pref", "dup", "raw"):
            row[f"{judge}_{suffix}"] = None
        row[f"{judge}_error"] = ""
    row.update(values)
    return row


def judged_table(rows: list[dict[str, Any]]) -> pa.Table:
    fields = list(SAMPLE_SCHEMA)
    for judge in JUDGES:
        fields += [
            pa.field(f"{judge}_score1", pa.float64()),
            pa.field(f"{judge}_score2", pa.float64()),
            pa.field(f"{judge}_pref", pa.int8()),
            pa.field(f"{judge}_dup", pa.bool_()),
            pa.field(f"{judge}_raw", pa.string()),
            pa.field(f"{judge}_error", pa.string()),
        ]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def write_judged(path: Path, rows: list[dict[str, Any]]) -> StageDir:
    stage = StageDir(path)
    stage.start({"stage": "judge"})
    stage.write_shard(0, judged_table(rows))
    stage.mark_done({"rows": len(rows)})
    return stage


def toy_scl_rows(n_prompts: int, flips: bool = True) -> list[dict[str, Any]]:
    """Two-attempt rows where attempt 2 fixes attempt 1: a separable preference set."""
    rows = []
    for p in range(n_prompts):
        a, b = p % 7 + 2, p % 5 + 3
        rows.append(
            judged_row(
                f"p{p:03d}",
                0,
                messages=[{"role": "user", "content": f"What is {a}*{b}?"}],
                attempt1=f"{a}*{b} = {a * b + 1}. Banana banana.",
                attempt2=f"{a}*{b} = {a * b}.",
                verifier_score1=0.0,
                verifier_score2=1.0 if flips else 0.0,
            )
        )
    return rows
