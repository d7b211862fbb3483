"""The generate stage: prompts in, sample rows out, under ``RUN_DIR/generate/``.

``plan_generate`` does everything that can fail on bad input — reading and checking the prompts,
resolving the model, measuring every prompt against the context — before Ray starts and before
anything is written. ``run_generate`` then runs the pending shards on the vLLM actor pool.

Prompts too long for the context are refused as a whole (the error lists them): a run that
silently lost or truncated prompts would be worse than one that asks for a bigger
``generate.engine.max_model_len`` or a cleaned prompt file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen import metrics, storage
from datagen.config import TEACHER_PLACEMENT, GenerateConfig, PromptsConfig
from datagen.engine import GenerationWorker, engine_env
from datagen.images import ImageStore, store_location
from datagen.models import resolve_model
from datagen.pipeline import ActorPool, run_shard_stage
from datagen.prompts import PromptError, load_prompts
from datagen.records import Prompt
from datagen.shards import StageDir
from datagen.storage import Location
from datagen.vision import VisionPrompter, check_image_prompts, is_vision_model, max_images


@dataclass
class GeneratePlan:
    prompts: list[Prompt]
    model: str
    model_path: str
    model_cache: str
    seed: int
    cfg: GenerateConfig
    fingerprint: dict[str, Any]
    selection: dict[str, int] | None = None  # prompts.pass_rate: kept, and left out by reason

    def shards(self) -> list[list[Prompt]]:
        size = self.cfg.shard_size
        return [self.prompts[i : i + size] for i in range(0, len(self.prompts), size)]


def _context_length(model_path: str, cfg: GenerateConfig) -> int:
    if cfg.engine.max_model_len is not None:
        return cfg.engine.max_model_len
    local = Path(model_path, "config.json")  # read as JSON where it says: AutoConfig imports torch
    try:
        n = json.loads(local.read_text()).get("max_position_embeddings") if local.is_file() else None
    except (OSError, ValueError, AttributeError):  # AttributeError: not a JSON object
        n = None  # AutoConfig reads it again and says what is wrong with the file
    if isinstance(n, int):
        return n
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return int(getattr(config, "max_position_embeddings", 2048))


def prompt_tokenizer(model_path: str) -> Any:
    """The model's tokenizer, for measuring prompts on the driver.

    A folder with a ``tokenizer.json`` is loaded by the generic fast tokenizer, which reads the same files
    (vocabulary, special tokens, chat template) as the model's own class. ``AutoTokenizer`` first reads
    the model's config, and that imports torch: 5.0 s of CPU to load SmolLM2's tokenizer, against 1.7 s
    this way. Elsewhere (a hub name, a tokenizer without ``tokenizer.json``) ``AutoTokenizer``.
    """
    if Path(model_path, "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(model_path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def check_lengths(prompts: list[Prompt], model_path: str, cfg: GenerateConfig) -> None:
    """Refuse prompts whose first turn and its answer cannot fit in the model's context (images included)."""
    vision = VisionPrompter(model_path) if is_vision_model(model_path) else None
    tokenizer = prompt_tokenizer(model_path) if vision is None else None
    limit = _context_length(model_path, cfg)
    too_long = []
    for p in prompts:
        conv = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + p.messages
        if vision is not None:
            n = vision.length(conv, [(s.width, s.height) for s in p.image_sources])
        else:
            assert tokenizer is not None
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n + cfg.max_tokens > limit:
            images = f", {len(p.images)} image(s); {p.origin}" if p.images else ""
            too_long.append(f"{p.prompt_id} ({n} tokens{images})")
    if too_long:
        shown = ", ".join(too_long[:5]) + (f" and {len(too_long) - 5} more" if len(too_long) > 5 else "")
        raise PromptError(
            f"{len(too_long)} prompt(s) do not fit the context of {limit} tokens with "
            f"generate.max_tokens={cfg.max_tokens}: {shown}. Shorten them, lower generate.max_tokens, "
            "or raise generate.engine.max_model_len."
        )


def plan_generate(
    prompts_cfg: PromptsConfig, cfg: GenerateConfig, model: str, model_cache: str, seed: int
) -> GeneratePlan:
    selection: Counter = Counter()
    prompts = load_prompts(prompts_cfg, selection)
    plan = plan_generate_prompts(prompts, prompts_cfg.model_dump(), cfg, model, model_cache, seed)
    if prompts_cfg.pass_rate is not None:  # prompts left out for want of signal, counted in the summary
        plan.selection = dict(sorted(selection.items()))
    return plan


