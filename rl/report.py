"""The run's report: ``RUN_DIR/report/report.md`` and a self-contained ``report.html``, with PNG plots.

Every number about the models is read from ``RUN_DIR/eval/metrics.json`` as the eval stage wrote it
and only formatted here (percentages with one decimal, p-values with three significant digits):
the report can be rebuilt anywhere from that file alone. The rest is context when it is there —
the resolved config (``RUN_DIR/config.yaml``), data sizes and wall times from each stage's
``_SUCCESS.json``, the training curves from ``RUN_DIR/train/metrics.jsonl``, a few example
problems with their images and each model's attempts (``rl.report_examples``), and for each model
that another run trained, how that run made it and at what cost (``rl.report_runs``).

The run directory may be on object storage (``s3://...``): everything is read through
``datagen.storage``, rendered in memory and published to ``RUN_DIR/report/`` one whole file at a time.

The document is a list of blocks (headings, paragraphs, tables, images, code) built from those
dicts; Markdown and HTML are two renderings of the same list, so they cannot disagree.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datagen import storage
from datagen.shards import StageInputError, atomic_write_bytes
from datagen.storage import Location
from rl.report_examples import Example, read_examples, thumbnail_name

if TYPE_CHECKING:
    from rl.report_runs import TrainedRun

METRICS_FILE = "eval/metrics.json"
TRAIN_LOG_FILE = "train/metrics.jsonl"
CONFIG_FILE = "config.yaml"
REPORT_DIR = "report"
# The stages whose _SUCCESS.json the report reads, and the key that holds each one's wall time.
STAGE_SECONDS = {
    "generate": "wall_seconds_this_run",
    "judge": "wall_seconds_this_run",
    "build": "seconds",
    "train": "seconds",
    "eval": "seconds",
}
INTERVALS = ("acc_t1", "acc_t2", "delta", "delta_i2c", "delta_c2i")
HEADERS = {
    "acc_t1": "Acc@t1 %",
    "acc_t2": "Acc@t2 %",
    "delta": "Δ(t1,t2) pp",
    "delta_i2c": "Δi→c %",
    "delta_c2i": "Δc→i %",
}


# --- reading a run -------------------------------------------------------------------------------


@dataclass
class RunFacts:
    """What the report is made of: the eval metrics and whatever context the run dir holds."""

    metrics: dict[str, Any]
    config_text: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str = ""
    examples: list[Example] = field(default_factory=list)
    trained_runs: list[TrainedRun] = field(default_factory=list)  # other runs that trained evaluated models


def read_metrics(path: Location) -> dict[str, Any]:
    if not storage.exists(path):
        raise StageInputError(f"{path}: no eval metrics (run the eval stage first)")
    try:
        metrics = storage.read_json(path)
    except json.JSONDecodeError as e:
        raise StageInputError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(metrics, dict) or metrics.get("version") != 1 or not isinstance(metrics.get("models"), dict):
        raise StageInputError(f"{path}: not a version 1 metrics file (expected 'version': 1 and 'models')")
    return metrics


def read_train_log(path: Location) -> list[dict[str, Any]]:
    """Per-step training metrics, one per step: a resumed run logs some steps twice; the last wins."""
    if not storage.exists(path):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in storage.read_bytes(path).decode().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a killed writer
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def read_run(run_dir: str | Path | storage.ObjectPath) -> RunFacts:
    """Everything the report shows; only ``eval/metrics.json`` is required. The run may be on object storage."""
    from rl.report_runs import read_trained_runs  # a module built on this one: imported when used

    run = storage.as_location(run_dir)
    metrics = read_metrics(run / METRICS_FILE)
    config = run / CONFIG_FILE
    stages = {}
    for name in STAGE_SECONDS:
        success = run / name / "_SUCCESS.json"
        if storage.exists(success):
            stages[name] = storage.read_json(success)
    return RunFacts(
        metrics=metrics,
        config_text=storage.read_bytes(config).decode() if storage.exists(config) else None,
        stages=stages,
        train_log=read_train_log(run / TRAIN_LOG_FILE),
        run_dir=str(run),
        examples=read_examples(run, metrics),
        trained_runs=read_trained_runs(metrics, run),
    )


# --- formatting ----------------------------------------------------------------------------------


def pct(x: float | None, signed: bool = False) -> str:
    """A share as a percentage with one decimal (signed for differences); '–' when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def interval(m: dict[str, Any] | None, signed: bool = False) -> str:
    """``value [low, high]`` in percent."""
    if not m:
        return "–"
    return f"{pct(m['value'], signed)} [{pct(m['low'], signed)}, {pct(m['high'], signed)}]"


