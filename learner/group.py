"""LearnerGroup: the Learner ranks as Ray actors, driven in lockstep from the Scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.rank import Learner


class LearnerGroup:
    """``world_size`` Learner actors driven in lockstep; each call returns rank 0's answer."""

    def __init__(self, model_path: str, config: LearnerConfig, seed: int = 0,
                 actor_options: Callable[[int], dict] | None = None):
        """``actor_options(rank)``: Ray options of rank ``rank`` (its placement group bundle)."""
        import ray

        actor = ray.remote(num_cpus=config.cpus_per_rank, num_gpus=config.gpus_per_rank)(Learner)
        options = actor_options or (lambda rank: {})
        self.ranks = [actor.options(**options(rank)).remote(str(model_path), config, rank, config.world_size, seed)
                      for rank in range(config.world_size)]
        address, port = ray.get(self.ranks[0].endpoint.remote())
        ray.get([rank.connect.remote(address, port) for rank in self.ranks])

    def _call(self, method: str, *args):
        import ray

        shared = [ray.put(a) if isinstance(a, SequenceBatch) else a for a in args]  # one copy for all ranks
        return ray.get([getattr(rank, method).remote(*shared) for rank in self.ranks])[0]

    def close(self) -> None:
        """End the ranks' processes."""
        import ray

        for rank in self.ranks:
            ray.kill(rank)

    def start(self, config: LearnerConfig, seed: int) -> None:
        self._call("start", config, seed)

    def rl_update(self, batch: SequenceBatch, group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        return self._call("rl_update", batch, group_size, lr_scale)

    def control_probe(self, batch: SequenceBatch) -> dict[str, float]:
        return self._call("control_probe", batch)

    def sft_update(self, batch: SequenceBatch, lr: float | None = None, lr_scale: float = 1.0) -> dict[str, float]:
        return self._call("sft_update", batch, lr, lr_scale)

    def combined_update(self, rl_batch: SequenceBatch, sft_batch: SequenceBatch, sft_weight: float,
                        group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        return self._call("combined_update", rl_batch, sft_batch, sft_weight, group_size, lr_scale)

    def logprobs(self, batch: SequenceBatch) -> list[list[float]]:
        return self._call("logprobs", batch)

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        return self._call("state_dict_for_rollout")

    def push_weights(self, pool) -> None:
        """The current weights into every engine of the RolloutPool ``pool``, from rank 0 directly."""
        self._call("push_weights", pool.workers, pool.dtype)

    def gpu_ids(self) -> list[list]:
        """Each rank's ``ray.get_gpu_ids()``."""
        import ray

        return ray.get([rank.gpu_ids.remote() for rank in self.ranks])

    def save(self, directory: str, run_state: dict) -> None:
        self._call("save", directory, run_state)

    def load(self, directory: str) -> dict:
        return self._call("load", directory)
