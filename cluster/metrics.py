"""A training step's metrics: what its rollouts showed, what it did, and how long each phase took."""

from __future__ import annotations

import math

from cluster.sampling import Draws
from rollout.structure import structure_shares
from rollout.worker import Trajectory, by_group
from supervision.config import StepKind


def rollout_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    n = len(trajectories)
    groups = by_group(trajectories).values()
    reward = sum(t.reward for t in trajectories) / n
    messages = sum(m["role"] == "assistant" for t in trajectories for m in t.messages)
    calls = sum(len(step) for t in trajectories for turn in t.calls for step in turn)
    shares = structure_shares(trajectories)
    return {
        "reward": reward,
        # a collapsing reward spread is an early warning (RAGEN): GRPO's advantages vanish with it
        "reward_std": math.sqrt(sum((t.reward - reward) ** 2 for t in trajectories) / n),
        "success": sum(t.result.success for t in trajectories) / n,
        "parse_error_rate": sum(t.parse_errors > 0 for t in trajectories) / n,
        "truncated_rate": sum(t.truncated for t in trajectories) / n,
        "response_tokens": sum(sum(t.loss_mask) for t in trajectories) / n,
        # groups whose rewards are all equal have zero advantage: they teach GRPO nothing
        "flat_group_share": sum(len({trajectories[i].reward for i in members}) == 1 for members in groups) / len(groups),
        "turns_per_episode": messages / n,  # assistant messages per episode
        "tool_calls_per_message": calls / max(messages, 1),
        **{f"structure/{state}": share for state, share in shares.items()},
        # a run can break half collapsed and half polluted, each share under its alarm threshold
        "broken_share": shares["collapsed"] + shares["polluted"],
    }


def step_metrics(kind: StepKind, drawn: Draws, supervision: dict[str, float], learner: dict[str, float],
                 updated: bool, probed: bool) -> dict[str, float]:
    """Rollouts, draws, supervision and learner metrics of one step, with which update ran (if any)."""
    trajectories = drawn.trajectories
    return {**(rollout_metrics(trajectories) if trajectories else {}), **drawn.metrics, **supervision,
            **learner, **{f"update/{k}": float(k == kind) for k in StepKind},
            "update/skipped": float(not updated), "diagnostics/probed": float(probed)}


def time_metrics(timings: dict[str, float], trained_tokens: int, overlap: float | None = None) -> dict[str, float]:
    """Seconds per phase and for the whole step, and the learner's throughput during the update.

    ``overlap``: seconds two phases ran at once (trainer.pipeline one_step_off: the update and the next
    step's sampling), counted once in the step's seconds."""
    overlapped = {"time/overlap_s": overlap} if overlap is not None else {}
    return {**{f"time/{phase}_s": seconds for phase, seconds in timings.items()}, **overlapped,
            "time/step_s": sum(timings.values()) - (overlap or 0.0),
            "tokens_per_s/learner": trained_tokens / max(timings["update"], 1e-9)}