def p_value(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def seconds(s: float | None) -> str:
    return "–" if s is None else f"{s:.1f}"


# --- the document --------------------------------------------------------------------------------


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    name: str  # file name under the report dir
    alt: str


@dataclass
class Code:
    text: str
    lang: str = ""


Block = Heading | Para | Table | Image | Code


def models_table(metrics: dict[str, Any]) -> Table:
    """The two-attempt table: one row per model, in metrics.json's order, 95% intervals in brackets."""
    rows = []
    for label, m in metrics["models"].items():
        cells = [interval(m.get(k), signed=k == "delta") for k in INTERVALS]
        rows.append([label, *cells, str(m.get("unjudgeable", 0)), str(m.get("samples", ""))])
    return Table(["model", *(HEADERS[k] for k in INTERVALS), "unjudgeable", "samples"], rows)


def transitions_table(metrics: dict[str, Any]) -> Table:
    rows = []
    for label, m in metrics["models"].items():
        t = m.get("transitions") or {}
        rows.append([label, *(str(t.get(k, "–")) for k in ("c2c", "c2i", "i2c", "i2i"))])
    return Table(["model", "right→right", "right→wrong", "wrong→right", "wrong→wrong"], rows)


def comparisons_table(metrics: dict[str, Any]) -> Table | None:
    comps = metrics.get("comparisons") or []
    if not comps:
        return None
    rows = [
        [c["model"], c["against"], c["metric"], str(c["b"]), str(c["c"]), p_value(c.get("p_value")), c.get("test", "")]
        for c in comps
    ]
    return Table(["model", "against", "metric", "b", "c", "p-value", "test"], rows)


def pass_at_k_table(metrics: dict[str, Any]) -> Table | None:
    # pass@k is there for each k ≤ the judged samples of a problem: none when every k is above that
    found = {label: p for label, m in metrics["models"].items() if any((p := m.get("pass_at_k") or {}).values())}
    if not found:
        return None
    ks = sorted({int(k) for p in found.values() for turn in p.values() for k in turn})
    rows = []
    for label, p in found.items():
        for turn in ("t1", "t2"):
            if turn in p:
                rows.append([label, turn, *(pct(p[turn].get(str(k))) for k in ks)])
    return Table(["model", "attempt", *(f"pass@{k} %" for k in ks)], rows)


def pairwise_table(metrics: dict[str, Any]) -> Table | None:
    pairs = metrics.get("pairwise") or []
    if not pairs:
        return None
    rows = [
        [p["model"], p["against"], p["judge"], *(pct(p[k]) for k in ("win", "tie", "loss", "score")), str(p["n"])]
        for p in pairs
    ]
    return Table(["model", "against", "judge", "win %", "tie %", "loss %", "score %", "n"], rows)


def selfee_table(metrics: dict[str, Any]) -> Table | None:
    found = {label: m["selfee_k"] for label, m in metrics["models"].items() if m.get("selfee_k")}
    if not found:
        return None
    ks = sorted({int(k) for s in found.values() for k in s})
    rows = [[label, *(interval(s.get(str(k))) for k in ks)] for label, s in found.items()]
    return Table(["model", *(f"K={k} %" for k in ks)], rows)


def speed_table(metrics: dict[str, Any]) -> Table:
    rows = []
    for label, m in metrics["models"].items():
        rate = m.get("problems_per_s")
        rows.append([label, m.get("model", ""), str(m.get("problems", "")), seconds(m.get("seconds")),
                     "–" if rate is None else f"{rate:.2f}"])
    return Table(["model", "weights", "problems", "eval seconds", "problems/s"], rows)


def data_table(stages: dict[str, dict[str, Any]]) -> Table | None:
    rows = []
    gen, build, train = stages.get("generate"), stages.get("build"), stages.get("train")
    if gen:
        rows += [[key, str(gen.get(key, "–")), "generate"] for key in ("prompts", "samples")]
    judge = stages.get("judge")
    if judge:
        rows.append(["judged rows", str(judge.get("rows", "–")), "judge"])
        for name, j in (judge.get("judges") or {}).items():
            rows.append([f"rows flagged by {name}", str(j.get("rows_flagged", "–")), "judge"])
    if build:
        noun = "pairs" if build.get("kind") == "pairs" else "examples"
        rows.append([f"training {noun}", str(build.get("pairs_out", "–")), f"build ({build.get('builder', '')})"])
    if train:
        rows.append(["optimizer steps", str(train.get("steps", "–")), f"train ({train.get('algorithm', '')})"])
    return Table(["what", "count", "stage"], rows) if rows else None


def times_table(stages: dict[str, dict[str, Any]]) -> Table | None:
    rows = [[name, seconds(stages[name].get(key))] for name, key in STAGE_SECONDS.items() if name in stages]
    return Table(["stage", "wall seconds (its last run)"], rows) if rows else None


def training_summary(train_log: list[dict[str, Any]]) -> str:
    last = train_log[-1]
    parts = [f"{len(train_log)} logged steps, last step {last['step']}"]
    for key in ("loss", "rewards/margins", "rewards/accuracies", "reward_t1", "reward_t2", "delta", "kl_t1", "kl_t2"):
        if key in last:
            parts.append(f"final {key} {last[key]:.4g}")
    return "; ".join(parts) + "."


def example_blocks(examples: list[Example], images: dict[str, str]) -> list[Block]:
    """Each example: the question, its images (those drawn), the reference, and every model's attempts."""
    mark = {None: "–", True: "right", False: "wrong"}

    def verdict(score: float | None) -> str:
        return mark[None if score is None else score >= 0.5]

    blocks: list[Block] = []
    for ex in examples:
        blocks += [Heading(3, ex.prompt_id), Para(ex.question)]
        blocks += [Image(n, images[n]) for n in (thumbnail_name(i) for i in ex.images) if n in images]
        blocks.append(Para(f"Reference answer: {ex.reference if ex.reference is not None else '–'}"))
        rows = [[label, a1, verdict(s1), a2, verdict(s2)] for label, (a1, s1, a2, s2) in ex.attempts.items()]
        blocks.append(Table(["model", "attempt 1", "", "attempt 2", ""], rows))
    return blocks


def describe_eval(metrics: dict[str, Any]) -> str:
    e = metrics.get("eval", {})
    return (
        f"Evaluated on {e.get('prompts', '?')}: {e.get('problems', '?')} problems, n={e.get('n', '?')} "
        f"sample(s) each, temperature {e.get('temperature', '?')}, up to {e.get('max_tokens', '?')} tokens per "
        f"attempt, judged by {e.get('judge', '?')}; 95% intervals: {e.get('interval', '?')} for accuracies, "
        "as metrics.json gives them for the differences."
    )


def report_blocks(facts: RunFacts, images: dict[str, str]) -> list[Block]:
    """The report as blocks; ``images`` maps each plot drawn (file name) to its alt text."""
    from rl.report_runs import runs_blocks

    metrics = facts.metrics
    blocks: list[Block] = [Heading(1, "Self-correction report"), Para(describe_eval(metrics))]
    if facts.run_dir:
        blocks.append(Para(f"Run directory: {facts.run_dir}"))
    blocks += [
        Heading(2, "Two attempts per problem"),
        Para(
            "Acc@t1 and Acc@t2: share of samples right at attempt 1 and 2. Δ(t1,t2) = Acc@t2 − Acc@t1 in "
            "percentage points; Δi→c: share wrong at attempt 1 and right at attempt 2; Δc→i: right, then "
            "wrong (SCoRe, Kumar et al. 2024). Unjudgeable samples (a judge could not score an attempt) "
            "are left out of the accuracies."
        ),
        models_table(metrics),
    ]
    review = metrics.get("eval", {}).get("review_prompt")
    if review:
        blocks += [Para("The prompt between the attempts:"), Code(review)]
    for name in ("accuracy.png", "transitions.png"):
        if name in images:
            blocks.append(Image(name, images[name]))
    blocks += [Heading(3, "Transitions (samples)"), transitions_table(metrics)]
    optional = [
        ("Compared with another model (McNemar, exact)", comparisons_table(metrics),
         "Paired by problem and sample: b = right under `model` and wrong under `against`, c = the reverse; "
         "the exact two-sided binomial test on b and c gives the p-value (McNemar 1947)."),
        ("pass@k (code)", pass_at_k_table(metrics),
         "Unbiased estimator of Chen et al. 2021, for each k up to the samples judged per problem."),
        ("Pairwise judge", pairwise_table(metrics), "score = win + tie / 2."),
        ("SelFee: accuracy after K enforced revisions", selfee_table(metrics), None),
    ]
    for title, table, note in optional:
        if table is not None:
            blocks += [Heading(2, title)] + ([Para(note)] if note else []) + [table]
            if title.startswith("SelFee") and "selfee.png" in images:
                blocks.append(Image("selfee.png", images["selfee.png"]))
    blocks += runs_blocks(facts.trained_runs, images)
    if facts.examples:
        blocks += [Heading(2, "Examples"), Para("Sample 0 of the first problems, with the judge's verdicts.")]
        blocks += example_blocks(facts.examples, images)
    blocks += [Heading(2, "Eval speed"), speed_table(metrics)]
    blocks.append(Heading(2, "Training"))
    if facts.train_log:
        blocks.append(Para(training_summary(facts.train_log)))
        if "training.png" in images:
            blocks.append(Image("training.png", images["training.png"]))
    elif facts.trained_runs:
        blocks.append(Para("This run trained no model of its own: the runs that did are above."))
    else:
        blocks.append(Para("No training metrics in this run (train/metrics.jsonl)."))
    data, times = data_table(facts.stages), times_table(facts.stages)
    if data:
        blocks += [Heading(2, "Data"), data]
    if times:
        blocks += [Heading(2, "Wall time"), times]
    if facts.config_text:
        blocks += [Heading(2, "Config"), Code(facts.config_text, "yaml")]
    return blocks


# --- rendering -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.name})")
        elif isinstance(b, Code):
            fence = "````" if "```" in b.text else "```"
            out.append(f"{fence}{b.lang}\n{b.text.rstrip()}\n{fence}")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; }
