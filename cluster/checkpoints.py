"""A run directory's checkpoints: writing them with a ``latest`` pointer, finding the one to resume from."""

from __future__ import annotations

import shutil
from pathlib import Path

from cluster.config import ToolRLConfig

LATEST = "latest"


class RunDirectoryError(ValueError):
    """The run directory holds another run; the message says how to resume or start elsewhere."""


def save_checkpoint(learners, directory: Path, step: int, run_state: dict, keep: int,
                    files: dict[str, bytes] | None = None) -> Path:
    """``learners.save`` writes atomically, then ``files`` (name → bytes) go beside it; the ``latest``
    pointer moves only once all that has finished."""
    name = f"step_{step:06d}"
    learners.save(str(directory / name), run_state)
    for file, data in (files or {}).items():
        staging = directory / name / f".{file}.tmp"
        staging.write_bytes(data)
        staging.replace(directory / name / file)
    pointer = directory / f".{LATEST}.tmp"
    pointer.write_text(name + "\n")
    pointer.replace(directory / LATEST)
    for old in sorted(p for p in directory.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return directory / name


def latest_checkpoint(directory: Path) -> Path | None:
    pointer = directory / LATEST
    return directory / pointer.read_text().strip() if pointer.exists() else None


def checkpoint_before(directory: Path, step: int) -> Path | None:
    """The newest complete checkpoint of a step before ``step`` (partial writes are hidden directories)."""
    return max((p for p in directory.glob("step_*") if p.is_dir() and int(p.name.removeprefix("step_")) < step),
               default=None)


def checkpoint_to_resume(config: ToolRLConfig) -> Path | None:
    """The checkpoint a run continues from (None for a new run); refuses to overwrite another run."""
    run_dir = config.run_path()
    if config.trainer.resume:
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise RunDirectoryError(f"trainer.resume: no checkpoint to resume in {run_dir / 'checkpoints'}")
        return latest
    if (run_dir / "metrics.jsonl").exists():
        raise RunDirectoryError(
            f"run directory {run_dir} already holds a run; resume it with --set trainer.resume=true "
            "or pick another --set name=... / trainer.run_dir=..."
        )
    return None
