"""Starting or joining Ray: local and embedded by default, a cluster with ``address: auto``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import NamedTuple

from cluster.config import ConfigError, RayConfig
from datagen.config import EngineConfig

_started: list[bool] = []  # one entry when this process connected Ray: whether it started a local one


def init_ray(cfg: RayConfig, log_to_driver: bool = True) -> str | None:
    """Start a local Ray, or join the cluster named by ``ray.address`` or ``RAY_ADDRESS``.

    ``log_to_driver=False`` leaves the workers' output in Ray's log files instead of printing it
    here. Returns a line saying where Ray runs (with the dashboard's address), or None when Ray
    was already up.
    """
    import ray

    if ray.is_initialized():
        return None
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"namespace": cfg.namespace, "log_to_driver": log_to_driver}
    if address:
        ctx = ray.init(address=address, **kwargs)
        _started.append(False)
        where = f"ray: joined the cluster at {address}"
    else:
        # "local", not None: with no address Ray joins whatever `ray start` left in
        # /tmp/ray/ray_current_cluster, a stale file after a killed head included.
        ctx = ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=cfg.include_dashboard, **kwargs)
        _started.append(True)
        where = "ray: started a local Ray"
    url = getattr(ctx, "dashboard_url", None)
    return f"{where} (dashboard http://{url})" if url else where


def shutdown_ray() -> str | None:
    """Disconnect from (or stop) the Ray that ``init_ray`` connected; return a local session's log folder.

    (A cluster's logs stay on its nodes: a long-lived cluster's folder holds every job's.)
    """
    if not _started or "ray" not in sys.modules:
        return None
    import ray

    local = _started.pop()
    _started.clear()
    if not ray.is_initialized():
        return None
    logs = None
    try:
        from ray._private import worker  # no public API names the session's log folder

        if local and worker._global_node is not None:
            logs = worker._global_node.get_logs_dir_path()
    except (AttributeError, ImportError):
        pass
    ray.shutdown()
    return logs


# --- can the cluster ever give what the config asks for? -------------------------------------------


class ResourceError(ConfigError):
    """The config asks for resources that no node of a cluster without an autoscaler has."""


class Demand(NamedTuple):
    """``count`` bundles of ``resources`` (e.g. ``{"CPU": 1, "GPU": 1}``) that must run at once.

    ``key`` names the config keys that asked for them, as the error shows them to the user. The
    demands of one stage with the same ``phase`` run at the same time and are placed together; a
    stage's phases, like the stages themselves, run one after another.
    """

    key: str
    resources: dict[str, float]
    count: int = 1
    phase: str = ""


_EPS = 1e-9  # fractional GPUs (0.5 + 0.5) must add up to a whole one


def _fits(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node holds (resources asked for as 0 are not needed)."""
    need = {r: q for r, q in bundle.items() if q > 0}
    if not need:
        return 1 << 30
    return min(int((node.get(r, 0.0) + _EPS) // q) for r, q in need.items())


def pack(demands: list[Demand], nodes: list[dict[str, float]]) -> int:
    """How many of the demands' bundles (``sum(count)``) fit on ``nodes`` at once, first-fit-decreasing.

    Bundles are sorted by GPUs, then CPUs, then their other resources, largest first; each goes on
    the first node with room left for all of it. This is the usual bin-packing heuristic, not an
    exact search: for bundles of one shape it finds the true maximum (``infeasible``'s formula),
    for mixed shapes it can in rare cases miss a packing that exists, as Ray's own scheduler,
    which places actors one by one as they come, can too.
    """
    bundles = [
        {r: q for r, q in d.resources.items() if q > 0} for d in demands for _ in range(d.count)
    ]
    bundles.sort(key=lambda b: (b.get("GPU", 0.0), b.get("CPU", 0.0), sorted(b.items())), reverse=True)
    free = [dict(n) for n in nodes]
    placed = 0
    for bundle in bundles:
        for node in free:
            if all(node.get(r, 0.0) + _EPS >= q for r, q in bundle.items()):
                for r, q in bundle.items():
                    node[r] = node.get(r, 0.0) - q
                placed += 1
                break
    return placed


def infeasible(demands: list[Demand], nodes: list[dict[str, float]], stage: str = "") -> list[str]:
    """What ``nodes`` (each node's total resources) can never run of ``demands``, which run at once.

    First each demand alone: a bundle must fit on one node, and ``count`` bundles of the same shape
    pack node by node, so a demand fits exactly when ``sum(min_r floor(node[r] / bundle[r])) >= count``
    (one line per demand that does not). When each fits alone, all of them together: one line when
    ``pack`` (first-fit-decreasing) cannot place every bundle. ``stage`` names the stage in that line.
    """
    problems = []
    for d in demands:
        held = sum(_fits(d.resources, n) for n in nodes)
        if held >= d.count:
            continue
        shape = _fmt(d.resources)
        if held == 0:
            short = [r for r, q in d.resources.items() if q > 0 and max((n.get(r, 0.0) for n in nodes), default=0) < q]
            have = ", ".join(f"{num(d.resources[r])} {r}" for r in short)
            why = f"no node has {have}" if short else "no node fits it"
        else:
            why = f"the cluster holds only {held} at once"
        problems.append(f"{d.key}: needs {d.count} x {{{shape}}} at once, but {why}")
    together = [d for d in demands if d.count > 0]
    if problems or len(together) < 2:
        return problems
    total = sum(d.count for d in together)
    placed = pack(together, nodes)
    if placed < total:
        sizes = " + ".join(f"{d.count} x {{{_fmt(d.resources)}}}" for d in together)
        sums: dict[str, float] = {}
        for d in together:
            for r, q in d.resources.items():
                sums[r] = sums.get(r, 0.0) + q * d.count
        problems.append(
            " and ".join(d.key for d in together)
            + f": {'the ' + stage + ' stage' if stage else 'these'} run{'s' if stage else ''} {sizes} at once "
            f"({_fmt(sums)} in all), but the nodes fit only {placed} of these {total} together"
        )
    return problems


def num(x: float) -> str:
    return f"{x:g}"


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{r}: {num(q)}" for r, q in resources.items() if q > 0)


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    """``2 nodes: {CPU: 2}, {CPU: 8, GPU: 1}`` (CPU, GPU and custom resources, not memory or node ids)."""
    def shown(n: dict[str, float]) -> dict[str, float]:
        return {r: q for r, q in sorted(n.items()) if r in ("CPU", "GPU") or not _is_builtin(r)}

    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + ", ".join(
        "{" + (_fmt(shown(n)) or "nothing") + "}" for n in nodes
    )


def _is_builtin(resource: str) -> bool:
    return resource in ("memory", "object_store_memory") or resource.startswith(("node:", "accelerator_type:"))


def cluster_can_autoscale() -> bool:
    """Whether some node type of the cluster can still be added.

    A cluster that reports its node groups to the GCS (the test Ray Data uses itself) answers
    directly. Ray's own autoscaler (the cluster launcher's, v1) reports none: then its status in
    the GCS tells, since without a cluster config it only mirrors each node as an anonymous type
    ``node_<id>`` (a launcher config whose types are all at max_workers still reads as "may scale":
    a warning, not an error). Autoscaler v2 (KubeRay) reports neither and is taken as "may scale".
    """
    try:
        from ray._private.state import state  # the cluster config the autoscaler reports; no public API

        config = state.get_cluster_config()
    except Exception:  # an older or newer Ray without it: assume it may scale, and only warn
        return True
    groups = getattr(config, "node_group_configs", None) or []
    if groups:
        return any(g.max_count == -1 or g.max_count > g.min_count for g in groups if g.resources and g.max_count != 0)
    return _autoscaler_has_node_types()


def _autoscaler_has_node_types() -> bool:
    try:
        from ray._private import ray_constants
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        if is_autoscaler_v2():
            return True
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)  # what `ray status` reads
    except Exception:
        return True
    if not raw:
        return False  # no autoscaler has reported: nothing will add nodes
    return bool(configured_node_types(json.loads(raw)))


def configured_node_types(status: dict) -> set[str]:
    """The node types of a cluster config named in the v1 autoscaler's status (``ray status``'s
    source); empty when it only mirrors the nodes there are, each as the type ``node_<node id>``."""
    report = status.get("autoscaler_report") or {}
    types = set((report.get("node_type_mapping") or {}).values()) | set(report.get("active_nodes") or {})
    return {t for t in types if not t.startswith("node_")}


def check_resources(demands: list[Demand] | Mapping[str, list[Demand]]) -> str | None:
    """Refuse (``ResourceError``) demands the connected Ray can never run; on a cluster with an
    autoscaler, return a warning instead (it may add nodes that fit). None when everything fits.

    ``demands`` maps each stage to what it asks for (a plain list is one stage): stages run one
    after another, so only the demands of one stage and phase are placed together.
    """
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    stages = demands if isinstance(demands, Mapping) else {"": demands}
    problems = []
    for stage, asked in stages.items():
        for phase in dict.fromkeys(d.phase for d in asked):
            problems += [p for p in infeasible([d for d in asked if d.phase == phase], nodes, stage)
                         if p not in problems]
    if not problems:
        return None
    text = "; ".join(problems) + f" (the cluster: {describe_nodes(nodes)})"
    if cluster_can_autoscale():
        return f"warning: {text}; waiting for the autoscaler to add nodes that fit"
    raise ResourceError(f"{text}. The cluster has no autoscaler: lower these settings or add nodes that have them")


def engine_demand(prefix: str, engine: EngineConfig) -> Demand:
    """The actors of an engine pool at ``min_actors``, the keys named as ``prefix.KEY``."""
    return Demand(
        f"{prefix}.num_gpus={num(engine.num_gpus)}, {prefix}.num_cpus={num(engine.num_cpus)} "
        f"per engine actor, {prefix}.min_actors={engine.min_actors}",
        {"CPU": engine.num_cpus, "GPU": engine.num_gpus},
        engine.min_actors,
    )

