"""On-policy rollouts for SCoRe: vLLM engine actors that sample episodes and take the trainer's weights.

A ``RolloutWorker`` is a Ray actor holding the generate stage's engine (``datagen.engine.VLLMEngine``).
It samples attempt 1, the correction instruction and attempt 2 for a batch of prompts, keeping the
token ids the trainer needs and the weights *version* that produced them. The trainer's rank 0
sends new weights after every update through one of the ``SYNC`` backends:

- ``blob``: the merged model's weights as safetensors bytes, through the Ray object store, into a
  vLLM worker extension (``WeightReceiver``) that reloads them in place. Works on CPU and GPU; every
  sync moves the whole model (vLLM's in-place reload needs every tensor).
- ``adapter``: only the LoRA adapter's tensors; the engine serves it as a vLLM ``LoRARequest`` under
  a new id per version (the base weights never move).
- ``nccl``: vLLM's weight-transfer API (``WeightTransferConfig(backend="nccl")``): the trainer
  broadcasts each tensor over NCCL to the engines on their own GPUs. GPU only; every call is bounded
  by ``sync_timeout_s``.

An actor that restarts (its engine died) comes back at version 0, the base weights: a rollout asked
for at another version answers ``stale`` and the client syncs it first. Ray restarts the actor
(``max_restarts``); the client waits for it, re-syncs and redoes the batch, so no batch is lost and
none is trained twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from datagen.config import EngineConfig, GenerateConfig
from datagen.records import Prompt
from datagen.turns import two_attempts
from rl.episodes import Episode, EpisodeBatch, RolloutStats

EXTENSION = "rl.rollout.WeightReceiver"
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class WeightReceiver:
    """vLLM worker extension: methods that ``LLM.collective_rpc`` runs inside each engine worker."""

    def selfcorrect_load_blob(self, blob: bytes) -> int:
        import safetensors.torch

        weights = safetensors.torch.load(blob)
        self.model_runner.reload_weights(weights_iterator=iter(weights.items()))  # type: ignore[attr-defined]
        return len(weights)


class RolloutWorker:
    """One vLLM engine that samples SCoRe episodes; a Ray actor (see ``RolloutClient``)."""

    def __init__(
        self,
        model_path: str,
        engine: dict[str, Any],
        generate: dict[str, Any],
        seed: int,
        max_tokens: int,
        sync: str,
        lora_rank: int | None = None,
        model_name: str = "",
    ):
        from datagen.engine import VLLMEngine
        from datagen.hardware import resolve_dtype

        self.engine_cfg = EngineConfig.model_validate(engine)
        # auto resolved here, where the weights live: the trainer sends its weights in this dtype
        self.dtype = resolve_dtype(self.engine_cfg.dtype, gpu=self.engine_cfg.num_gpus > 0)
        self.engine_cfg = self.engine_cfg.model_copy(update={"dtype": self.dtype.name})
        print(f"[score] rollout engine dtype {self.dtype}", flush=True)
        self.gen = GenerateConfig.model_validate(generate)
        self.seed = seed
        self.sync = sync
        self.model_name = model_name  # as the config names it: the sample rows' ``model``
        # the log-probs of the distribution sampled from (temperature applied), which the trainer's are of
        extra: dict[str, Any] = {"worker_extension_cls": EXTENSION, "logprobs_mode": "processed_logprobs"}
        if sync == "adapter":
            rank = next((r for r in VLLM_LORA_RANKS if r >= (lora_rank or 8)), VLLM_LORA_RANKS[-1])
            extra.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        if sync == "nccl":
            from vllm.config import WeightTransferConfig

            extra["weight_transfer_config"] = WeightTransferConfig(backend="nccl")
        self.engine = VLLMEngine(model_path, self.engine_cfg, self.gen, seed, max_tokens, extra_kwargs=extra)
        self.version = 0  # the weights it loaded: the starting model's
        self.lora: Any = None
        self.adapter_dir = tempfile.mkdtemp(prefix="selfcorrect-adapter-")
        self.max_tokens = max_tokens

    def close(self) -> None:
        """Stop the engine's processes now, before the actor is killed."""
        self.engine.close()
        shutil.rmtree(self.adapter_dir, ignore_errors=True)

    def ready(self) -> dict[str, Any]:
        return {"version": self.version, "pid": os.getpid(), "node": _node_ip(), "dtype": self.dtype.name}

    # --- weights -----------------------------------------------------------------------------
    def load_blob(self, blob: bytes, version: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.engine.llm.collective_rpc("selfcorrect_load_blob", args=(blob,))
        self.engine.llm.reset_prefix_cache()
        self.version = version
        return {"version": version, "seconds": time.perf_counter() - started}

    def load_adapter(self, blob: bytes, adapter_config: dict[str, Any], version: int) -> dict[str, Any]:
        from vllm.lora.request import LoRARequest

        started = time.perf_counter()
        path = os.path.join(self.adapter_dir, f"v{version}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        with open(os.path.join(path, "adapter_model.safetensors"), "wb") as f:
            f.write(blob)
        with open(os.path.join(path, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f)
        # a new id per version: vLLM caches adapters by id
        self.lora = LoRARequest(f"policy-v{version}", version + 1, path)
        for old in os.listdir(self.adapter_dir):
            if old != f"v{version}":
                shutil.rmtree(os.path.join(self.adapter_dir, old), ignore_errors=True)
        self.engine.llm.reset_prefix_cache()
        self.version = version
        return {"version": version, "seconds": time.perf_counter() - started}

    def set_version(self, version: int) -> None:
        """After an NCCL transfer, which goes through the methods below, not through this actor's own."""
        self.engine.llm.reset_prefix_cache()
        self.version = version

    # vLLM's weight-transfer protocol (RayVLLMWeightSyncClient calls these on the actor)
    def init_weight_transfer_engine(self, request: Any) -> None:
        self.engine.llm.init_weight_transfer_engine(request)

    def start_weight_update(self) -> None:
        self.engine.llm.start_weight_update()

    def update_weights(self, request: Any) -> None:
        self.engine.llm.update_weights(request)

    def finish_weight_update(self) -> None:
        self.engine.llm.finish_weight_update()

    # --- sampling ----------------------------------------------------------------------------
    def rollout(
        self, prompts: list[dict[str, Any]], step: int, version: int, n: int, temperature: float, review: str
    ) -> dict[str, Any]:
        """The episodes of ``prompts``, or ``{"stale": v}`` when this engine does not hold ``version``.

        The generate stage's two-attempt turns (``datagen.turns.two_attempts``) with SCoRe's batch settings,
        seeded per step, with the engine's token ids and log-probabilities.
        """
        if version != self.version:
            return {"stale": self.version}
        started = time.perf_counter()
        cfg = self.gen.model_copy(
            update={"mode": "two_attempt", "n": n, "temperature": temperature, "second_temperature": None,
                    "review_prompt": review, "max_tokens": self.max_tokens}
        )  # fmt: skip
        turns = two_attempts(
            [Prompt.from_row(p) for p in prompts], cfg, lambda requests: self.engine.complete(requests, self.lora),
            model=self.model_name, seed=self.seed, tag=f"score-{{turn}}-{step}", logprobs=True,
        )  # fmt: skip
        episodes = [Episode.from_turns(t, version) for t in turns]
        return {
            "episodes": episodes,
            "version": version,
            "tokens": sum(len(e.first.tokens) + len(e.second.tokens) for e in episodes),
            "seconds": time.perf_counter() - started,
            "pid": os.getpid(),
        }


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return ""


# --- trainer side -----------------------------------------------------------------------------


def merged_state_dict(model: Any, dtype: str = "float32") -> dict[str, Any]:
    """The policy's weights in the checkpoint's own names, LoRA deltas merged in (the model is not changed), in
    the engine's ``dtype``.

    W = W_base + delta(B, A) for each LoRA layer (peft's ``get_delta_weight``); tied weights once. A tensor
    already in ``dtype`` is the model's own (no copy): only a merged layer, or a cast, makes a new one.
    """
    import torch

    target = getattr(torch, dtype)
    model = getattr(model, "module", model)
    if not hasattr(model, "peft_config"):
        out, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            out[name] = tensor.detach().to(target).contiguous()
        return out
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            deltas[f"{name}.weight"] = module.get_delta_weight(model.active_adapter)
    out, seen = {}, set()
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        t = tensor.detach()
        if clean in deltas:
            t = t + deltas[clean].to(t.dtype)
        out[clean] = t.to(target).contiguous()
    return out


def adapter_payload(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The LoRA adapter's tensors (PEFT's file names) and its adapter_config.json content."""
    from peft import get_peft_model_state_dict

    model = getattr(model, "module", model)
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    config = model.peft_config[model.active_adapter].to_dict()
    config = json.loads(json.dumps(config, default=list))  # sets -> lists
    return state, config


class RolloutClient:
    """Rank 0's view of the rollout actors: sample a batch, send weights, survive a restarted engine."""

    def __init__(self, actors: list[Any], sync: str, timeout_s: float, gpus_per_actor: int = 0):
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        self.sync = sync
        self.timeout_s = timeout_s
        self.pending: dict[int, tuple[list[Any], int, list[list[dict[str, Any]]], dict[str, Any]]] = {}
        self._nccl: Any = None
        self.restarts = 0
        self.pids: list[int | None] = [None] * len(actors)
        self.dtype = "float32"  # the engines' weights: what a sync sends
        for actor in actors:
            self._wait_ready(actor)

    # --- weights -----------------------------------------------------------------------------
    def sync_weights(self, model: Any, version: int, actors: list[Any] | None = None) -> dict[str, Any]:
        """Send the policy at ``version`` to ``actors`` (default: all); returns seconds and bytes.

        An engine that dies meanwhile is waited for (Ray restarts it) and sent the weights again.
        """
        import ray
        import safetensors.torch

        actors = actors or self.actors
        started = time.perf_counter()
        if self.sync == "nccl":
            self._nccl_send(model, version, actors)
            return {"seconds": time.perf_counter() - started, "bytes": _param_bytes(model)}
        if self.sync == "adapter":
            state, config = adapter_payload(model)
            blob = safetensors.torch.save(state)
            ref = ray.put(blob)

            def send(a: Any) -> Any:
                return a.load_adapter.remote(ref, config, version)
        else:
            blob = safetensors.torch.save(merged_state_dict(model, self.dtype))
            ref = ray.put(blob)

            def send(a: Any) -> Any:
                return a.load_blob.remote(ref, version)

        calls = [(a, send(a)) for a in actors]
        for actor, call in calls:
            while True:
                try:
                    ray.get(call, timeout=self.timeout_s)
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    self._lost(actor, e)
                    call = send(actor)
        return {"seconds": time.perf_counter() - started, "bytes": len(blob)}

    def _lost(self, actor: Any, error: BaseException) -> None:
        """An engine actor died (or is restarting): wait until Ray has it back, at version 0."""
        self.restarts += 1
        i = self.actors.index(actor)
        print(f"[score] rollout actor {i} lost ({type(error).__name__}); waiting for its restart", flush=True)
        self._wait_ready(actor)

    def _nccl_send(self, model: Any, version: int, actors: list[Any]) -> None:
        """vLLM's NCCL weight transfer, bounded by the timeout (a raw NCCL collective has none)."""
        import ray

        if self._nccl is None:
            from vllm.distributed.weight_transfer.base import ModuleSource
            from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
            from vllm.distributed.weight_transfer.nccl_engine import (
                NCCLTrainerInitInfo,
                NCCLTrainerWeightTransferEngine,
            )

            info = NCCLTrainerInitInfo(
                master_address=ray.util.get_node_ip_address(),
                master_port=_free_port(),
                world_size=1 + len(actors) * self.gpus_per_actor,
                rank=0,
            )
            source = ModuleSource(_merged_module(model, self.dtype))
            self._nccl = _bounded(
                lambda: NCCLTrainerWeightTransferEngine.trainer_init(
                    info, client=RayVLLMWeightSyncClient(list(actors)), source=source
                ),
                self.timeout_s,
                "NCCL weight-transfer setup",
            )
        _bounded(self._nccl.send_weights, self.timeout_s, "NCCL weight transfer")
        ray.get([a.set_version.remote(version) for a in actors], timeout=self.timeout_s)

    # --- sampling ----------------------------------------------------------------------------
    def submit(self, step: int, prompts: list[dict[str, Any]], version: int, n: int, temperature: float,
               review: str, round: int = 0) -> None:  # fmt: skip
        """Start sampling batch ``round`` of ``step`` (prompts split over the actors); ``collect`` waits for it."""
        chunks = [prompts[i :: len(self.actors)] for i in range(len(self.actors))]
        args = {"step": step, "version": version, "n": n, "temperature": temperature, "review": review}
        refs = [
            a.rollout.remote(chunk, **args) if chunk else None for a, chunk in zip(self.actors, chunks, strict=True)
        ]
        self.pending[step, round] = (refs, version, chunks, args)

    def collect(self, step: int, model: Any, version_now: int, round: int = 0) -> EpisodeBatch:
        """Batch ``round`` of ``step``, every actor's part; a restarted or stale engine is synced and its part
        redone (with the current weights when the batch's are gone: its episodes say which version made them).

        ``model``/``version_now`` are the trainer's current weights, sent to an engine that lost them.
        """
        import ray

        refs, version, chunks, args = self.pending.pop((step, round))
        episodes: list[Episode] = []
        stats = RolloutStats()
        for i, (actor, chunk) in enumerate(zip(self.actors, chunks, strict=True)):
            ref = refs[i]
            while ref is not None:
                try:
                    out = ray.get(ref, timeout=self.timeout_s)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                    # the engine (or its actor) died mid-batch: Ray restarts it at version 0
                    stats.redone += 1
                    self._lost(actor, e)
                    out = {"stale": 0}
                if "stale" in out:
                    if version != version_now:
                        # the batch's weights are gone from the trainer: sample it with the current ones
                        version = version_now
                        args = {**args, "version": version_now}
                    if out["stale"] != version:
                        self.sync_weights(model, version, [actor])
                    ref = actor.rollout.remote(chunk, **args)
                    continue
                episodes.extend(out["episodes"])
                stats.tokens += out["tokens"]
                stats.seconds = max(stats.seconds, out["seconds"])
                ref = None
        return EpisodeBatch(episodes, rollout=stats)

    def _wait_ready(self, actor: Any) -> None:
        import ray

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                info = ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                self.pids[self.actors.index(actor)] = info["pid"]
                self.dtype = info["dtype"]
                return
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"a rollout engine did not come back within {self.timeout_s:g} s "
                        "(train.score.sync_timeout_s); see RUN_DIR/logs/ for why it died"
                    ) from None
                time.sleep(2.0)



def _param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in getattr(model, "module", model).parameters())


def _merged_module(model: Any, dtype: str) -> Any:
    """A module whose ``named_parameters`` are the policy's merged weights at the time of each call, in
    checkpoint names and the engines' dtype, as vLLM's ``ModuleSource`` sends them."""
    import torch

    class Merged(torch.nn.Module):
        def named_parameters(self, *args: Any, **kwargs: Any):
            yield from merged_state_dict(model, dtype).items()

    return Merged()


def _bounded(fn: Any, timeout_s: float, what: str) -> Any:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        raise RuntimeError(f"{what} did not finish within {timeout_s:g} s (train.score.sync_timeout_s)") from None
    finally:
        pool.shutdown(wait=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
