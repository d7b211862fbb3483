"""Write the build stage's output in formats other trainers read: LLaMA-Factory pairwise and Alpaca.

LLaMA-Factory's pairwise Alpaca format is ``{"instruction", "input", "chosen", "rejected"}`` (plus
``system`` and ``history`` when the chat has them); Alpaca SFT is ``{"instruction", "input",
"output"}``. A ``dataset_info.json`` beside them registers both with LLaMA-Factory. A prompt with
images gets LLaMA-Factory's multimodal form: an ``<image>`` placeholder per image before the
instruction and ``images``, the paths of the pictures in the run's image store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datagen import storage
from datagen.images import store_location
from datagen.shards import StageDir, atomic_write_bytes, atomic_write_json
from rl.build import read_built

PAIRWISE_FILE = "llamafactory_pairwise.json"
ALPACA_FILE = "alpaca.json"


def _split_chat(messages: list[dict[str, str]]) -> dict[str, Any]:
    """The last user turn is the instruction; a system turn and earlier exchanges go alongside."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    out: dict[str, Any] = {"instruction": turns[-1]["content"], "input": ""}
    history = [
        [turns[i]["content"], turns[i + 1]["content"]]
        for i in range(0, len(turns) - 1, 2)
        if turns[i]["role"] == "user" and turns[i + 1]["role"] == "assistant"
    ]
    if system:
        out["system"] = system
    if history:
        out["history"] = history
    return out


def to_pairwise(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **_split_chat(row["prompt"]),
        "chosen": row["chosen"][-1]["content"],
        "rejected": row["rejected"][-1]["content"],
    }


def to_alpaca(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" in row:
        *prompt, answer = row["messages"]
        return {**_split_chat(prompt), "output": answer["content"]}
    return {**_split_chat(row["prompt"]), "output": row["chosen"][-1]["content"]}


def run_export(build_dir: StageDir, out_dir: str | Path | storage.ObjectPath) -> dict[str, Any]:
    """Write the exports under ``out_dir``; return the files written and their row counts."""
    import json

    rows = read_built(build_dir).to_pylist()
    store = store_location(build_dir.path.parent)
    with_images = any(r.get("images") for r in rows)

    def pictured(record: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        if with_images:
            ids = row.get("images") or []
            record["instruction"] = "<image>" * len(ids) + record["instruction"]
            record["images"] = [str(store / i) for i in ids]
        return record

    out = storage.as_location(out_dir)
    storage.makedirs(out)
    written: dict[str, int] = {}
    info: dict[str, Any] = {}
    if rows and "chosen" in rows[0]:
        pairwise = [pictured(to_pairwise(r), r) for r in rows]
        atomic_write_bytes(out / PAIRWISE_FILE, json.dumps(pairwise, indent=1).encode())
        written[PAIRWISE_FILE] = len(rows)
        info["selfcorrect_pairwise"] = {
            "file_name": PAIRWISE_FILE,
            "ranking": True,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "chosen": "chosen",
                "rejected": "rejected",
                "system": "system",
                "history": "history",
            },
        }
    alpaca = [pictured(to_alpaca(r), r) for r in rows]
    atomic_write_bytes(out / ALPACA_FILE, json.dumps(alpaca, indent=1).encode())
    written[ALPACA_FILE] = len(rows)
    info["selfcorrect_alpaca"] = {
        "file_name": ALPACA_FILE,
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "system": "system",
            "history": "history",
        },
    }
    if with_images:
        for entry in info.values():
            entry["columns"]["images"] = "images"
    atomic_write_json(out / "dataset_info.json", info)
    summary = {"dir": str(out), "files": written}
    atomic_write_json(out / "_SUCCESS.json", summary)
    return summary
