"""Two RolloutWorker actors on a real local Ray share one batch of 16 tasks x group 4."""

from __future__ import annotations

import pytest

from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import load_tasks
from rollout.worker import RolloutPool

pytestmark = pytest.mark.slow


def test_two_workers_return_every_group(ray_local, tiny_model_dir):
    config = RolloutConfig(workers=2, worker_cpus=1, max_new_tokens=32, max_total_tokens=1024)
    pool = RolloutPool(tiny_model_dir, config, RewardConfig())
    tasks = load_tasks("synth", "test", limit=16)
    trajectories = pool.generate(tasks, group_size=4, seed=0)
    pool.close()
    assert len(trajectories) == 64
    groups = {}
    for trajectory in trajectories:
        groups.setdefault(trajectory.group_id, []).append(trajectory)
    assert len(groups) == 16 and all(len(g) == 4 for g in groups.values())
    assert {t.task_id for t in trajectories} == {t.id for t in tasks}
    turns = {t.id: len(t.turns) for t in tasks}
    for trajectory in trajectories:
        # the reward comes from the environment: every user turn was checked, the value follows the checks
        assert trajectory.result.turns == turns[trajectory.task_id]
        assert trajectory.reward == float(trajectory.result.success)
        assert sum(trajectory.loss_mask) > 0
    assert sorted(t.sample_index for t in groups[next(iter(groups))]) == [0, 1, 2, 3]
