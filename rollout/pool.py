"""RolloutPool: the RolloutWorker actors of a run, sharing each batch, surviving the death of a worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import Task
from rollout.worker import EpisodeRequest, RolloutWorker, StaleWorker, Trajectory, group_requests

RESTART_TIMEOUT_S = 600  # a restarted worker loads its engine again: ~20 s on 2 cores, minutes for a large model


def _await_restart(worker) -> None:
    """Until Ray has restarted ``worker`` (calls fail with ActorUnavailableError meanwhile); ActorDiedError
    when Ray gave up on it, TimeoutError after RESTART_TIMEOUT_S."""
    import ray

    deadline = time.monotonic() + RESTART_TIMEOUT_S
    while True:
        try:
            ray.get(worker.ready.remote(), timeout=max(deadline - time.monotonic(), 0.0))
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not restarted within {RESTART_TIMEOUT_S} s") from None
            time.sleep(0.5)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"not restarted within {RESTART_TIMEOUT_S} s") from None


def model_context_length(model_path: str) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings", 1 << 30))


class RolloutWorkerLost(RuntimeError):
    """A RolloutWorker died more often than rollout.max_restarts allows; the message says how to resume."""


class WeightsLost(RuntimeError):
    """A restarted worker cannot get the current weights: their only copy went with its owner's process."""


