"""The CLI: help everywhere, one-line errors without tracebacks, and the commands' real output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("command", [[], ["tasks"], ["check"], ["eval"]])
def test_help(command):
    result = launch(*command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["tasks", "--set", "rollout.grup_size=3"],
        ["tasks", "--env", "synth", "--split", "nope"],
        ["check", "--env", "bfcl", "--split", "nope"],
        ["tasks", "--n", "0"],
        ["check"],
        ["tasks", "--config", "configs/missing.yaml"],
    ],
)
def test_bad_input_is_one_line_without_traceback(args):
    result = launch(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_tasks_prints_ood_tasks():
    result = launch("tasks", "--env", "synth", "--split", "ood_content", "--n", "3")
    assert result.returncode == 0
    assert [line for line in result.stdout.splitlines() if "synth_ood_content_" in line].__len__() == 3
    as_json = launch("tasks", "--env", "synth", "--split", "ood_content", "--n", "3", "--json")
    tasks = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [t["id"] for t in tasks] == ["synth_ood_content_0", "synth_ood_content_1", "synth_ood_content_2"]
    assert all(t["ground_truth"] and t["tools"] for t in tasks)


@pytest.mark.slow
def test_check_bfcl_scores_every_ground_truth():
    result = launch("check", "--env", "bfcl")
    assert result.returncode == 0, result.stdout[-2000:]
    total = next(line for line in result.stdout.splitlines() if "total" in line)
    assert "800" in total and "100.0%" in total


def test_check_strict_mode_passes_on_miss_param():
    # no ground truth calls a tool in a turn whose truth is empty, so strict scoring passes too
    assert launch("check", "--env", "bfcl", "--split", "miss_param", "--mode", "strict").returncode == 0


def test_check_exits_1_and_names_the_failure(monkeypatch, capsys):
    import launch as cli
    from rollout import envs

    real = envs.replay_ground_truth

    def break_one(task, reward=None):
        result = real(task, reward)
        if task.id == "synth_test_3":
            result.success, result.first_failed_turn, result.failure = False, 0, "state mismatch in X: y"
        return result

    monkeypatch.setattr(envs, "replay_ground_truth", break_one)
    assert cli.main(["check", "--env", "synth", "--split", "test"]) == 1
    assert "synth_test_3 turn 0: state mismatch in X: y" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_of_the_committed_default_reports(tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "launch.py", "eval", "--model", "default", "--env", "synth", "--split", "test",
         "--limit", "6", "--workers", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "turn accuracy" in result.stdout and "all" in result.stdout
    report = json.loads(out.read_text())
    assert [row["id"] for row in report["tasks"]] == [f"synth_test_{i}" for i in range(6)]
    assert report["summary"]["all"]["tasks"] == 6
    assert all(row["generated_tokens"] > 0 and row["turns"] >= 1 for row in report["tasks"])


def test_check_synth_all_splits_passes():
    """What `make train` runs first (the default split `all`)."""
    result = launch("check", "--env", "synth")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1400" in next(line for line in result.stdout.splitlines() if "total" in line)
