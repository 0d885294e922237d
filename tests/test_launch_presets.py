"""A preset with SFT steps trains from the command line, as the README tells a user to run it.

Two steps of ``launch.py train --config configs/sft_then_rl.yaml`` on the random tiny policy, with the
schedule moved so that the first step is an SFT step (the preset puts its switch to RL later) and the
second an RL step, which makes no update (the random policy fails every episode), then a tiny eval, so the
closing lines show too. The other presets take the same path through ``launch.py``; their schedules and
signals are checked in-process on the same config files (tests/supervision/test_preset_runs.py,
tests/supervision/test_adaptive.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["trainer.total_steps=2", "trainer.tasks_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16",
             "trainer.save_every=0", "trainer.samples_per_step=0", "trainer.dynamic_sampling.enabled=false",
             "learner.warmup_steps=0", "supervision.sft_then_rl.sft_steps=1", "supervision.sft_then_rl.sft_batch_size=2",
             "trainer.eval_every=2", "trainer.eval_tasks=2", "trainer.ood_eval_tasks=1"]


@pytest.mark.slow
def test_sft_then_rl_trains_from_the_cli(tiny_model_dir, tmp_path):
    overrides = [f"trainer.model={tiny_model_dir}", f"trainer.run_dir={tmp_path / 'run'}", *OVERRIDES]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "launch.py", "train", "--config", "configs/sft_then_rl.yaml",
         *(arg for override in overrides for arg in ("--set", override))],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    print(f"{time.perf_counter() - started:.1f} s")  # shown with -s: the cost of this test
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if r["step"] > 0]
    assert [r["step"] for r in trained] == [1, 2] and [r["update/sft"] for r in trained] == [1.0, 0.0]
    assert "sft_loss" in trained[0] and not trained[0]["update/skipped"]  # a real SFT update on expert dialogs
    out = result.stdout
    assert "(sft): sft loss" in out and "(rl, no update: every group's rewards were equal)" in out
    assert "sampled success" in out and "sampled reward" not in out  # binary reward: one number
    assert "eval success id " in out and "format_ood " in out and "content_ood " in out
    assert "greedy synth/test success " in out and "(2 tasks) in " in out