class RolloutPool:
    """Several RolloutWorker actors sharing each batch; their number is independent of the learner.

    A worker whose process dies is restarted by Ray (rollout.max_restarts); the pool then gives the new
    engine the run's settings and current weights and replays the lost call, with the same requests and
    seeds, so the result is the one the worker would have returned."""

    def __init__(self, model_path: str, config: RolloutConfig, reward: RewardConfig, seed: int = 0,
                 actor_options: Callable[[int], dict] | None = None):
        """``actor_options(index)``: Ray options of worker ``index`` (its placement group bundle)."""
        import ray

        limit = model_context_length(model_path)
        if config.max_total_tokens > limit:
            raise ValueError(
                f"rollout.max_total_tokens={config.max_total_tokens} exceeds the model's context of {limit} tokens"
            )
        actor = ray.remote(num_cpus=config.worker_cpus, num_gpus=config.worker_gpus, resources=config.resources,
                           max_restarts=config.max_restarts, concurrency_groups={"cores": 1})(RolloutWorker)
        self.dtype = config.dtype  # of the engines' weights, which a weight sync sends
        self.max_restarts = config.max_restarts
        self.settings = (config, reward)  # what a restarted worker is given again (RolloutPool.start)
        self.weights = None  # the object-store ref of the engines' current weights; None: the model files
        self.version = 0  # settings and weights sent to the workers so far (RolloutWorker's calls check it)
        self.restarts = [0] * config.workers
        self.unrestored: set[int] = set()  # restarted workers still waiting for the pool's state
        self._start = lambda index: actor.options(**(actor_options or (lambda _: {}))(index)).remote(
            str(model_path), config, reward, seed + index)
        self.workers = [self._start(index) for index in range(config.workers)]
        ray.get([w.ready.remote() for w in self.workers])

    def resize(self, workers: int) -> None:
        """``workers`` workers from the next call on: the last ones end, new ones get the pool's settings and
        weights. Episodes carry their own seeds, so what a step plays does not depend on the count."""
        import ray

        while len(self.workers) > workers:
            ray.kill(self.workers.pop())
            self.restarts.pop()
            self.unrestored.discard(len(self.workers))
        added = [self._start(index) for index in range(len(self.workers), workers)]
        ray.get([w.restore.remote(*self.settings, self.weights, self.version) for w in added])
        self.workers += added
        self.restarts += [0] * len(added)

    def generate(self, tasks: list[Task], group_size: int, seed: int, temperature: float | None = None,
                 tag: str = "", fmt: str | None = None) -> list[Trajectory]:
        """G episodes per task (in syntax ``fmt``; None: rollout.format)."""
        return self.run_groups(group_requests(tasks, group_size, seed, tag, fmt), temperature)

    def run_groups(self, groups: list[list[EpisodeRequest]], temperature: float | None = None) -> list[Trajectory]:
        """Play groups of requests; whole groups go to one worker (their prompts share a cached prefix)."""
        shares: list[list[EpisodeRequest]] = [[] for _ in self.workers]
        for index, group in enumerate(groups):
            shares[index % len(self.workers)].extend(group)
        batches = self._call_each("run", [(share, temperature, self.version) if share else None for share in shares])
        return [t for batch in batches for t in batch]

    def start(self, config: RolloutConfig, reward: RewardConfig) -> None:
        """Another run on the same engines (``launch.py sweep``): its rollout settings outside ``ENGINE_FIELDS``."""
        self.settings, self.version = (config, reward), self.version + 1
        self._call_each("start", [(*self.settings, self.version)] * len(self.workers), replay=False)

    def load_weights(self, weights) -> None:
        """Every engine to the weights behind the object-store ref ``weights`` (one copy for all of them)."""
        self.weights, self.version = weights, self.version + 1
        self._call_each("update_weights", [(weights, self.version)] * len(self.workers), replay=False)

    def _call_each(self, method: str, arguments: list[tuple | None], replay: bool = True) -> list:
        """``method(*arguments[i])`` on worker i (None: not called), at once; the results of the called ones.
        A call whose worker died, or reached it restarted, runs again on the restarted worker (unless
        ``replay`` is off: bringing the worker back already sent it the settings and weights the call had)."""
        import ray

        def call(index: int):
            return getattr(self.workers[index], method).remote(*arguments[index])

        futures = {index: call(index) for index, args in enumerate(arguments) if args is not None}
        results = {}
        for index, future in futures.items():
            while index not in results:
                try:
                    results[index] = ray.get(future)
                except (ray.exceptions.RayActorError, StaleWorker) as error:
                    self._revive(index, error)
                    if replay:
                        future = call(index)
                    else:
                        results[index] = None
        return [results[index] for index in futures]

    def _revive(self, index: int, error: Exception) -> None:
        """Wait for Ray's restart of worker ``index`` and give it the run's settings and current weights."""
        import ray

        if index not in self.unrestored:  # else: its restore failed for want of weights, it did not die again
            self.restarts[index] += 1
            self.unrestored.add(index)
        worker, cause = self.workers[index], error
        if self.restarts[index] <= self.max_restarts:
            try:
                _await_restart(worker)
                ray.get(worker.restore.remote(*self.settings, self.weights, self.version))
                self.unrestored.discard(index)
                return
            except ray.exceptions.ObjectLostError as lost:
                raise WeightsLost("the engines' current weights were lost with the process that held them "
                                  "(learner rank 0)") from lost
            except (ray.exceptions.RayActorError, TimeoutError) as lost:
                cause = lost
        raise RolloutWorkerLost(
            f"rollout worker {index} died {self.restarts[index]} time(s) and rollout.max_restarts is "
            f"{self.max_restarts} ({type(cause).__name__}); the run stops at its last checkpoint: resume it with "
            "--set trainer.resume=true") from cause

    def share_cores(self, shared: bool) -> None:
        """Each engine on its reserved CPUs (``shared``: a learner update runs meanwhile) or on its full threads."""
        self._call_each("share_cores", [(shared,)] * len(self.workers), replay=False)

    @contextmanager
    def asleep(self):
        """The engines asleep for the block (rollout.sleep_during_update, on GPU; a no-op otherwise)."""
        self._call_each("sleep", [()] * len(self.workers))
        try:
            yield
        finally:
            self._call_each("wake_up", [()] * len(self.workers))

    def gpu_ids(self) -> list[list]:
        """Each worker's ``ray.get_gpu_ids()``."""
        return self._call_each("gpu_ids", [()] * len(self.workers))

    def close(self) -> None:
        """End the workers' processes (their engines with them)."""
        import ray

        for worker in self.workers:
            ray.kill(worker)
