"""Starting or joining Ray: local and embedded by default, a cluster with ``address: auto``."""

from __future__ import annotations

import os

from cluster.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Start a local Ray, or join the cluster named by ``ray.address`` or ``RAY_ADDRESS``."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"namespace": cfg.namespace, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local", not None: with no address Ray joins whatever `ray start` left in
        # /tmp/ray/ray_current_cluster, a stale file after a killed head included.
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=cfg.include_dashboard, **kwargs)
