"""A running train, found from its run directory: the named Scheduler actor, and resizing its rollout pool.

``launch.py train`` (and each run of a sweep) starts its Scheduler as a named actor and records the Ray
cluster's address in the run directory; ``launch.py scale RUN_DIR`` finds it there. The Scheduler runs one
call at a time, so a resize waits for the step in progress and applies from the next one.
"""

from __future__ import annotations

from pathlib import Path

from cluster.config import ToolRLConfig

NAMESPACE = "toolrl"  # the Ray namespace of the named Scheduler actors
RAY_ADDRESS_FILE = "ray_address"  # in the run directory: the Ray cluster that trains it


def scheduler_name(run_dir: Path | str) -> str:
    return f"scheduler:{Path(run_dir).resolve()}"


def start_scheduler(config: ToolRLConfig, *actors):
    """The run's Scheduler as a named Ray actor (on ``actors``, a pool and learners, when given), with the
    cluster's address recorded in its run directory."""
    import ray

    from cluster.scheduler import Scheduler

    run_dir = config.run_path()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RAY_ADDRESS_FILE).write_text(ray.get_runtime_context().gcs_address + "\n")
    return ray.remote(num_cpus=0)(Scheduler).options(name=scheduler_name(run_dir), namespace=NAMESPACE).remote(
        config, *actors)


def scale(run_dir: Path, workers: int, address: str | None = None) -> str:
    """Resize the rollout pool of the run training into ``run_dir``; what changed, in words."""
    import ray

    from cluster.local import init_ray

    recorded = run_dir / RAY_ADDRESS_FILE
    if not address and not recorded.exists():
        raise ValueError(f"scale: {run_dir} has no {RAY_ADDRESS_FILE} (no launch.py train wrote it): give --address")
    init_ray(address or recorded.read_text().strip())
    try:
        scheduler = ray.get_actor(scheduler_name(run_dir), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(f"scale: no run is training into {run_dir} on this Ray cluster") from None
    return ray.get(scheduler.scale_rollout.remote(workers))
