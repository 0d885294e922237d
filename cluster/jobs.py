"""The Ray Job API client: run a launch.py command on a cluster with this checkout as its working dir."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

# Never uploaded: environments, caches and outputs (Ray also skips what .gitignore lists).
EXCLUDES = [".venv", ".git", "runs", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(address: str, command: list[str], working_dir: Path) -> str:
    """Submit ``python launch.py <command>`` and return the job id."""
    entrypoint = shlex.join(["python", "launch.py", *command])
    return _client(address).submit_job(
        entrypoint=entrypoint, runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES}
    )


def status(address: str, job_id: str) -> str:
    return str(_client(address).get_job_status(job_id).value)


def logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    return _client(address).stop_job(job_id)


def follow(address: str, job_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> str:
    """Stream the job's log to ``write`` until it ends; returns its final status."""
    client, shown = _client(address), 0
    while True:
        state = str(client.get_job_status(job_id).value)
        text = client.get_job_logs(job_id)
        if len(text) > shown:
            write(text[shown:])
            shown = len(text)
        if state in TERMINAL:
            return state
        time.sleep(poll_s)
