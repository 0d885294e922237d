"""Greedy evaluation of a policy on a split: per-task results and per-category success / turn accuracy."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from rollout.envs import Task
from rollout.worker import RolloutPool


def evaluate(pool: RolloutPool, tasks: list[Task], chunk: int, on_progress: Callable[[int], None]) -> list[dict]:
    """One greedy episode per task, in chunks so progress shows; returns one JSON-able row per task."""
    rows = []
    for start in range(0, len(tasks), chunk):
        batch = tasks[start : start + chunk]
        by_id = {t.id: t for t in batch}
        for trajectory in pool.generate(batch, group_size=1, seed=0, temperature=0.0, tag="eval"):
            result, task = trajectory.result, by_id[trajectory.task_id]
            rows.append({
                "id": task.id,
                "category": task.category,
                "success": result.success,
                "reward": trajectory.reward,
                "turns_passed": result.turns_passed,
                "turns": result.turns,
                "first_failed_turn": result.first_failed_turn,
                "failure": result.failure,
                "parse_errors": trajectory.parse_errors,
                "truncated": trajectory.truncated,
                "generated_tokens": sum(trajectory.loss_mask),
                "messages": trajectory.messages,
            })
        on_progress(len(batch))
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per category (and "all"): tasks, success rate, turn accuracy (mean share of turns passed)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["category"]].append(row)
        groups["all"].append(row)
    return {
        name: {
            "tasks": len(members),
            "success": sum(r["success"] for r in members) / len(members),
            "turn_accuracy": sum(r["turns_passed"] / r["turns"] for r in members) / len(members),
            "parse_error_rate": sum(r["parse_errors"] > 0 for r in members) / len(members),
        }
        for name, members in sorted(groups.items(), key=lambda item: (item[0] == "all", item[0]))
    }
