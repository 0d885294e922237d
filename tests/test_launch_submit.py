"""launch.py submit to a real three-node Ray cluster on loopback (``ray start``), then jobs logs/status.

The job is a preset with SFT steps, run as the README tells a user to: ``train --config
configs/sft_then_rl.yaml`` on the random tiny policy, with the schedule moved so that the first step is an
SFT step (the preset switches to RL later) and the second an RL step (an update by its entropy bonus alone:
the random policy fails every episode), then a tiny eval, so the closing lines show in the job's log too. The other
presets take the same path through ``launch.py``; their schedules and signals are checked in-process on the
same config files (tests/supervision/test_preset_runs.py, tests/supervision/test_adaptive.py).
"""

from __future__ import annotations

import contextlib
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

# A loopback address other than 127.0.0.1: ``ray start --address`` (a node joining) replaces 127.0.0.1 with
# the machine's routable address, where a head on loopback does not listen.
LOOPBACK = "127.0.0.2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _ray_node(env: dict, temp_dir: Path, *args: str) -> subprocess.Popen:
    """``ray start --block`` on LOOPBACK in a session of its own, so that killing its process group ends the
    node (never ``ray stop``, which would end every Ray on the machine), with a temp dir of its own: nodes on one
    machine that share one unpack each job's working dir into the same place, deleting it under the job's
    driver. Its output goes to ``temp_dir.log``."""
    temp_dir.mkdir()
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--node-ip-address={LOOPBACK}",
         # the job agent's own port: the tests' embedded Ray holds the default (52365) on this machine
         f"--dashboard-agent-listen-port={_free_port()}", "--object-store-memory=300000000",
         f"--temp-dir={temp_dir}", *args],
        env=env, stdout=temp_dir.with_suffix(".log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def ray_nodes():
    """Three Ray nodes on a loopback address, started as a user starts them (``ray start --head``, then ``ray start
    --address`` with resources): a head with the Job API, a node offering the custom resource ``learner_node``
    and one offering ``rollout_node``. Yields the Job API address and the two nodes' ids. Separate processes
    with an environment of their own: a Ray that this pytest process started (token auth, its address) stays
    out of the cluster and of the job's driver."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    dashboard, gcs = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    # token auth off (loopback only, and the job client here would need the head's token); nodes may join
    # (Ray's multi-node switch, which the embedded Ray turns off to stay on 127.0.0.1)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="disabled",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the job's python
    temp_dirs = [Path(temp_dir) / f"node{index}" for index in range(3)]
    logs = [path.with_suffix(".log") for path in temp_dirs]
    nodes = [_ray_node(env, temp_dirs[0], "--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=true",
                       f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard}")]
    address = f"http://{LOOPBACK}:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except (OSError, RuntimeError):  # not listening yet
                if time.time() > deadline or nodes[0].poll() is not None:
                    pytest.fail(f"the Ray head did not come up: {logs[0].read_text()[-600:]}")
                time.sleep(1)
        by_role = {}
        # one node after the other: two raylets starting at once on 2 busy cores miss Ray's 30 s start timeout
        for node_dir, log, role in zip(temp_dirs[1:], logs[1:], ("learner", "rollout")):
            nodes.append(_ray_node(env, node_dir, f"--address={LOOPBACK}:{gcs}", "--num-cpus=2",
                                   f"--resources={json.dumps({f'{role}_node': 2})}"))
            while role not in by_role:
                by_role.update((role, node.node_id) for node in list_nodes(address=address, detail=True)
                               if node.state == "ALIVE" and f"{role}_node" in node.resources_total)
                if time.time() > deadline or nodes[-1].poll() is not None:
                    pytest.fail(f"the {role} node did not join the head: {log.read_text()[-600:]}")
                time.sleep(1)
        yield address, by_role
    finally:
        for node in reversed(nodes):  # SIGTERM would drain for 30 s first; nothing here needs draining
            with contextlib.suppress(ProcessLookupError):  # a node that failed to start
                os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


SFT_THEN_RL = ["trainer.total_steps=2", "trainer.tasks_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16",
               "trainer.samples_per_step=0", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0",
               "supervision.sft_then_rl.sft_steps=1", "supervision.sft_then_rl.sft_batch_size=2",
               "trainer.eval_every=2", "trainer.eval_tasks=2", "trainer.ood_eval_tasks=1"]


@pytest.mark.slow
def test_submit_trains_a_preset_across_the_nodes_of_a_cluster(ray_nodes, tiny_model_dir, tmp_path, capsys):
    """The learner on the node with ``learner_node``, both rollout workers on the one with ``rollout_node``:
    every weight sync crosses nodes, and the run's samples come from the synced weights."""
    from ray.util.state import list_actors

    ray_head, nodes = ray_nodes
    run_dir = tmp_path / "run"
    overrides = [f"trainer.model={tiny_model_dir}", f"trainer.run_dir={run_dir}", *SFT_THEN_RL, "rollout.workers=2",
                 "learner.resources={learner_node: 1}", "rollout.resources={rollout_node: 1}",
                 "learner.entropy_coef=0.05", "learner.skip_flat_groups=false"]
    code = main(["submit", "--address", ray_head, "--follow", "--", "train", "--config", "configs/sft_then_rl.yaml",
                 *(arg for override in overrides for arg in ("--set", override))])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    job_id = out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_") and f"job {job_id}: SUCCEEDED" in out
    assert "(sft): sft loss" in out and "(rl): sampled success 0.0 %" in out
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
    # where Ray ran the actors (the state API keeps ended ones); step 2 sampled with step 1's weights, synced
    # across nodes: the learner's logprobs of its samples match the engines'
    placed = {(a.class_name, a.node_id) for a in list_actors(address=ray_head, detail=True, limit=1000)}
    assert {node for name, node in placed if name == "Learner"} == {nodes["learner"]}
    assert {node for name, node in placed if name == "RolloutWorker"} == {nodes["rollout"]}
    assert trained[1]["rollout_logprob_diff"] < 1e-3


def test_submit_rejects_a_bad_command_before_contacting_the_cluster(capsys):
    with pytest.raises(SystemExit):
        main(["submit", "--address", "http://127.0.0.1:9", "--", "trian"])
    assert "invalid choice" in capsys.readouterr().err
