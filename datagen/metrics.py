"""The project's Ray metrics, defined once, exported to Prometheus (and the Ray dashboard's Grafana panels).

Every metric carries the tags ``stage`` (``generate``, ``judge``, ``eval/base/generate``, ``train``, ...)
and ``run`` (the run directory's name), and some one more (``judge``, or ``name`` for a family of
numbers). Ray exports each as ``ray_<name>``; a counter as ``ray_<name>_total``, a histogram as
``ray_<name>_bucket``/``_sum``/``_count`` (``exported_names``; Ray 2.60 adds each observation's
bucket midpoint to ``_sum``, so a histogram's mean is approximate and its buckets exact).
``cluster/grafana/selfcorrect.json`` charts them.

The ``record_*`` functions are what the stages call. They create the Ray metric objects lazily,
the first time a process records with Ray initialised; without Ray (a unit test, a plain script)
they do nothing and cost a dictionary lookup. They import nothing of Ray's until Ray is up: a
process that has not imported ray cannot have initialised it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from statistics import fmean
from typing import Any, Literal

from datagen.storage import ObjectPath, as_location

TAG_KEYS = ("stage", "run")
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
SYNC_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class Spec:
    kind: Literal["counter", "gauge", "histogram"]  # the ray.util.metrics class
    description: str
    extra_tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


SPECS: dict[str, Spec] = {
    "selfcorrect_prompts": Spec("counter", "prompts done"),
    "selfcorrect_samples": Spec("counter", "sample rows done"),
    "selfcorrect_generated_tokens": Spec("counter", "tokens generated (shards and RL rollouts)"),
    "selfcorrect_tokens_per_s": Spec("gauge", "generated tokens/s of the last shard or rollout batch"),
    "selfcorrect_judge_rows": Spec("counter", "rows judged", ("judge",)),
    "selfcorrect_judge_calls": Spec("counter", "model/API calls made by judges", ("judge",)),
    "selfcorrect_judge_errors": Spec("counter", "rows a judge flagged instead of scoring", ("judge",)),
    "selfcorrect_judge_retries": Spec("counter", "API calls retried (429, 5xx, timeouts, bad JSON)", ("judge",)),
    "selfcorrect_judge_cache_hits": Spec("counter", "API answers served from the cache", ("judge",)),
    "selfcorrect_judge_latency_s": Spec("histogram", "seconds per judge API call", ("judge",), LATENCY_BUCKETS_S),
    "selfcorrect_reward_mean": Spec("gauge", "mean score/reward of the last shard or batch", ("name",)),
    "selfcorrect_train_step": Spec("gauge", "optimizer steps done"),
    "selfcorrect_train_loss": Spec("gauge", "training loss at the last logged step"),
    "selfcorrect_train_value": Spec("gauge", "other numbers logged by training (lr, grad norm, ...)", ("name",)),
    "selfcorrect_weight_sync_s": Spec("histogram", "seconds per weight sync to rollout engines", (), SYNC_BUCKETS_S),
    "selfcorrect_weight_sync_bytes": Spec("counter", "bytes of weights sent to the rollout engines"),
    "selfcorrect_kl": Spec("gauge", "KL to the reference policy at the last step", ("name",)),
}

# the series Ray's Prometheus endpoint shows for a metric of each kind
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
_made: dict[str, Any] = {}  # name -> the Ray metric object, once created in this process


def exported_names() -> set[str]:
    """Every series name Ray's Prometheus endpoint shows for ``SPECS``."""
    return {f"ray_{name}{suffix}" for name, spec in SPECS.items() for suffix in SUFFIXES[spec.kind]}


def _posix(path: str | Path | ObjectPath) -> PurePosixPath:
    """A local path made absolute, or a URI's bucket and key (``s3://b/run`` -> ``/b/run``)."""
    loc = as_location(path) if not isinstance(path, Path) else path
    if isinstance(loc, ObjectPath):
        return PurePosixPath("/" + loc.key)
    return PurePosixPath(loc.expanduser().resolve().as_posix())


def run_name(run_dir: str | Path | ObjectPath) -> str:
    """The ``run`` tag: the run directory's name (``runs/quickstart`` -> ``quickstart``)."""
    return _posix(run_dir).name


def stage_tags(stage_dir: str | Path | ObjectPath, run_dir: str | Path | ObjectPath | None = None) -> dict[str, str]:
    """Tags for a stage writing into ``stage_dir`` of the run in ``run_dir`` (default: its parent).

    >>> stage_tags("/r/quick/eval/base/generate", "/r/quick")
    {'stage': 'eval/base/generate', 'run': 'quick'}
    """
    stage_path = _posix(stage_dir)
    root = stage_path.parent if run_dir is None else _posix(run_dir)
    inside = stage_path.is_relative_to(root) and stage_path != root
    return {"stage": stage_path.relative_to(root).as_posix() if inside else stage_path.name, "run": run_name(root)}


