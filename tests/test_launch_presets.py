"""Presets with SFT steps train from the command line, as the README tells a user to run them.

Each run is 2 steps of ``launch.py train --config configs/<preset>.yaml`` on the random tiny policy, with
the schedule moved so that one of the two steps is an SFT step (the presets put theirs at step 5 or later),
the other an RL step; the random policy fails every episode, so that RL step makes no update. The
interleaved presets take the same path through ``launch.py``; their schedules and signals are checked
in-process (tests/supervision/test_preset_runs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["trainer.total_steps=2", "trainer.tasks_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16",
         "trainer.eval_every=0", "trainer.save_every=0", "trainer.samples_per_step=0", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0"]
PRESETS = {
    # SFT, RL; with a tiny eval after the last step, so the eval line and the closing line show too
    "sft_then_rl": ["supervision.sft_then_rl.sft_steps=1", "supervision.sft_then_rl.sft_batch_size=2",
                    "trainer.eval_every=2", "trainer.eval_tasks=2", "trainer.ood_eval_tasks=1"],
    # RL, SFT: the random policy's messages are all collapsed, which fires the alarm at step 1
    "adaptive": ["supervision.adaptive.sft_batch_size=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_from_the_cli(preset, tiny_model_dir, tmp_path):
    overrides = [f"trainer.model={tiny_model_dir}", f"trainer.run_dir={tmp_path / 'run'}", *SMALL, *PRESETS[preset]]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "launch.py", "train", "--config", f"configs/{preset}.yaml",
         *(arg for override in overrides for arg in ("--set", override))],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    print(f"{preset}: {time.perf_counter() - started:.1f} s")  # shown with -s: the cost of this test
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if r["step"] > 0]
    assert [r["step"] for r in trained] == [1, 2]
    sft = next(r for r in trained if r["update/sft"])
    assert "sft_loss" in sft and not sft["update/skipped"]  # a real SFT update on the preset's signals
    out = result.stdout
    assert "(sft): sft loss" in out and "(rl, no update: every group's rewards were equal)" in out
    assert "sampled success" in out and "sampled reward" not in out  # binary reward: one number
    if preset == "sft_then_rl":
        assert "eval success id " in out and "format_ood " in out and "content_ood " in out
        assert "greedy synth/test success " in out and "(2 tasks) in " in out
