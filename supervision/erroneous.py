"""Erroneous-trajectory supervision: recent failures become SFT data.

From each failed trajectory: the task's ground-truth dialog (what the reference does), and the model's
own dialog up to its first failing turn followed by the ground truth's action for that turn, trained on
that action only (what the reference does not).
"""

from __future__ import annotations

from learner.batch import SftSample, dialog_sequence
from rollout.config import RewardConfig
from rollout.dialogs import expert_messages, expert_turn
from rollout.envs import EnvEpisode, Task
from rollout.formats import ToolFormat
from rollout.worker import Trajectory
from supervision.signal import Signal


def corrected_dialog(task: Task, trajectory: Trajectory, fmt: ToolFormat,
                     reward: RewardConfig) -> tuple[list[dict], int] | None:
    """(messages, index of the first corrected message): the model's turns before its first failure, as it
    played them, then that turn as the ground truth plays it from the state the model's turns left.

    None when the failing turn was never shown to the model (the episode ran out of context before it).
    """
    failed = trajectory.result.first_failed_turn
    if failed is None:
        raise ValueError(f"{trajectory.task_id}: the trajectory did not fail")
    openings = [i for i, m in enumerate(trajectory.messages) if m["role"] == "user"]  # tool results are "tool"
    if failed >= len(openings):
        return None
    episode = EnvEpisode(task, reward)
    episode.play(trajectory.calls[:failed])  # the model's own calls rebuild the state it reached (these turns passed)
    episode.begin_turn()
    opening = openings[failed]
    return trajectory.messages[: opening + 1] + expert_turn(episode, task.ground_truth[failed], fmt), opening + 1


def erroneous_samples(task: Task, trajectory: Trajectory, fmt: ToolFormat, tokenizer,
                      reward: RewardConfig) -> list[SftSample]:
    """The two SFT sequences of one failure, each with its signal name, task and error turn."""
    sequences = {"ground_truth": dialog_sequence(expert_messages(task, fmt), tokenizer)}
    corrected = corrected_dialog(task, trajectory, fmt, reward)
    if corrected is not None:
        sequences["corrected"] = dialog_sequence(corrected[0], tokenizer, train_from=corrected[1])
    turn = trajectory.result.first_failed_turn
    return [SftSample(Erroneous.name, kind, task.id, turn, ids, mask) for kind, (ids, mask) in sequences.items()]


class Erroneous(Signal):
    """Each failure becomes the task's ground-truth dialog and the model's own dialog corrected at its first
    failing turn."""

    name, sft, from_failures = "erroneous", True, True

    def failure_samples(self, task: Task, trajectory: Trajectory) -> list[SftSample]:
        setup = self.setup
        return erroneous_samples(task, trajectory, setup.fmt, setup.tokenizer, setup.config.env.reward)
