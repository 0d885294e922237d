"""Dynamic sampling (DAPO) without an engine: the drawing loop, and how supervision decides what is informative."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cluster.config import load_config
from cluster.sampling import TaskSampler, draw_informative
from rollout.chat import load_tokenizer
from rollout.envs import load_tasks
from supervision.supervisor import Supervisor
from tests.scripted import scripted_episode


def _roller(sampler: TaskSampler, informative_tasks: set[int]):
    """A stand-in for the rollouts: draw d's groups are its tasks (ints); a task is informative when it is in
    ``informative_tasks``. Records the draws it was asked for."""
    asked = []

    def roll(draw: int):
        asked.append(draw)
        tasks = sampler.draw(2)
        return tasks, [f"d{draw}:{task}" for task in tasks]  # one "trajectory" per group is enough here

    def informative(trajectories, tasks):
        return [t for t, task in zip(trajectories, tasks) if task in informative_tasks]

    return roll, informative, asked


def test_draws_until_the_step_has_its_informative_groups_and_trains_on_the_first_of_them():
    sampler = TaskSampler(list(range(20)), seed=0)
    order = sampler._shuffled()
    # one informative task in the first draw, two in the second, one more in the third (never reached)
    roll, informative, asked = _roller(sampler, {order[1], order[2], order[3], order[4]})
    draws = draw_informative(roll, informative, wanted=2, max_draws=4)
    assert asked == [0, 1]  # stops as soon as two groups are informative
    assert draws.train_groups == {f"d0:{order[1]}", f"d1:{order[2]}"}  # the surplus d1:order[3] stays out
    assert draws.tasks == order[:4] and len(draws.trajectories) == 4  # every sampled group is reported
    assert draws.metrics == {"dynamic_sampling/draws": 2.0, "dynamic_sampling/sampled_groups": 4.0,
                             "dynamic_sampling/informative_groups": 3.0}
    assert sampler.position == 4  # the next step goes on after every task drawn (the checkpoint keeps it)


def test_draws_stop_at_the_cap_and_the_step_trains_on_what_was_found():
    sampler = TaskSampler(list(range(20)), seed=0)
    order = sampler._shuffled()
    roll, informative, asked = _roller(sampler, {order[5]})
    draws = draw_informative(roll, informative, wanted=2, max_draws=3)
    assert asked == [0, 1, 2]
    assert draws.train_groups == {f"d2:{order[5]}"}
    assert draws.metrics["dynamic_sampling/draws"] == 3.0 and draws.metrics["dynamic_sampling/sampled_groups"] == 6.0
    assert draw_informative(*_roller(sampler, set())[:2], wanted=2, max_draws=1).train_groups == set()


# seed 0 and 1 over six tasks, pinned: a checkpoint keeps only (epoch, position), so a resumed run sees the
# order it left only while this shuffle stays the same
SEED_0 = [[4, 2, 1, 0, 5, 3], [2, 3, 5, 0, 4, 1]]  # epochs 0 and 1
SEED_1 = [3, 0, 5, 1, 2, 4]


def test_each_epoch_is_a_fresh_seeded_order_of_every_task():
    sampler = TaskSampler(list(range(6)), seed=0)
    assert sampler.draw(6) == SEED_0[0] and sampler.state() == {"epoch": 0, "position": 6}
    assert sampler.draw(6) == SEED_0[1] and sampler.state() == {"epoch": 1, "position": 6}
    assert TaskSampler(list(range(6)), seed=0).draw(12) == SEED_0[0] + SEED_0[1]  # the same seed, the same order
    assert TaskSampler(list(range(6)), seed=1).draw(6) == SEED_1
    assert sorted(TaskSampler(list(range(50)), seed=3).draw(50)) == list(range(50))  # a permutation
    assert TaskSampler(list("abc"), seed=0).tasks == ["a", "b", "c"]  # the task list itself is not shuffled


def test_a_draw_across_the_end_of_an_epoch_wraps_into_the_next():
    sampler = TaskSampler(list(range(6)), seed=0)
    assert sampler.draw(4) == SEED_0[0][:4]
    assert sampler.draw(4) == SEED_0[0][4:] + SEED_0[1][:2]  # the rest of epoch 0, then epoch 1's start
    assert sampler.state() == {"epoch": 1, "position": 2}
    # a draw larger than an epoch spans several; the epoch turns over only when the next task is needed
    assert TaskSampler(list(range(6)), seed=0).draw(13)[:12] == SEED_0[0] + SEED_0[1]
    exact = TaskSampler(list(range(6)), seed=0)
    exact.draw(6)
    assert exact.state() == {"epoch": 0, "position": 6}
    assert exact.draw(0) == [] and exact.state() == {"epoch": 0, "position": 6}


@pytest.mark.parametrize("first", [0, 3, 6, 8, 12])
def test_a_restored_sampler_draws_what_the_original_would_have(first):
    original = TaskSampler(list(range(6)), seed=0)
    original.draw(first)
    state = original.state()
    resumed = TaskSampler(list(range(6)), seed=0)
    resumed.restore(dict(state))
    assert resumed.state() == state
    assert resumed.draw(10) == original.draw(10)
    assert resumed.state() == original.state()


def test_restore_rebuilds_the_order_of_the_saved_epoch():
    sampler = TaskSampler(list(range(6)), seed=0)
    sampler.restore({"epoch": 1, "position": 3})
    assert sampler.draw(3) == SEED_0[1][3:]
    other_seed = TaskSampler(list(range(6)), seed=1)
    other_seed.restore({"epoch": 0, "position": 0})
    assert other_seed.draw(6) == SEED_1


@pytest.fixture(scope="module")
def groups(tiny_model_dir):
    """Three groups of two on three tasks: a and b failed twice (flat), c has a success beside a failure."""
    tokenizer = load_tokenizer(tiny_model_dir)
    tasks = [t for t in load_tasks("synth", "train", limit=50) if all(t.ground_truth)][:3]
    trajectories = []
    for name, task in zip("abc", tasks):
        failed, _ = scripted_episode(task, tokenizer, replies=["I cannot help."] * len(task.turns))
        other = scripted_episode(task, tokenizer)[0] if name == "c" else failed
        trajectories += [replace(failed, group_id=name, sample_index=0), replace(other, group_id=name, sample_index=1)]
    assert [t.reward for t in trajectories] == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    return tokenizer, tasks, trajectories


def _supervisor(tokenizer, tasks, tmp_path, *signals: str) -> Supervisor:
    mode = "interleaved" if "erroneous" in signals else "none"  # a mode that accepts the signals
    config = load_config(None, [f"supervision.mode={mode}", f"supervision.signals=[{','.join(signals)}]"])
    return Supervisor(config, tokenizer, tasks, tmp_path)


def test_a_group_that_off_policy_rescues_is_informative_and_trains_with_its_ground_truth(groups, tmp_path):
    tokenizer, tasks, trajectories = groups
    assert _supervisor(tokenizer, tasks, tmp_path).informative_groups(trajectories, tasks) == ["c"]
    supervisor = _supervisor(tokenizer, tasks, tmp_path, "off_policy", "erroneous")
    # off_policy puts the ground truth (reward 1) into a and b, where nothing succeeded
    assert supervisor.informative_groups(trajectories, tasks) == ["a", "b", "c"]
    batch, metrics = supervisor.transform(trajectories, tasks, train_groups={"a", "c"})
    assert len(batch) == 4 and batch.origins == ["policy", "expert", "policy", "policy"]
    assert batch.advantages[1] > 0 > batch.advantages[0]
    assert metrics["supervision/replaced_group_share"] == 0.5
    # group b stays out of the update, but its failure still reaches the failure buffer
    assert {item.task_id for item in supervisor.failures.items} == {task.id for task in tasks}
