"""Tool environments. ``load_tasks(env, split)`` is the one entry point for tasks of either environment."""

from __future__ import annotations

from rollout.envs.base import EnvEpisode, EpisodeResult, Step, Task, replay_ground_truth, run_episode

ENVS = ("bfcl", "synth")


def _module(env: str):
    if env == "bfcl":
        from rollout.envs import bfcl

        return bfcl
    if env == "synth":
        from rollout.envs import synth

        return synth
    raise ValueError(f"unknown environment {env!r}; choose from {', '.join(ENVS)}")


def split_names(env: str) -> list[str]:
    """Named splits of ``env``; every environment also answers ``all`` (each of its tasks once)."""
    names = list(_module(env).SPLITS)
    return names if "all" in names else [*names, "all"]


def load_tasks(env: str, split: str, seed: int = 0, limit: int | None = None) -> list[Task]:
    """The tasks of ``split`` in ``env`` (deterministic for a seed), the first ``limit`` of them if given."""
    module = _module(env)
    if split == "all" and "all" not in module.SPLITS:
        tasks = [task for name in module.SPLITS for task in module.load_tasks(name, seed)]
    else:
        tasks = module.load_tasks(split, seed)
    return tasks if limit is None else tasks[:limit]


__all__ = ["ENVS", "EnvEpisode", "EpisodeResult", "Step", "Task", "load_tasks", "replay_ground_truth", "run_episode", "split_names"]
