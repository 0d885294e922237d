"""Greedy success, sampled success and pass@k per category and per template: what RL has to sharpen.

RL raises greedy success by making what the policy already samples sometimes more likely, so the question
before training is how far pass@k at the training temperature lies above greedy, and where. pass@k is
Chen et al. (2021)'s unbiased estimator from n samples of which c succeed: 1 - C(n-c, k) / C(n, k).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from math import comb

from rollout.envs import Task
from rollout.worker import EpisodeRequest, Trajectory, group_requests

PASS_KS = (1, 2, 4, 8, 16, 32)
SAMPLE_SEED = 1  # the sampled episodes' seed, shared by the model card and eval --samples (same draws)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) succeeds."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    return 1.0 - comb(n - c, k) / comb(n, k)


def task_templates_of(task: Task, seed: int) -> list[str]:
    """A synth task's templates (one per turn, in order of first use); [] for other environments."""
    if task.env != "synth":
        return []
    from rollout.envs.synth import task_templates

    return list(dict.fromkeys(task_templates(task, seed)))


def headroom_rows(play: Callable[[list[list[EpisodeRequest]], float], list[Trajectory]], tasks: list[Task],
                  samples: int, temperature: float, seed: int, env_seed: int = 0, fmt: str | None = None,
                  greedy: dict[str, bool] | None = None) -> list[dict]:
    """Per task: greedy success, and the successes among ``samples`` episodes at ``temperature``. ``play``
    runs groups of requests at a temperature (``RolloutPool.run_groups``, or one in-process worker).
    ``greedy``: success per task id when a greedy eval already measured it (then it is not played again)."""
    if greedy is None:
        greedy = {t.task_id: t.result.success for t in play(group_requests(tasks, 1, 0, "greedy", fmt), 0.0)}
    successes: dict[str, int] = defaultdict(int)
    for trajectory in play(group_requests(tasks, samples, seed, "sampled", fmt), temperature):
        successes[trajectory.task_id] += trajectory.result.success
    return [{"id": task.id, "category": task.category, "templates": task_templates_of(task, env_seed),
             "greedy": greedy[task.id], "samples": samples, "successes": successes[task.id]} for task in tasks]


def headroom_summary(rows: list[dict], by: str = "category") -> dict[str, dict[str, float]]:
    """Per category (``by="category"``) or per template (a task counts for every template it uses), and
    "all": tasks, greedy success, mean sampled success, and pass@k for every k in PASS_KS up to the samples."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        for key in (row["templates"] if by == "template" else [row["category"]]):
            groups[key].append(row)
        groups["all"].append(row)
    summary = {}
    for name, members in sorted(groups.items(), key=lambda item: (item[0] == "all", item[0])):
        n = members[0]["samples"]
        summary[name] = {
            "tasks": len(members),
            "greedy": sum(r["greedy"] for r in members) / len(members),
            "sampled": sum(r["successes"] / r["samples"] for r in members) / len(members),
            **{f"pass@{k}": sum(pass_at_k(r["samples"], r["successes"], k) for r in members) / len(members)
               for k in PASS_KS if k <= n},
        }
    return summary
