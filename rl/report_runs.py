"""How each evaluated model was made: the runs behind the models a comparison evaluates.

A run that evaluates other runs' models names each by its folder, ``RUN/train/model``, and the eval
writes that name into ``metrics.json`` (``models.LABEL.model``). Where ``RUN`` is a run directory
(it holds the ``config.yaml`` a run writes, or ``train/_SUCCESS.json``), the report reads from it
what made the model: the algorithm, generate mode and builder of its resolved config, the training
set and optimizer steps of its train stage's summary, the wall seconds of the stages that made the
model (generate, judge, build, train: the run's own eval is no cost of its model) and the training
curves of ``train/metrics.jsonl``. A model named by a hub name or a plain folder has no such run.

A relative name is read from where the report runs, as the eval read it. The other runs may be on
object storage (``datagen.storage``); a file of theirs that is missing or cannot be read is named in
its row's notes, and the rest of the row and the report are drawn without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datagen import storage
from datagen.storage import Location
from rl.report import (
    CONFIG_FILE,
    STAGE_SECONDS,
    TRAIN_LOG_FILE,
    Block,
    Heading,
    Image,
    Para,
    Table,
    read_train_log,
    seconds,
    training_summary,
)

MAKING = ("generate", "judge", "build", "train")  # the stages whose wall time is the cost of the model
PLOT_PREFIX = "training-"  # each run's training plot: training-LABEL.png beside the report


@dataclass
class TrainedRun:
    """One evaluated model's run: what could be read of it, and a note for each file that could not."""

    label: str
    run_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_of(model: str) -> Location | None:
    """``RUN`` of a model named ``RUN/train/model`` (a folder or a URI); None for any other name."""
    try:
        where = storage.as_location(model)
    except ValueError:
        return None
    if where.name != "model" or where.parent.name != "train":
        return None
    return where.parent.parent


def _same(a: Location, b: Location) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return str(a) == str(b)


def _problem(err: BaseException) -> str:
    lines = [x for x in str(err).splitlines() if x.strip()]
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def _read(path: Location, parse: Any, notes: list[str], name: str, required: bool = True) -> Any:
    """``parse(bytes)`` of the file, or None with a note when it is unreadable, of the wrong shape or (if
    ``required``) missing."""
    try:
        if not storage.exists(path):
            if required:
                notes.append(f"no {name}")
            return None
        found = parse(storage.read_bytes(path))
    except (OSError, ValueError, yaml.YAMLError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        notes.append(f"{name} unreadable ({_problem(e)})")
        return None
    if not isinstance(found, dict):
        notes.append(f"{name} unreadable (not a mapping)")
        return None
    return found


def read_trained_run(label: str, run: Location) -> TrainedRun | None:
    """What ``run`` says about the model it trained; None when ``run`` is no run directory."""
    found = TrainedRun(label, str(run))
    try:
        if not (storage.exists(run / CONFIG_FILE) or storage.exists(run / "train" / "_SUCCESS.json")):
            return None
    except (OSError, ValueError) as e:  # object storage that cannot be asked: a row that says so
        found.notes.append(f"cannot be read ({_problem(e)})")
        return found
    found.config = _read(run / CONFIG_FILE, yaml.safe_load, found.notes, CONFIG_FILE) or {}
    for stage in MAKING:  # every run trains; the data stages are an offline algorithm's only
        name = f"{stage}/_SUCCESS.json"
        summary = _read(run / name, json.loads, found.notes, name, required=stage == "train")
        if summary is not None:
            found.stages[stage] = summary
    try:
        found.train_log = read_train_log(run / TRAIN_LOG_FILE)
    except (OSError, ValueError) as e:
        found.notes.append(f"{TRAIN_LOG_FILE} unreadable ({_problem(e)})")
    else:
        if not found.train_log:
            found.notes.append(f"no training steps in {TRAIN_LOG_FILE}")
    return found


def read_trained_runs(metrics: dict[str, Any], own: Location) -> list[TrainedRun]:
    """The runs behind the models of ``metrics.json``, in its order; this run's own model is left out (the
    report's own sections show it)."""
    runs = []
    for label, m in metrics["models"].items():
        run = run_of(str(m.get("model") or ""))
        if run is None or _same(run, own):
            continue
        found = read_trained_run(label, run)
        if found is not None:
            runs.append(found)
    return runs


# --- the section ---------------------------------------------------------------------------------


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)  # type: ignore[assignment]
    return tree


