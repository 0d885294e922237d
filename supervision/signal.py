"""The supervision protocol: what one signal may do in a training step, and what it is given to do it.

A signal subclasses ``Signal`` and overrides the hooks it acts in; the Supervisor calls every active
signal's hook in the order of ``supervision.registry.SIGNALS``. Adding a signal is a file with its class
and a line in that registry.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from learner.batch import Origin, SftSample
from rollout.envs import Task
from rollout.formats import ToolFormat
from rollout.worker import EpisodeRequest, Trajectory


@dataclass
class Setup:
    """What every signal is built from: the run's config (``ToolRLConfig``), its tokenizer and prompt format,
    the training tasks and the run directory (for caches)."""

    config: Any
    tokenizer: Any
    fmt: ToolFormat
    tasks: list[Task]
    run_dir: Path


@dataclass
class Rollouts:
    """A step's sampled groups on their way to the RL batch (hints stripped); ``transform`` hooks change
    them in place. Only the groups in ``train_groups`` (None: every group) go into the batch."""

    trajectories: list[Trajectory]
    tasks: dict[str, Task]  # by id
    train_groups: set[str] | None = None
    origins: list[Origin] = field(init=False)  # one per trajectory
    shaped_gamma: float | None = None  # SequenceBatch's, for the EXPERT sequences
    hint_importance_cap: float | None = None  # SequenceBatch's, for the HINT sequences

    def __post_init__(self):
        self.origins = [Origin.HINT if t.hint else Origin.POLICY for t in self.trajectories]

    def trains(self, group_id: str) -> bool:
        return self.train_groups is None or group_id in self.train_groups


class Signal:
    """One supervision signal. Every hook does nothing until a subclass overrides it."""

    name: ClassVar[str]  # as written in supervision.signals, in metric names and in SftSample.signal
    sft: ClassVar[bool] = False  # contributes SFT samples (a mode with SFT steps needs such a signal)
    from_failures: ClassVar[bool] = False  # those samples are made from failed rollouts (none before the first)
    metric_names: ClassVar[tuple[str, ...]] = ()  # what ``transform`` reports; logged as 0 when the signal is off

    def __init__(self, setup: Setup):
        self.setup = setup

    def decorate(self, groups: list[list[EpisodeRequest]]) -> list[list[EpisodeRequest]]:
        """Sampling: the requests as the engine should play them."""
        return groups

    def failure_samples(self, task: Task, trajectory: Trajectory) -> list[SftSample]:
        """After sampling, for each group's first failed member: SFT samples for the shared failure buffer."""
        return []

    def transform(self, rollouts: Rollouts) -> dict[str, float]:
        """Before the update: change ``rollouts`` in place; returns the metrics in ``metric_names``.
        Must not change the signal's state: dynamic sampling also calls it to see what a group would teach."""
        return {}

    def sft_samples(self, n: int) -> list[SftSample]:
        """SFT data of its own (not from the failure buffer): ``n`` samples."""
        return []

    def state_dict(self) -> dict:
        """Checkpoint state, merged with the other signals' into the run state (keys must not clash)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Resume from the run state ``state_dict`` contributed to."""


class FailureBuffer:
    """The SFT samples built from the most recent failures, drawn in a cycle; JSON-able state."""

    def __init__(self, size: int):
        self.items: deque[SftSample] = deque(maxlen=size)
        self.cursor = 0

    def add(self, items: list[SftSample]) -> None:
        self.items.extend(items)

    def take(self, n: int) -> list[SftSample]:
        if not self.items:
            return []
        taken = [self.items[(self.cursor + i) % len(self.items)] for i in range(min(n, len(self.items)))]
        self.cursor = (self.cursor + len(taken)) % len(self.items)
        return taken

    def state(self) -> dict:
        return {"items": [asdict(item) for item in self.items], "cursor": self.cursor}

    def restore(self, state: dict) -> None:
        self.items.clear()
        self.items.extend(SftSample(**item) for item in state["items"])
        self.cursor = state["cursor"]
