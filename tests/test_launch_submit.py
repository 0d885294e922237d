"""launch.py submit against a real local Ray head (ray start --head on 127.0.0.1), then jobs logs/status."""

from __future__ import annotations

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


@pytest.mark.slow
def test_submit_runs_one_training_step_on_a_cluster(ray_head, tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["submit", "--address", ray_head, "--follow", "--", "train",
                 "--set", f"trainer.model={tiny_model_dir}", "--set", "trainer.total_steps=1",
                 "--set", "trainer.tasks_per_step=2", "--set", "rollout.group_size=2", "--set", "trainer.eval_every=0",
                 "--set", "rollout.max_new_tokens=16", "--set", f"trainer.run_dir={run_dir}",
                 "--set", "trainer.dynamic_sampling.enabled=false"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "step 1 (rl" in out and "sampled success" in out and f"job {job_id}: SUCCEEDED" in out
    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert "run directory:" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "step_000001" / "model.safetensors").exists()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_submit_rejects_a_bad_command_before_contacting_the_cluster(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--address", "http://127.0.0.1:9", "--", "trian"])
    assert "invalid choice" in capsys.readouterr().err