def _offline(algorithm: str | None, stages: dict[str, dict[str, Any]]) -> bool:
    """Whether the model was trained on generate -> judge -> build data: as the stages' summaries say, else
    as the algorithm does (``TrainAlgorithm.offline_data``)."""
    if "build" in stages or "episodes" in stages.get("train", {}):
        return "build" in stages
    from rl.algorithms import ALGORITHMS

    try:
        return bool(ALGORITHMS.get(algorithm).offline_data) if algorithm else True
    except (ValueError, ImportError, AttributeError):  # a plug-in that cannot be imported here
        return True


def _cells(run: TrainedRun) -> list[str]:
    """method, data, training set, optimizer steps of one run."""
    train, build = run.stages.get("train", {}), run.stages.get("build", {})
    algorithm = train.get("algorithm") or _get(run.config, "train.algorithm")
    sft = train.get("sft_first") or {}
    method = str(algorithm or "–") + (" after SFT" if sft or _get(run.config, "train.sft_first") else "")
    steps = str(train.get("steps", "–"))
    if sft:
        steps += f" + {sft.get('steps', '–')} SFT"
    if "stage1_steps" in train:
        steps += f" (stage I {train['stage1_steps']}, stage II {train.get('stage2_steps', '–')})"
    if algorithm is None and not run.stages:  # nothing says how it was trained: not guessed
        return ["–", "–", "–", steps]
    if not _offline(algorithm, run.stages):
        size = f"{train.get('episodes', '–')} episodes on {train.get('prompts', '–')} prompts"
        return [method, "on-policy rollouts", size, steps]
    mode = _get(run.config, "generate.mode") or "–"
    builder = build.get("builder") or _get(run.config, "build.builder") or "–"
    kind = build.get("kind") or ("sft" if algorithm == "sft" else "pairs")
    noun = "pairs" if kind == "pairs" else "examples"
    data = train.get("data") or {}
    count = data.get("examples", train.get("pairs", build.get("pairs_out")))
    size = f"{'–' if count is None else count} {noun}"
    if data.get("too_long_dropped"):
        size += f" ({data['too_long_dropped']} too long, left out)"
    return [method, f"{mode} → {builder}", size, steps]


def _stage_seconds(run: TrainedRun) -> list[float | None]:
    """Wall seconds of each stage that made the model (its last run); train's include an SFT run before it."""
    out = []
    for stage in MAKING:
        summary = run.stages.get(stage)
        s = summary.get(STAGE_SECONDS[stage]) if summary else None
        sft = (summary or {}).get("sft_first") or {}
        if isinstance(s, (int, float)) and isinstance(sft.get("seconds"), (int, float)):
            s += sft["seconds"]
        out.append(s if isinstance(s, (int, float)) else None)
    return out


def runs_table(runs: list[TrainedRun]) -> Table:
    rows = []
    for run in runs:
        times = _stage_seconds(run)
        spent = [s for s in times if s is not None]
        total = seconds(sum(spent)) if spent else "–"
        last = training_summary(run.train_log) if run.train_log else "–"
        notes = "; ".join(run.notes) or "–"
        rows.append([run.label, run.run_dir, *_cells(run), *(seconds(s) for s in times), total, last, notes])
    header = ["model", "run", "method", "data", "training set", "optimizer steps"]
    header += [f"{stage} s" for stage in MAKING] + ["total s", "last training numbers", "notes"]
    return Table(header, rows)


def plot_name(label: str) -> str:
    return PLOT_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", label) + ".png"


def draw(runs: list[TrainedRun]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Each run's training plot (``report_plots.plot_training``) titled with its model's label, and alt texts."""
    from rl.report_plots import plot_training

    pngs, alts = {}, {}
    for run in runs:
        name = plot_name(run.label)
        if name in pngs:  # two labels alike but for characters a file name cannot hold
            continue
        png = plot_training(run.train_log, title=f"{run.label}: training per optimizer step ({run.run_dir})")
        if png is not None:
            pngs[name], alts[name] = png, f"Training of {run.label} per optimizer step"
    return pngs, alts


def runs_blocks(runs: list[TrainedRun], images: dict[str, str]) -> list[Block]:
    """The section: one row per model another run trained, then each of those runs' training plot."""
    if not runs:
        return []
    blocks: list[Block] = [
        Heading(2, "How each model was trained"),
        Para(
            "Each of these models was trained by another run (RUN/train/model), read from that run's "
            "config.yaml, its stages' _SUCCESS.json and train/metrics.jsonl. Wall seconds are each stage's "
            "last run (an SFT run before training counted in train); total = generate + judge + build + "
            "train, the cost of the model (its run's own eval left out)."
        ),
        runs_table(runs),
    ]
    for run in runs:
        name = plot_name(run.label)
        if name in images:
            blocks += [Heading(3, f"Training of {run.label}"), Image(name, images[name])]
    return blocks
