"""``trainer.pipeline: one_step_off``: the engines sample the next step's batch while the learner trains.

Step t trains on the batch sampled during step t−1's update, by the engines' weights of that time (those
after step t−2's update), starting from the weights after step t−1: every batch but the first is one
update stale, never more, since the engines take the new weights as soon as the update and the sampling
have both ended (never while they sample). The learner takes its old log-probs from its own weights
(decoupled PPO's proximal policy) and weights each token by the truncated ratio to the engine's sampling
log-probs (``learner.terms.behaviour_weights``). The draws of a step derive from its number whichever
step samples them, and the supervisor's calls keep the synchronous loop's order (step t's transform,
then step t+1's decorate and draws), so both modes draw the same tasks and seeds.

A checkpoint after step t holds the batch already sampled for step t+1 (``PENDING``), with the sampler
and supervisor as they are after drawing it: a resumed run trains on that batch as the uninterrupted one
does.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from cluster.sampling import Draws
from learner.batch import SequenceBatch

PENDING = "pending_draws.pkl"  # in a pipelined run's checkpoint: the next step's batch, sampled already


class OneStepOff:
    def __init__(self, sample: Callable[[int], Draws], importance_cap: float):
        """``sample(step)``: step ``step``'s draws with the engines' current weights."""
        self.sample, self.importance_cap = sample, importance_cap
        self.version = 0  # updates applied: the learner's weights, and the engines' outside an update
        self.pending: Draws | None = None  # the next step's batch, sampled during this step's update
        self.pending_version = 0  # the version of the weights that sampled it
        self.batch_version = 0  # the version of the weights that sampled this step's batch
        self.staleness = 0  # updates between those weights and the learner's at this step's update
        self.overlap_s = 0.0  # seconds this step's update and sampling ahead ran at once

    def draws(self, step: int) -> Draws:
        """Step ``step``'s batch: the one sampled ahead, or (the first step, or a resume from a run's last
        checkpoint) one sampled now."""
        if self.pending is None:
            self.pending, self.pending_version = self.sample(step), self.version
        drawn, self.pending, self.batch_version = self.pending, None, self.pending_version
        self.staleness = self.version - self.batch_version
        return drawn

    def weigh(self, batch: SequenceBatch | None) -> None:
        """A stale batch's policy tokens take the truncated behaviour weight in the loss."""
        if batch is not None and self.staleness:
            batch.behaviour_importance_cap = self.importance_cap

    @contextmanager
    def sampling_ahead(self, step: int | None, timings: dict[str, float]):
        """Step ``step``'s batch sampled in a background thread while the block (the update) runs (None:
        nothing left to sample). The pool's Ray calls release the GIL, so the two run at once. Leaving waits
        for the sampling, also when the update failed: the engines must be idle before new weights come."""
        self.overlap_s = 0.0
        if step is None:
            yield
            return
        sampled_at: list[float] = []

        def sample() -> Draws:
            sampled_at.append(time.perf_counter())
            try:
                return self.sample(step)
            finally:
                sampled_at.append(time.perf_counter())

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampling-ahead") as background:
            following = background.submit(sample)
            started = time.perf_counter()
            yield
            ended = time.perf_counter()
        self.pending, self.pending_version = following.result(), self.version
        timings["sample"] = timings.get("sample", 0.0) + sampled_at[1] - sampled_at[0]
        self.overlap_s = max(0.0, min(ended, sampled_at[1]) - max(started, sampled_at[0]))

    def updated(self, applied: bool) -> None:
        self.version += applied

    def metrics(self) -> dict[str, float]:
        return {"pipeline/staleness": float(self.staleness), "pipeline/batch_version": float(self.batch_version)}

    # ---- checkpoint -------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"version": self.version, "pending_version": self.pending_version}

    def files(self) -> dict[str, bytes]:
        """What a checkpoint holds besides the run state: the batch sampled for the next step, if any."""
        return {PENDING: pickle.dumps(self.pending)} if self.pending is not None else {}

    def restore(self, state: dict, checkpoint: Path) -> None:
        self.version, self.pending_version = state["version"], state["pending_version"]
        pending = checkpoint / PENDING
        self.pending = pickle.loads(pending.read_bytes()) if pending.exists() else None