def enabled() -> bool:
    """Whether this process records: Ray is imported and initialised."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _metric(name: str) -> Any:
    made = _made.get(name)
    if made is None:
        from ray.util import metrics as ray_metrics

        spec = SPECS[name]
        cls = getattr(ray_metrics, spec.kind.capitalize())
        extra = {"boundaries": list(spec.boundaries)} if spec.boundaries else {}
        made = cls(name, spec.description, tag_keys=TAG_KEYS + spec.extra_tags, **extra)
        _made[name] = made
    return made


def _tags(tags: Mapping[str, str], **extra: str) -> dict[str, str]:
    return {"stage": str(tags["stage"]), "run": str(tags["run"]), **extra}


def _inc(name: str, value: float | None, tags: dict[str, str]) -> None:
    if value:  # Ray refuses a non-positive increment
        _metric(name).inc(float(value), tags=tags)


def _set(name: str, value: float | None, tags: dict[str, str]) -> None:
    if value is not None and math.isfinite(value):
        _metric(name).set(float(value), tags=tags)


def record_generate(tags: Mapping[str, str], *, prompts: int, samples: int, tokens: int, seconds: float) -> None:
    """One generated shard: counts, and its tokens/s (tokens / seconds of the shard)."""
    if not enabled():
        return
    t = _tags(tags)
    _inc("selfcorrect_prompts", prompts, t)
    _inc("selfcorrect_samples", samples, t)
    _inc("selfcorrect_generated_tokens", tokens, t)
    _set("selfcorrect_tokens_per_s", tokens / seconds if seconds > 0 else 0.0, t)


def record_judge(tags: Mapping[str, str], judge: str, stats: Mapping[str, Any]) -> None:
    """One judge over one shard, from ``JudgeStats.take()``: counts, each call's latency, mean score."""
    if not enabled():
        return
    t = _tags(tags, judge=judge)
    for key in ("rows", "calls", "errors", "retries", "cache_hits"):
        _inc(f"selfcorrect_judge_{key}", stats.get(key), t)
    latency = _metric("selfcorrect_judge_latency_s")
    for seconds in stats.get("latencies") or ():
        latency.observe(float(seconds), tags=t)
    if stats.get("scores"):
        _set("selfcorrect_reward_mean", fmean(stats["scores"]), _tags(tags, name=judge))


def record_train(tags: Mapping[str, str], *, step: int, loss: float | None = None, **numbers: float) -> None:
    """One logged training step: step, loss, and any other numbers (``learning_rate``, ``rewards/margins``, ...)."""
    if not enabled():
        return
    t = _tags(tags)
    _set("selfcorrect_train_step", step, t)
    _set("selfcorrect_train_loss", loss, t)
    for key, value in numbers.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _set("selfcorrect_train_value", value, _tags(tags, name=key))


def record_rl(
    tags: Mapping[str, str],
    *,
    step: int,
    loss: float | None = None,
    kl: float | Mapping[str, float] | None = None,
    rewards: Mapping[str, float] | None = None,
    rollout_tokens: int | None = None,
    rollout_seconds: float | None = None,
    weight_sync_s: float | None = None,
    weight_sync_bytes: int | None = None,
    **numbers: float,
) -> None:
    """One RL step: ``record_train``'s numbers plus KL (one value, named ``total``, or per name such as ``turn1``),
    mean rewards by name, rollout tokens and their tokens/s, and one weight sync's seconds and bytes."""
    if not enabled():
        return
    record_train(tags, step=step, loss=loss, **numbers)
    t = _tags(tags)
    for name, value in (kl if isinstance(kl, Mapping) else {"total": kl}).items():
        _set("selfcorrect_kl", value, _tags(tags, name=name))
    for name, value in (rewards or {}).items():
        _set("selfcorrect_reward_mean", value, _tags(tags, name=name))
    _inc("selfcorrect_generated_tokens", rollout_tokens, t)
    if rollout_tokens is not None and rollout_seconds:
        _set("selfcorrect_tokens_per_s", rollout_tokens / rollout_seconds, t)
    if weight_sync_s is not None:
        _metric("selfcorrect_weight_sync_s").observe(float(weight_sync_s), tags=t)
    _inc("selfcorrect_weight_sync_bytes", weight_sync_bytes, t)
