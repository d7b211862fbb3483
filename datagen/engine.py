"""The vLLM generation worker that runs inside each Ray Data actor.

One ``vllm.LLM`` per actor. Chat templates are applied here, so the token count of every turn is
known before it is sent: a turn whose conversation leaves no room in the context is not sent but
recorded with finish reason ``context``, and the row is kept.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from typing import Any

import pyarrow as pa

from datagen import metrics
from datagen.config import EngineConfig, GenerateConfig
from datagen.hardware import Dtype, resolve_dtype
from datagen.images import ImageStore
from datagen.models import resolve_model
from datagen.records import SAMPLE_SCHEMA, Prompt
from datagen.turns import Completion, Request, generate_rows
from datagen.vision import VisionPrompter, is_vision_model


def engine_kwargs(engine: EngineConfig, model_path: str, seed: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": engine.dtype,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enforce_eager": engine.enforce_eager,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "seed": seed,
    }
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.num_gpus == 0:
        # The CPU build crashes when a seeded request's prefill is split across steps ("CPU
        # Generator does not use offset"); whole-prompt prefill avoids the split.
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(engine.vllm_kwargs)
    return kwargs


def with_resolved_dtype(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Dtype]:
    """``vllm.LLM`` keyword arguments with dtype ``auto`` resolved for this process's device.

    Called where the engine starts (its actor), never on the driver: ``auto`` must follow the
    hardware that holds the weights. vLLM's own ``auto`` would take the checkpoint's dtype instead.
    """
    import torch

    # An actor given no GPU by Ray sees none (CUDA_VISIBLE_DEVICES is empty): this asks the right device.
    dtype = resolve_dtype(str(kwargs.get("dtype", "auto")), gpu=torch.cuda.is_available())
    return {**kwargs, "dtype": dtype.name}, dtype


def engine_env(engine: EngineConfig) -> dict[str, str]:
    """Environment for an engine process: log level, and on CPU the KV cache size and reserved cores."""
    # vLLM's INFO lines from every actor would drown the progress bars; VLLM_LOGGING_LEVEL wins.
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if engine.kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.kv_cache_gib)
    multiprocessing = engine.multiprocessing if engine.multiprocessing is not None else engine.num_gpus > 0
    # Each engine-core process imports vLLM and torch again (about 12 s on 2 cores); on CPU it buys no
    # overlap of scheduling with compute (measured: the same tokens/s in the actor's own process).
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    if engine.num_gpus == 0:
        # vLLM's CPU build keeps a core for its front end unless told otherwise: on a small machine
        # that halves throughput (2 cores: 77 -> 150 tokens/s for SmolLM2-135M when compute gets both).
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(engine.cpu_reserved_cores)
    return env


class VLLMEngine:
    """One ``vllm.LLM`` that completes ``Request`` batches (the policy, or a vLLM teacher)."""

    def __init__(
        self,
        model_path: str,
        engine: EngineConfig,
        cfg: GenerateConfig,
        seed: int,
        max_tokens: int,
        extra_kwargs: dict[str, Any] | None = None,
        images: ImageStore | None = None,
        max_images: int = 0,
    ):
        from vllm import LLM

        self.cfg = cfg
        self.max_tokens = max_tokens
        kwargs, self.dtype = with_resolved_dtype({**engine_kwargs(engine, model_path, seed), **(extra_kwargs or {})})
        # A vision-language model is prompted through its processor, with the pictures from the run's store.
        self.vision = VisionPrompter(model_path) if is_vision_model(model_path) else None
        self.images = images
        if self.vision is not None:
            # vLLM sizes its encoder cache for this many images a prompt (0: the vision tower is never run)
            kwargs.setdefault("limit_mm_per_prompt", {"image": max_images})
        # What is loaded by now (torch, vLLM, Ray: some 650,000 objects) lives as long as the process. Frozen,
        # the collections vLLM runs while it starts skip it: with this collection and the freeze, a small
        # model's start took 3.3 s instead of 4.3 (medians of 5, 2 cores). vLLM's server freezes its heap the
        # same way once it has started. Garbage is collected first, or what it holds would never be freed.
        gc.collect()
        gc.freeze()
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.closing = False
        self.seconds = 0.0  # inside vllm.LLM.generate
        self._watch_engine()

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        self.closing = True
        self.llm.llm_engine.engine_core.shutdown()

    def encode(self, conversation: list[dict[str, str]], continue_final: bool = False, n_images: int = 0) -> list[int]:
        if self.vision is not None:
            return self.vision.encode(conversation, n_images, continue_final)
        text = self.tokenizer.apply_chat_template(
            conversation,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def complete(self, requests: list[Request], lora_request: Any = None) -> list[list[Completion]]:
        """Each request's ``n`` completions (a request with no room left in the context: ``context``, not
        sent); the one place where a ``Request`` becomes vLLM's ``SamplingParams``."""
        from vllm import SamplingParams

        results: list[list[Completion] | None] = [None] * len(requests)
        prompts, params, slots = [], [], []
        for i, req in enumerate(requests):
            ids = self.encode(req.conversation, req.continue_final, len(req.images))
            prompt: dict[str, Any] = {"prompt_token_ids": ids}
            length = len(ids)
            if req.images:
                if self.vision is None or self.images is None:
                    raise ValueError("a request with images needs a vision-language model and the run's image store")
                pictures = self.images.pictures(req.images)
                prompt["multi_modal_data"] = {"image": pictures}
                length += sum(self.vision.image_tokens(*pic.size) - 1 for pic in pictures)
            room = self.max_model_len - length
            if room < 1:
                results[i] = [Completion("", 0, "context", prompt_ids=tuple(ids))] * req.n
                continue
            prompts.append(prompt)
            params.append(
                SamplingParams(
                    n=req.n,
                    temperature=req.temperature,
                    top_p=self.cfg.top_p if req.temperature > 0 else 1.0,
                    top_k=self.cfg.top_k if req.temperature > 0 else -1,
                    max_tokens=min(self.max_tokens, room),
                    seed=req.seed,
                    stop=list(req.stop) or None,
                    logprobs=0 if req.logprobs else None,  # 0: the sampled token's own
                )
            )
            slots.append(i)
        if prompts:
            outputs = self.generate(prompts, params, lora_request)
            for slot, prompt, out in zip(slots, prompts, outputs, strict=True):
                results[slot] = [
                    Completion(
                        c.text,
                        len(c.token_ids),
                        str(c.finish_reason),
                        c.stop_reason if isinstance(c.stop_reason, str) else None,
                        prompt_ids=tuple(prompt["prompt_token_ids"]),
                        token_ids=tuple(c.token_ids),
                        logprobs=_sampled_logprobs(c) if requests[slot].logprobs else (),
                    )
                    for c in out.outputs
                ]
        return [r if r is not None else [] for r in results]

    def _watch_engine(self) -> None:
        """End the actor when the engine process dies, so Ray starts a fresh one and retries.

        A dead vLLM engine cannot be revived inside this process, and a request in flight when it
        dies can wait forever for its output; polling the client's liveness flag covers both.
        """
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if type(core).__name__ == "InprocClient":
            return  # the engine runs in this process: its crash is this actor's, which Ray restarts
        resources = getattr(core, "resources", None)
        if resources is None or not hasattr(resources, "engine_dead"):
            logging.getLogger(__name__).warning("cannot watch this vLLM version's engine for crashes")
            return

        def watch() -> None:
            while not resources.engine_dead:
                time.sleep(0.5)
            if not self.closing:
                # Also seen when Ray retires an idle actor, which stops the engine first.
                print(
                    "vLLM engine process ended; ending this actor (Ray restarts it if work remains)",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)

        threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], lora_request: Any = None) -> list[Any]:
        """``vllm.LLM.generate`` on token-id prompts, timed; a dead engine ends the actor."""
        from vllm.v1.engine.exceptions import EngineDeadError

        started = time.perf_counter()
        try:
            return self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora_request)
        except EngineDeadError:
            # Raised rather than hung: end the actor the same way the watchdog does, so Ray
            # treats it as a lost actor (restart, retry) and not as a failed shard.
            print("vLLM engine died; ending the actor so Ray restarts it", file=sys.stderr, flush=True)
            os._exit(1)
        finally:
            self.seconds += time.perf_counter() - started


