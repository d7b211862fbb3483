"""Starting or joining Ray: local and embedded by default, a cluster with ``address: auto``."""

from __future__ import annotations

import os
import sys

from cluster.config import RayConfig

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