"""


def render_html(blocks: list[Block], images: dict[str, bytes]) -> str:
    """One HTML file: the same blocks, each plot inlined as a ``data:image/png`` URI."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", e(b.text)) + "</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(images[b.name]).decode()
            body.append(f'<p><img alt="{e(b.alt)}" src="data:image/png;base64,{data}"></p>')
        elif isinstance(b, Code):
            body.append(f"<pre><code>{e(b.text.rstrip())}</code></pre>")
    title = next((b.text for b in blocks if isinstance(b, Heading)), "report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def before_after(metrics: dict[str, Any]) -> str:
    """The short table the CLI prints at the end of a run: Acc@t1, Acc@t2 and Δ per model."""
    rows = [("model", "Acc@t1", "Acc@t2", "Δ")]
    for label, m in metrics["models"].items():
        rows.append((label, pct(m["acc_t1"]["value"]) + "%", pct(m["acc_t2"]["value"]) + "%",
                     pct(m["delta"]["value"], signed=True) + " pp"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


# --- writing -------------------------------------------------------------------------------------


def write_report(
    run_dir: str | Path | storage.ObjectPath, out_dir: str | Path | storage.ObjectPath | None = None
) -> dict[str, Any]:
    """Read the run, draw the plots and write report.md and report.html; return a summary.

    Everything is rendered in memory, then each file is published whole (a temporary file and a rename
    on disk, one upload on object storage): the plots first, report.md, and report.html last, so a
    report.html that is there is the whole report. Raises ``StageInputError`` when
    ``RUN_DIR/eval/metrics.json`` is missing or unreadable.
    """
    from rl import report_examples, report_plots, report_runs

    started = time.perf_counter()
    facts = read_run(run_dir)
    out = storage.as_location(out_dir) if out_dir is not None else storage.as_location(run_dir) / REPORT_DIR
    pngs = report_plots.draw_all(facts.metrics, facts.train_log)
    alts = {name: report_plots.TITLES[name] for name in pngs}
    runs_pngs, runs_alts = report_runs.draw(facts.trained_runs)
    pngs.update(runs_pngs)
    alts.update(runs_alts)
    shown = report_examples.thumbnails(storage.as_location(run_dir), facts.examples)
    pngs.update(shown)
    alts.update({name: "the problem's image" for name in shown})
    blocks = report_blocks(facts, alts)
    markdown, page = render_markdown(blocks).encode(), render_html(blocks, pngs).encode()
    storage.makedirs(out)
    for name, data in pngs.items():
        atomic_write_bytes(out / name, data)
    earlier = {n for n in storage.list_names(out) if n.startswith(report_runs.PLOT_PREFIX) and n.endswith(".png")}
    for name in (set(report_plots.TITLES) | earlier) - set(pngs):
        storage.remove(out / name)  # a plot an earlier report drew that has no data now
    atomic_write_bytes(out / "report.md", markdown)
    atomic_write_bytes(out / "report.html", page)
    return {
        "report": str(out / "report.md"),
        "html": str(out / "report.html"),
        "plots": sorted(pngs),
        "models": list(facts.metrics["models"]),
        "seconds": round(time.perf_counter() - started, 3),
    }
