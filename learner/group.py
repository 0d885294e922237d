"""LearnerGroup: the Learner ranks as Ray actors, driven in lockstep from the Scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.rank import Learner

PEER_ERROR_S = 30.0  # how long the other ranks may take to fail after one rank's error


class LearnerLost(RuntimeError):
    """A Learner rank's process died (the others fail in the group's next collective)."""


class LearnerGroup:
    """``world_size`` Learner actors driven in lockstep; each call returns rank 0's answer."""

    def __init__(self, model_path: str, config: LearnerConfig, seed: int = 0,
                 actor_options: Callable[[int], dict] | None = None):
        """``actor_options(rank)``: Ray options of rank ``rank`` (its placement group bundle)."""
        self.model_path, self.actor_options = str(model_path), actor_options or (lambda rank: {})
        self.ranks = self._start_ranks(config, seed)

    def _start_ranks(self, config: LearnerConfig, seed: int) -> list:
        import ray

        actor = ray.remote(num_cpus=config.cpus_per_rank, num_gpus=config.gpus_per_rank, resources=config.resources)(Learner)
        ranks = [actor.options(**self.actor_options(rank)).remote(self.model_path, config, rank, config.world_size, seed)
                 for rank in range(config.world_size)]
        address, port = ray.get(ranks[0].endpoint.remote())
        ray.get([rank.connect.remote(address, port) for rank in ranks])
        return ranks

    def restart(self, config: LearnerConfig, seed: int) -> None:
        """New rank processes in place of these (ended first) in the same placement, from the model files."""
        self.close()
        self.ranks = self._start_ranks(config, seed)

    def _call(self, method: str, *args):
        """``method`` on every rank; rank 0's answer. ``LearnerLost`` when a rank died: its own call fails
        at once, the others' in their next collective (or never: they are ended by ``restart``)."""
        import ray

        shared = [ray.put(a) if isinstance(a, SequenceBatch) else a for a in args]  # one copy for all ranks
        futures = [getattr(rank, method).remote(*shared) for rank in self.ranks]
        pending = futures
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as error:
                # a rank whose peer died fails in a collective: give the others time to fail, name the dead one
                ray.wait(pending, num_returns=len(pending), timeout=PEER_ERROR_S)
                dead = [rank for rank, future in enumerate(futures) if _died(future)]
                if dead:
                    raise LearnerLost(f"learner rank {dead[0]} died during {method}") from error
                raise
        return ray.get(futures[0])

    def close(self) -> None:
        """End the ranks' processes."""
        import ray

        for rank in self.ranks:
            ray.kill(rank)

    def start(self, config: LearnerConfig, seed: int) -> None:
        self._call("start", config, seed)

    def share_cores(self, shared: bool) -> None:
        """Each rank on its reserved CPUs (``shared``: the engines sample meanwhile) or on its full threads."""
        self._call("share_cores", shared)

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
        """The current weights into every engine of the RolloutPool ``pool``: the engines read rank 0's
        object-store copy (the ref passes through here, the tensors do not)."""
        pool.load_weights(self._call("rollout_weights", pool.dtype)[0])

    def gpu_ids(self) -> list[list]:
        """Each rank's ``ray.get_gpu_ids()``."""
        import ray

        return ray.get([rank.gpu_ids.remote() for rank in self.ranks])

    def save(self, directory: str, run_state: dict) -> None:
        self._call("save", directory, run_state)

    def load(self, directory: str) -> dict:
        return self._call("load", directory)


def _died(future) -> bool:
    """Whether ``future``, if finished, failed because its actor's process died."""
    import ray

    if not ray.wait([future], timeout=0)[0]:
        return False
    try:
        ray.get(future)
    except ray.exceptions.RayActorError:
        return True
    except ray.exceptions.RayError:
        pass
    return False
