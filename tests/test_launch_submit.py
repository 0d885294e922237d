"""launch.py submit to a real three-node Ray cluster on 127.0.0.1, then jobs logs/status.

The job is a preset with SFT steps, run as the README tells a user to: ``train --config
configs/sft_then_rl.yaml`` on the random tiny policy, with the schedule moved so that the first step is an
SFT step (the preset switches to RL later) and the second an RL step (an update by its entropy bonus alone:
the random policy fails every episode), then a tiny eval, so the closing lines show in the job's log too. The other
presets take the same path through ``launch.py``; their schedules and signals are checked in-process on the
same config files (tests/supervision/test_preset_runs.py, tests/supervision/test_adaptive.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
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
def ray_nodes(monkeypatch):
    """Three Ray nodes on loopback (Ray's own ``cluster_utils.Cluster``, in temp dirs of their own): a head with
    the dashboard and the Job API, a node offering the custom resource ``learner_node`` and one offering
    ``rollout_node``. Yields the Job API address and the two nodes' ids; ends its processes, never ``ray stop``."""
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    # token auth off: loopback only, and the job client here would need the token the head generates
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # without it a node's processes reach each other on the routable address (the job agent never answers)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the job's python
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dashboard = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    # each node's job agent on a port of its own: the tests' embedded Ray holds the default (52365)
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 300 << 20}
    cluster = Cluster(initialize_head=True, connect=False, shutdown_at_exit=True, head_node_args={
        **common, "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard,
        "dashboard_agent_listen_port": _free_port(), "temp_dir": temp_dir})
    try:
        nodes = {role: cluster.add_node(**common, num_cpus=2, resources={f"{role}_node": 2},
                                        dashboard_agent_listen_port=_free_port()).node_id
                 for role in ("learner", "rollout")}
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.time() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except (OSError, RuntimeError):  # not listening yet
                if time.time() > deadline:
                    pytest.fail("the Ray head's Job API did not come up")
                time.sleep(1)
        yield address, nodes
    finally:
        cluster.shutdown()
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
