"""A process killed in the middle of writing a checkpoint leaves the previous one intact and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CHILD = """
import sys
from pathlib import Path
from cluster.checkpoints import save_checkpoint
from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.rank import Learner, free_port

model, directory = sys.argv[1], Path(sys.argv[2])
learner = Learner(model, LearnerConfig(lr=1e-2, threads=1, warmup_steps=0))
learner.connect("127.0.0.1", free_port())
batch = SequenceBatch([[5, 6, 7, 8, 9]], [[0, 0, 1, 1, 1]])
learner.sft_update(batch)
save_checkpoint(learner, directory, 1, {"step": 1}, keep=5)
print("saved", flush=True)
step = 2
while True:  # keep writing: the parent kills us in the middle of one of these
    save_checkpoint(learner, directory, step, {"step": step}, keep=1000)
    step += 1
"""


@pytest.mark.slow
def test_killed_checkpoint_write_leaves_the_previous_checkpoint_loadable(tiny_model_dir, tmp_path):
    from cluster.checkpoints import latest_checkpoint
    from learner.config import LearnerConfig
    from learner.models import load_policy
    from learner.rank import Learner

    directory = tmp_path / "checkpoints"
    child = subprocess.Popen([sys.executable, "-c", CHILD, tiny_model_dir, str(directory)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    assert child.stdout.readline().strip() == "saved"
    deadline = time.time() + 120
    while not any(p.name.startswith(".step_") and (p / "model.safetensors").exists() for p in directory.iterdir()):
        assert time.time() < deadline and child.poll() is None, "never caught a checkpoint mid-write"
    os.kill(child.pid, signal.SIGKILL)  # weights written, optimizer state not yet
    child.wait()
    partial = [p for p in directory.iterdir() if p.name.startswith(".step_")]
    assert partial, "the kill should have left a half-written staging directory"
    latest = latest_checkpoint(directory)
    assert latest is not None and latest.is_dir() and not latest.name.startswith(".")
    # the checkpoint the pointer names is complete: it loads in transformers and resumes a Learner
    model, _ = load_policy(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    import torch.distributed as dist

    from learner.rank import free_port

    learner = Learner(str(latest), LearnerConfig(threads=1, warmup_steps=0))
    learner.connect("127.0.0.1", free_port())
    try:
        state = learner.load(str(latest))
        assert state["step"] == int(latest.name.removeprefix("step_")) and learner.optimizer_step == 1
    finally:
        dist.destroy_process_group()
