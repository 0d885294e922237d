"""benchmarks/gpu_smoke.py runs its CPU-possible checks here without error (the 2-step train is left to
the GPU run: launch.py train and resume have tests of their own in tests/test_launch.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_smoke_script_passes_its_cpu_checks(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--skip-train", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_smoke.json").read_text())
    assert {name: r["status"] for name, r in results.items()} == {
        "versions": "ok", "checkpoint": "ok", "connect": "ok", "rl_update": "ok", "weights": "ok", "engine": "ok",
        "train": "skip", "pairing": "skip"}
    assert results["versions"]["vllm"] == "0.32.0" and results["checkpoint"]["vocab_size"] == 151_936
    assert results["connect"]["backend"] == "gloo"
    engine = results["engine"]
    assert engine["logprob_diff_max"] < 1e-3 and engine["tokens_changed_by_training"] > 0
    assert results["rl_update"]["1024_tokens"]["peak_over_start_mb"] < 1024
