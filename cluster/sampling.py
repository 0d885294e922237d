"""What a training step samples: train tasks in a seeded order, and DAPO's dynamic sampling over them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from rollout.envs import Task
from rollout.worker import Trajectory


class TaskSampler:
    """Train tasks in a fresh seeded order each epoch; its position is part of a checkpoint."""

    def __init__(self, tasks: list, seed: int):
        self.tasks, self.seed, self.epoch, self.position = tasks, seed, 0, 0
        self._order = self._shuffled()

    def _shuffled(self) -> list:
        order = list(self.tasks)
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def draw(self, n: int) -> list:
        drawn = []
        while len(drawn) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled()
            take = min(n - len(drawn), len(self._order) - self.position)
            drawn += self._order[self.position : self.position + take]
            self.position += take
        return drawn

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled()


@dataclass
class Draws:
    """A step's samples: every episode of every draw (all of them count in the rollout metrics), and the
    groups the update trains on (None: every group)."""

    trajectories: list[Trajectory] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    train_groups: set[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# roll(draw) -> (tasks, their trajectories); informative(trajectories, tasks) -> group ids, in order
Roll = Callable[[int], tuple[list[Task], list[Trajectory]]]
Informative = Callable[[list[Trajectory], list[Task]], list[str]]


def draw_informative(roll: Roll, informative: Informative, wanted: int, max_draws: int) -> Draws:
    """DAPO's dynamic sampling: run draws 0, 1, ... until ``wanted`` groups are informative (their rewards
    differ, so GRPO learns from them) or ``max_draws`` draws have run. The update trains on the first
    ``wanted`` informative groups; flat groups and any surplus stay out of it."""
    draws = Draws()
    found: list[str] = []
    count = 0
    while count < max_draws and len(found) < wanted:
        tasks, trajectories = roll(count)
        count += 1
        draws.tasks += tasks
        draws.trajectories += trajectories
        found += informative(trajectories, tasks)
    draws.train_groups = set(found[:wanted])
    draws.metrics = {"dynamic_sampling/draws": float(count),
                     "dynamic_sampling/sampled_groups": float(len(draws.tasks)),
                     "dynamic_sampling/informative_groups": float(len(found))}
    return draws