def _sampled_logprobs(completion: Any) -> tuple[float, ...]:
    """The engine's log-probability of each sampled token (``logprobs=0`` returns the sampled one's)."""
    out = []
    for tok, entry in zip(completion.token_ids, completion.logprobs or [], strict=False):
        lp = entry.get(tok)
        out.append(float(lp.logprob) if lp is not None else float("nan"))
    return tuple(out)


class GenerationWorker:
    """Holds the policy's vLLM engine (and a teacher); turns one shard of prompts into one table of rows.

    The policy engine is not started when a teacher writes every turn (SelFee with
    ``teacher.answers: teacher``); its tokenizer still counts the prompt tokens.
    """

    def __init__(
        self,
        model: str,
        model_cache: str,
        generate: dict[str, Any],
        seed: int,
        tags: dict[str, str] | None = None,
        image_dir: str | None = None,
        max_images: int = 0,
    ):
        started = time.perf_counter()
        self.cfg = GenerateConfig.model_validate(generate)
        self.model_name = model
        self.seed = seed
        path = resolve_model(model, model_cache)
        teacher = self.cfg.teacher
        self.policy: VLLMEngine | None = None
        if teacher is None or teacher.answers == "policy":
            images = ImageStore(image_dir) if image_dir else None
            self.policy = VLLMEngine(
                path, self.cfg.engine, self.cfg, seed, self.cfg.max_tokens, images=images, max_images=max_images
            )
            self.tokenizer = self.policy.tokenizer
        else:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.teacher: Any = None
        if teacher is not None and teacher.kind == "openai":
            from datagen.teacher import OpenAITeacher

            self.teacher = OpenAITeacher(teacher, self.cfg.max_tokens, self.cfg.top_p)
        elif teacher is not None:
            engine = teacher.engine or self.cfg.engine
            teacher_path = resolve_model(teacher.model, model_cache)
            self.teacher = VLLMEngine(teacher_path, engine, self.cfg, seed, teacher.max_tokens or self.cfg.max_tokens)
        # import, model resolution and engine start: the one-time cost of an actor
        self.startup_seconds = time.perf_counter() - started
        self.ready_at = time.time()  # wall clock: comparable with the driver's
        self.tags = tags or {"stage": "generate", "run": ""}  # the Ray metrics' tags

    def close(self) -> None:
        """Stop the engines' processes now rather than at interpreter exit."""
        for engine in (self.policy, self.teacher):
            if isinstance(engine, VLLMEngine):
                engine.close()

    def _encode(self, conversation: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt_tokens(self, row: dict[str, Any]) -> int:
        """The prompt's tokens as the model saw them (a vision-language model's: images expanded)."""
        policy = self.policy
        if policy is None or policy.vision is None:
            return len(self._encode(row["messages"]))
        store = policy.images
        sizes = [pic.size for pic in store.pictures(row["images"])] if row["images"] and store else []
        return policy.vision.length(row["messages"], sizes)

    def complete(self, requests: list[Request]) -> list[list[Completion]]:
        if self.policy is None:
            raise RuntimeError("the policy engine was not started: the teacher writes every turn")
        return self.policy.complete(requests)

    def _engine_seconds(self) -> float:
        return sum(e.seconds for e in (self.policy, self.teacher) if isinstance(e, VLLMEngine))

    def __call__(self, task: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
        prompts = [Prompt.from_row(r) for r in task["prompts"]]
        started = time.perf_counter()
        engine_before = self._engine_seconds()
        teach = self.teacher.complete if self.teacher is not None else None
        rows = generate_rows(prompts, self.cfg, self.complete, model=self.model_name, seed=self.seed, teach=teach)
        prompt_tokens: dict[str, int] = {}
        for row in rows:
            if row["prompt_id"] not in prompt_tokens:
                prompt_tokens[row["prompt_id"]] = self._prompt_tokens(row)
            row["prompt_tokens"] = prompt_tokens[row["prompt_id"]]
        seconds = time.perf_counter() - started
        tokens = sum(r["generated_tokens"] for r in rows)
        metrics.record_generate(self.tags, prompts=len(prompts), samples=len(rows), tokens=tokens, seconds=seconds)
        stats = {
            "prompts": len(prompts),
            "samples": len(rows),
            "generated_tokens": tokens,
            "generate_seconds": seconds,
            # inside vllm.LLM.generate; the rest is turn logic (and API calls to a teacher)
            "engine_seconds": self._engine_seconds() - engine_before,
            "worker_startup_seconds": self.startup_seconds,
            "worker_ready_at": self.ready_at,
            "actor_pid": os.getpid(),
            "dtype": str(self.policy.dtype) if self.policy is not None else None,
        }
        if hasattr(self.teacher, "stats"):
            stats.update(self.teacher.stats.take())
        return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), stats

