"""A RolloutPool whose worker process is killed (SIGKILL, as a preempted node or the OOM killer does it):
the step's trajectories are those of the undisturbed step, and one death too many stops it with one line."""

from __future__ import annotations

import time

import pytest
import torch

from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import load_tasks
from rollout.worker import group_requests
from tests.chaos import kill, kill_after, process_id


def _played(trajectories) -> list:
    return [(t.group_id, t.sample_index, t.token_ids, t.reward) for t in trajectories]


def _same(replayed, undisturbed) -> bool:
    """Same episodes, tokens and rewards; logprobs within float noise (an engine that reuses cached prefixes
    computes them in other matmul shapes: up to 2e-6 apart, measured)."""
    gap = max(abs(a - b) for x, y in zip(replayed, undisturbed) for a, b in zip(x.logprobs, y.logprobs))
    return _played(replayed) == _played(undisturbed) and gap < 1e-4


@pytest.mark.slow
def test_a_killed_worker_comes_back_with_the_current_weights_and_replays_its_episodes(ray_local, tiny_model_dir):
    import ray

    from learner.models import load_policy
    from rollout.pool import RolloutPool, RolloutWorkerLost

    config = RolloutConfig(workers=2, max_restarts=1, max_new_tokens=24, worker_cpus=0.5)
    pool = RolloutPool(tiny_model_dir, config, RewardConfig(), seed=0)
    try:
        tasks = load_tasks("synth", "test", seed=0, limit=4)
        from_files = pool.generate(tasks, group_size=2, seed=7)
        # weights other than the model files' (which a restarted engine loads): a worker that came back
        # without them would sample other tokens
        policy, _ = load_policy(tiny_model_dir)
        generator = torch.Generator().manual_seed(0)
        pool.load_weights(ray.put({name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
                                   for name, tensor in policy.state_dict().items()}))
        undisturbed = pool.generate(tasks, group_size=2, seed=7)
        assert _played(undisturbed) != _played(from_files)
        # worker 0's share of such a call, alone (the other share may take far longer)
        share = [request for index, group in enumerate(group_requests(tasks, 2, 7)) if index % 2 == 0
                 for request in group]
        started = time.perf_counter()
        ray.get(pool.workers[0].run.remote(share, None, pool.version))
        share_s = time.perf_counter() - started

        # killed between calls: the next call reaches the restarted worker, which refuses it (StaleWorker)
        # or finds it dead; either way it is brought back and the call replayed
        kill(pool.workers[1])
        time.sleep(10.0)
        assert _same(pool.generate(tasks, group_size=2, seed=7), undisturbed)
        assert pool.restarts == [0, 1]

        # killed a third into its share of a call
        victim = process_id(pool.workers[0])
        started = time.perf_counter()
        timer = kill_after(pool.workers[0], share_s / 3)
        replayed = pool.generate(tasks, group_size=2, seed=7)
        timer.join()
        assert _same(replayed, undisturbed)
        assert pool.restarts == [1, 1] and process_id(pool.workers[0]) != victim
        print(f"a call whose worker was killed {share_s / 3:.1f} s into its {share_s:.1f} s share took "
              f"{time.perf_counter() - started:.1f} s")

        # a second death of worker 0 is one more than rollout.max_restarts=1
        kill(pool.workers[0])
        with pytest.raises(RolloutWorkerLost, match=r"rollout worker 0 died 2 time\(s\) and rollout.max_restarts is 1"):
            pool.generate(tasks, group_size=2, seed=7)
    finally:
        pool.close()
