"""Where the run's actors go: one Ray placement group for the engines and learner ranks that use GPUs.

Without one, Ray packs fractional GPU requests onto the best-fitting GPU in the order actors are created:
two engines asking for 0.5 GPU each land on GPU 0, both learner ranks on GPU 1, the second engine fails
vLLM's free-memory check and NCCL refuses two ranks on one device. With ``cluster.placement: colocate``
engine i and learner rank i share bundle i, one whole GPU (OpenRLHF's and verl's layout); with
``separate`` every actor gets a bundle of its own. CPU-only runs (no actor asks for a GPU) use no group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cluster.config import ToolRLConfig

READY_TIMEOUT_S = 120


class PlacementError(RuntimeError):
    """The cluster cannot hold the run's placement group; the message says what is missing."""


class Placement:
    def __init__(self, config: ToolRLConfig):
        rollout, learner = config.rollout, config.learner
        self.group = None
        self.rollout_bundles = self.learner_bundles = None
        if rollout.worker_gpus == 0 and learner.gpus_per_rank == 0:
            return
        # custom resources (rollout.resources, learner.resources) go into the bundles: an actor in a bundle
        # draws on the bundle's share, not on the node's
        if config.cluster.placement == "colocate":  # the config validator made workers == world_size
            bundles = [{"CPU": rollout.worker_cpus + learner.cpus_per_rank, "GPU": 1.0,
                        **(Counter(rollout.resources) + Counter(learner.resources))} for _ in range(rollout.workers)]
            self.rollout_bundles = self.learner_bundles = list(range(rollout.workers))
        else:
            bundles = ([{"CPU": rollout.worker_cpus, "GPU": rollout.worker_gpus, **rollout.resources}] * rollout.workers
                       + [{"CPU": learner.cpus_per_rank, "GPU": learner.gpus_per_rank, **learner.resources}]
                       * learner.world_size)
            self.rollout_bundles = list(range(rollout.workers))
            self.learner_bundles = list(range(rollout.workers, rollout.workers + learner.world_size))
        self.group = _ready_group([{k: v for k, v in b.items() if v} for b in bundles])

    def rollout_options(self) -> Callable[[int], dict]:
        """Ray actor options of RolloutWorker ``index`` (its bundle, when there is a group)."""
        return lambda index: self._options(self.rollout_bundles, index)

    def learner_options(self) -> Callable[[int], dict]:
        """Ray actor options of Learner rank ``rank``."""
        return lambda rank: self._options(self.learner_bundles, rank)

    def _options(self, bundles: list[int] | None, index: int) -> dict:
        if self.group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=bundles[index], placement_group_capture_child_tasks=False)}

    def remove(self) -> None:
        if self.group is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


def _ready_group(bundles: list[dict[str, float]]):
    """A PACK placement group of ``bundles``, once Ray has reserved it; one clear error when it cannot."""
    import ray
    from ray.util import placement_group, remove_placement_group

    total = ray.cluster_resources()
    for resource in sorted({name for bundle in bundles for name in bundle}):
        needed = sum(b.get(resource, 0.0) for b in bundles)
        if needed > total.get(resource, 0.0) + 1e-9:
            raise PlacementError(f"the run needs {needed:g} {resource} in its placement group "
                                 f"({len(bundles)} bundles) but the Ray cluster has {total.get(resource, 0.0):g}")
    group = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([group.ready()], timeout=READY_TIMEOUT_S)
    if not ready:
        remove_placement_group(group)
        raise PlacementError(f"placement group {bundles} not placed within {READY_TIMEOUT_S} s: no node (or "
                             "set of nodes) has those resources free")
    return group


def start_actors(config: ToolRLConfig, model: str):
    """The run's RolloutPool and LearnerGroup in their placement group (``Placement``)."""
    from learner.group import LearnerGroup
    from rollout.pool import RolloutPool

    placement = Placement(config)
    try:
        pool = RolloutPool(model, config.rollout, config.env.reward, seed=config.trainer.seed,
                           actor_options=placement.rollout_options())
        learners = LearnerGroup(model, config.learner, seed=config.trainer.seed,
                                actor_options=placement.learner_options())
    except BaseException:
        placement.remove()
        raise
    return pool, learners, placement
