"""Example rows for the report: a few eval problems, their images, and each model's two attempts.

Read from the eval's judged rows (``RUN_DIR/eval/LABEL/judge/``) when they are there — the report
stays buildable from ``eval/metrics.json`` alone, without examples. The first problems in
``prompt_id`` order are shown (sample 0 of each), the same problems for every model. Their images
come from the run's image store, shrunk to thumbnails (PNG, at most ``THUMBNAIL`` pixels a side)
that lie beside the report and are inlined in ``report.html``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from datagen.images import ImageError, ImageStore, store_location
from datagen.shards import StageDir
from datagen.storage import Location

EXAMPLES = 3
THUMBNAIL = 192
TEXT_LIMIT = 400  # characters of an attempt shown


@dataclass
class Example:
    prompt_id: str
    question: str
    reference: str | None
    images: list[str]  # ids in the run's image store
    # model label -> (attempt 1, its score, attempt 2, its score)
    attempts: dict[str, tuple[str, float | None, str, float | None]] = field(default_factory=dict)


def _rows(run: Location, label: str, judge: str) -> dict[str, dict[str, Any]]:
    stage = StageDir(run / "eval" / label / "judge")
    if not stage.done():
        return {}
    names = set(stage.dataset().schema.names)
    wanted = ["prompt_id", "sample_idx", "messages", "images", "reference", "attempt1", "attempt2",
              f"{judge}_score1", f"{judge}_score2"]  # fmt: skip
    rows = stage.read(columns=[c for c in wanted if c in names]).to_pylist()
    return {r["prompt_id"]: r for r in rows if r["sample_idx"] == 0}


def _clip(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + " …"


def read_examples(run: Location, metrics: dict[str, Any], count: int = EXAMPLES) -> list[Example]:
    """The first ``count`` eval problems with every model's attempts (none when the rows are not there)."""
    judge = (metrics.get("eval") or {}).get("judge") or "verifier"
    by_label = {label: _rows(run, label, judge) for label in metrics.get("models", {})}
    if not by_label or not all(by_label.values()):
        return []
    first = next(iter(by_label.values()))
    out = []
    for pid in sorted(first)[:count]:
        row = first[pid]
        users = [m["content"] for m in row.get("messages") or [] if m["role"] == "user"]
        ex = Example(pid, users[-1] if users else "", row.get("reference"), list(row.get("images") or []))
        for label, rows in by_label.items():
            r = rows.get(pid)
            if r is not None:
                a1, a2 = _clip(r.get("attempt1")), _clip(r.get("attempt2"))
                ex.attempts[label] = (a1, r.get(f"{judge}_score1"), a2, r.get(f"{judge}_score2"))
        out.append(ex)
    return out


def thumbnails(run: Location, examples: list[Example]) -> dict[str, bytes]:
    """``example-<id prefix>.png`` -> a PNG thumbnail of each example image the store holds."""
    store = ImageStore(store_location(run))
    out = {}
    for ex in examples:
        for iid in ex.images:
            try:
                picture = store.picture(iid).copy()
            except (ImageError, OSError):
                continue  # the report shows the text without it
            picture.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            out[thumbnail_name(iid)] = buf.getvalue()
    return out


def thumbnail_name(iid: str) -> str:
    return f"example-{iid[:16]}.png"
