"""launch.py submit against a real local Ray head (ray start --head on 127.0.0.1), then jobs logs/status.

The job is a preset with SFT steps, run as the README tells a user to: ``train --config
configs/sft_then_rl.yaml`` on the random tiny policy, with the schedule moved so that the first step is an
SFT step (the preset switches to RL later) and the second an RL step, which makes no update (the random
policy fails every episode), then a tiny eval, so the closing lines show in the job's log too. The other
presets take the same path through ``launch.py``; their schedules and signals are checked in-process on the
same config files (tests/supervision/test_preset_runs.py, tests/supervision/test_adaptive.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from launch import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A head node of its own, stopped by killing the process group of ``ray start --block`` (never ``ray stop``,
    which would kill every Ray on the machine)."""
    dashboard = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    # token auth off: loopback only, and the job client here would need the token the head generates
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
         "--include-dashboard=true", f"--temp-dir={temp_dir}",
         # the job agent's own port: the tests' embedded Ray holds the default (52365) on this machine
         f"--dashboard-agent-listen-port={_free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 90
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except (OSError, RuntimeError):  # not listening yet
            if time.time() > deadline or head.poll() is not None:
                os.killpg(head.pid, signal.SIGKILL)
                pytest.fail("the Ray head did not come up")
            time.sleep(1)
    yield address
    os.killpg(head.pid, signal.SIGKILL)  # SIGTERM would drain for 30 s first; nothing here needs draining
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


SFT_THEN_RL = ["trainer.total_steps=2", "trainer.tasks_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16",
               "trainer.samples_per_step=0", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0",
               "supervision.sft_then_rl.sft_steps=1", "supervision.sft_then_rl.sft_batch_size=2",
               "trainer.eval_every=2", "trainer.eval_tasks=2", "trainer.ood_eval_tasks=1"]


@pytest.mark.slow
def test_submit_trains_a_preset_with_sft_steps_on_a_cluster(ray_head, tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    overrides = [f"trainer.model={tiny_model_dir}", f"trainer.run_dir={run_dir}", *SFT_THEN_RL]
    code = main(["submit", "--address", ray_head, "--follow", "--", "train", "--config", "configs/sft_then_rl.yaml",
                 *(arg for override in overrides for arg in ("--set", override))])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_") and f"job {job_id}: SUCCEEDED" in out
    assert "(sft): sft loss" in out and "(rl, no update: every group's rewards were equal)" in out
    assert "sampled success" in out and "sampled reward" not in out  # binary reward: one number
    assert "eval success id " in out and "format_ood " in out and "content_ood " in out
    assert "greedy synth/test success " in out and "(2 tasks) in " in out
    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert "run directory:" in capsys.readouterr().out
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if r["step"] > 0]
    assert [r["step"] for r in trained] == [1, 2] and [r["update/sft"] for r in trained] == [1.0, 0.0]
    assert "sft_loss" in trained[0] and not trained[0]["update/skipped"]  # a real SFT update on expert dialogs
    assert (run_dir / "checkpoints" / "step_000002" / "model.safetensors").exists()


def test_submit_rejects_a_bad_command_before_contacting_the_cluster(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--address", "http://127.0.0.1:9", "--", "trian"])
    assert "invalid choice" in capsys.readouterr().err