def plan_generate_prompts(
    prompts: list[Prompt], source: dict[str, Any], cfg: GenerateConfig, model: str, model_cache: str, seed: int
) -> GeneratePlan:
    """The plan for prompts already loaded; ``source`` says where they came from (for the fingerprint)."""
    model_path = resolve_model(model, model_cache)
    check_image_prompts(prompts, model, model_path)
    if cfg.teacher is not None and any(p.images for p in prompts):
        raise PromptError("generate.teacher does not take prompts with images; run SelFee on text prompts")
    check_lengths(prompts, model_path, cfg)
    ids = hashlib.sha256("\n".join(p.prompt_id for p in prompts).encode()).hexdigest()
    # What changes the output; engine placement (actors, CPUs, GPUs, cache size) does not.
    gen = cfg.model_dump(exclude={"engine": True, "teacher": TEACHER_PLACEMENT})
    fingerprint = {
        "model": model,
        "seed": seed,
        "prompts": source,
        "prompt_ids_sha256": ids,
        "generate": gen,
        "dtype": cfg.engine.dtype,
        "max_model_len": cfg.engine.max_model_len,
    }
    if any(p.images for p in prompts):  # the pictures themselves, not only their prompts' ids
        fingerprint["images_sha256"] = hashlib.sha256(
            "\n".join(f"{p.prompt_id}:{','.join(p.images)}" for p in prompts).encode()
        ).hexdigest()
    return GeneratePlan(prompts, model, model_path, model_cache, seed, cfg, json.loads(json.dumps(fingerprint)))


def run_generate(
    plan: GeneratePlan,
    out: StageDir,
    overwrite: bool = False,
    tags: dict[str, str] | None = None,
    images: Location | None = None,
) -> dict[str, Any]:
    """Generate every pending shard, then mark the stage done. Needs Ray initialised.

    ``tags`` label the stage's Ray metrics (``datagen.metrics.stage_tags``; default: from ``out``'s path).
    ``images`` is the run's image store (default: ``images/`` beside ``out``): the prompts' images are
    copied there once, before the first shard, and the workers read them from there by id.
    """
    out.start(plan.fingerprint, overwrite=overwrite)
    store = images if images is not None else store_location(out.path.parent)
    image_count = ImageStore(store).put([s for p in plan.prompts for s in p.image_sources])
    shards = plan.shards()
    done = out.completed_shards()
    tasks = [
        {"shard": i, "prompts": [p.to_row() for p in shard]} for i, shard in enumerate(shards) if i not in done
    ]
    engine = plan.cfg.engine
    generate = plan.cfg.model_dump()
    if generate["teacher"] is not None and generate["teacher"]["cache_dir"] is None:
        # Outside the stage directory, so even --overwrite reuses the teacher's paid-for answers. A run on
        # object storage keeps it on local disk: one small file per request is no job for an object store.
        generate["teacher"]["cache_dir"] = str(storage.local_cache(out.path.parent, "teacher_cache"))
    started = time.perf_counter()
    started_at = time.time()
    manifest = run_shard_stage(
        out,
        tasks,
        GenerationWorker,
        {
            "model": plan.model,
            "model_cache": plan.model_cache,
            "generate": generate,
            "seed": plan.seed,
            "tags": tags or metrics.stage_tags(out.path),
            "image_dir": str(store),
            "max_images": max_images(plan.prompts),
        },
        ActorPool(
            min_actors=engine.min_actors,
            max_actors=min(engine.max_actors, max(1, len(tasks))),
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus,
            env_vars=engine_env(engine),
            max_restarts=engine.max_restarts,
        ),
        desc="generate",
    )
    seconds = time.perf_counter() - started
    table = out.read(columns=["prompt_id", "sample_idx", "generated_tokens"])
    keys = set(zip(table["prompt_id"].to_pylist(), table["sample_idx"].to_pylist(), strict=True))
    expected = len(plan.prompts) * plan.cfg.n
    if len(keys) != table.num_rows or table.num_rows != expected:
        raise RuntimeError(
            f"{out.path}: expected {expected} unique samples, found {table.num_rows} rows with "
            f"{len(keys)} unique keys"
        )
    new_tokens = sum(m["stats"]["generated_tokens"] for m in manifest)
    worker_seconds = sum(m["stats"]["generate_seconds"] for m in manifest)
    engine_seconds = sum(m["stats"]["engine_seconds"] for m in manifest)
    summary = {
        "prompts": len(plan.prompts),
        "samples": table.num_rows,
        "shards": len(shards),
        "shards_this_run": len(manifest),
        "generated_tokens": sum(table["generated_tokens"].to_pylist()),
        "tokens_this_run": new_tokens,
        "wall_seconds_this_run": seconds,
        "tokens_per_s_this_run": new_tokens / seconds if seconds > 0 else None,
        # per actor-second: inside vllm.LLM.generate only, and with the turn logic around it
        "engine_tokens_per_s": new_tokens / engine_seconds if engine_seconds > 0 else None,
        "worker_tokens_per_s": new_tokens / worker_seconds if worker_seconds > 0 else None,
        "dtype": next((m["stats"].get("dtype") for m in manifest if m["stats"].get("dtype")), None),
        "worker_startup_seconds": max((m["stats"]["worker_startup_seconds"] for m in manifest), default=None),
        # Ray Data planning, actor start, imports and engine start: until the first engine was ready
        "startup_seconds": min((m["stats"]["worker_ready_at"] for m in manifest), default=started_at) - started_at,
    }
    if plan.selection is not None:
        summary["prompt_selection"] = plan.selection
    if image_count or any(p.images for p in plan.prompts):
        summary["images_stored_this_run"] = image_count
    if plan.cfg.teacher is not None:
        for key in ("teacher_calls", "teacher_cache_hits", "teacher_retries", "teacher_errors"):
            summary[f"{key}_this_run"] = sum(m["stats"].get(key, 0) for m in manifest)
    out.mark_done(summary)
    return summary
