"""The signals of one run behind one object: the Scheduler calls it in its sample and supervise phases.

Each active signal (``supervision.signal.Signal``, listed in ``supervision.registry``) may (a) decorate
sampling requests, (b) turn failures into SFT samples and transform the sampled batch before the update,
(c) contribute SFT samples of its own. ``supervision.config.step_kind`` decides which update a step runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from learner.batch import SequenceBatch, rl_batch
from rollout.envs import Task
from rollout.formats import get_format
from rollout.worker import EpisodeRequest, Trajectory, by_group
from supervision.hint import strip_hint
from supervision.registry import SIGNALS
from supervision.signal import FailureBuffer, Rollouts, Setup


class Supervisor:
    def __init__(self, config, tokenizer, train_tasks: list[Task], run_dir: Path):
        self.config = config
        self.tokenizer = tokenizer
        self.fmt = get_format(config.rollout.format, config.rollout.tool_descriptions)
        setup = Setup(config, tokenizer, self.fmt, train_tasks, run_dir)
        self.signals = [signal(setup) for name, signal in SIGNALS.items() if name in config.supervision.signals]
        # the failure-driven signals' samples share one buffer of the most recent failures
        self.failures = FailureBuffer(config.supervision.erroneous.buffer_size)

    # ---- (a) sample -------------------------------------------------------------------------------------
    def decorate(self, groups: list[list[EpisodeRequest]]) -> list[list[EpisodeRequest]]:
        for signal in self.signals:
            groups = signal.decorate(groups)
        return groups

    # ---- (b) supervise ----------------------------------------------------------------------------------
    def transform(self, trajectories: list[Trajectory], tasks: list[Task],
                  train_groups: set[str] | None = None) -> tuple[SequenceBatch, dict[str, float]]:
        """The RL batch the learner trains on (the groups in ``train_groups``; None: every group), and what
        the signals did to it. Failures are collected from every group, also from those the update leaves out."""
        rollouts = Rollouts([strip_hint(t) for t in trajectories], {t.id: t for t in tasks}, train_groups)
        collected = self._collect_failures(rollouts)
        metrics = self._transformed(rollouts)
        keep = [i for i, t in enumerate(rollouts.trajectories) if rollouts.trains(t.group_id)]
        learner = self.config.learner
        batch = rl_batch([rollouts.trajectories[i] for i in keep], learner.scale_advantages_by_std,
                         learner.skip_flat_groups, [rollouts.origins[i] for i in keep],
                         self.config.rollout.temperature)
        batch.shaped_gamma, batch.hint_importance_cap = rollouts.shaped_gamma, rollouts.hint_importance_cap
        return batch, {**metrics, **collected}

    def informative_groups(self, trajectories: list[Trajectory], tasks: list[Task]) -> list[str]:
        """Ids of the groups, in order, whose rewards differ once ``transform`` has put the ground truth in
        (dynamic sampling keeps these): a group of failures that off_policy rescues teaches GRPO too."""
        rollouts = Rollouts(list(trajectories), {t.id: t for t in tasks})
        self._transformed(rollouts)
        trajectories = rollouts.trajectories
        return [group for group, members in by_group(trajectories).items()
                if len({trajectories[i].reward for i in members}) > 1]

    def _transformed(self, rollouts: Rollouts) -> dict[str, float]:
        """Every active signal's transform of ``rollouts``; the metrics of the inactive ones are 0, so that
        every run logs the same keys."""
        metrics = {name: 0.0 for signal in SIGNALS.values() for name in signal.metric_names}
        for signal in self.signals:
            metrics.update(signal.transform(rollouts))
        return metrics

    def _collect_failures(self, rollouts: Rollouts) -> dict[str, float]:
        """The failure-driven signals' samples of each group's first failure into the failure buffer (one
        per group: the task, not its G siblings, is the news); returns how many each signal made."""
        collected = {f"supervision/collected/{name}": 0.0 for name, signal in SIGNALS.items() if signal.from_failures}
        learners = [signal for signal in self.signals if signal.from_failures]
        trajectories = rollouts.trajectories
        for members in by_group(trajectories).values():
            failed = next((trajectories[i] for i in members if not trajectories[i].result.success), None)
            if failed is None:
                continue
            for signal in learners:
                samples = signal.failure_samples(rollouts.tasks[failed.task_id], failed)
                collected[f"supervision/collected/{signal.name}"] += len(samples)
                self.failures.add(samples)
        return collected

    # ---- (c) SFT samples --------------------------------------------------------------------------------
    def sft_batch(self, size: int) -> tuple[SequenceBatch, dict[str, float]]:
        """``size`` SFT sequences, shared evenly between the failure buffer and the signals with data of their
        own (the buffer's share rounded up; a source that runs short leaves its share to the next)."""
        own = [signal for signal in self.signals if signal.sft and not signal.from_failures]
        samples = self.failures.take(math.ceil(size / (1 + len(own))))
        for k, signal in enumerate(own):
            samples += signal.sft_samples(math.ceil((size - len(samples)) / (len(own) - k)))
        counts = {f"supervision/sft_samples/{name}": float(sum(s.signal == name for s in samples))
                  for name, signal in SIGNALS.items() if signal.sft}
        return SequenceBatch([s.ids for s in samples], [s.mask for s in samples]), counts

    # ---- checkpoint -------------------------------------------------------------------------------------
    def state(self) -> dict:
        state = {}
        for signal in self.signals:
            state.update(signal.state_dict())
        return {**state, "failures": self.failures.state()}

    def restore(self, state: dict) -> None:
        for signal in self.signals:
            signal.load_state_dict(state)
        self.failures.restore(state["failures"])
