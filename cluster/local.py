"""Connecting to Ray: an embedded local instance on loopback by default, or an existing cluster."""

from __future__ import annotations

import math
import os


def init_ray(address: str | None = None, num_cpus: int | None = None, min_cpus: float = 0,
             num_gpus: int | None = None) -> None:
    """Start (or join) Ray. The embedded default listens on 127.0.0.1 only, dashboard included, with
    ``num_cpus`` logical CPUs (default: twice the cores, at least 4 and at least ``min_cpus``) and
    ``num_gpus`` GPUs (default: the ones Ray detects; declared ones are scheduled even on a CPU machine,
    which is how the tests place the GPU preset)."""
    import ray

    if ray.is_initialized():
        return
    # Without this Ray binds the routable address even for a purely local instance.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers that the Job API started
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # Two cores run a learner and several engines: oversubscribe logical CPUs so fractional actors fit.
    ray.init(
        num_cpus=num_cpus or max(4, 2 * (os.cpu_count() or 1), math.ceil(min_cpus)),
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
        num_gpus=num_gpus,
        include_dashboard=False,
        log_to_driver=False,
    )
