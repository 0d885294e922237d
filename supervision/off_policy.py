"""Off-policy guidance (LUFFY): the ground truth in place of the last k members of the groups its rule
picks, played through the real environment and rewarded like the sampled members."""

from __future__ import annotations

from learner.batch import Origin, dialog_sequence
from rollout.config import RewardConfig
from rollout.dialogs import expert_messages
from rollout.envs import EnvEpisode, Task
from rollout.formats import ToolFormat
from rollout.worker import Trajectory, by_group
from supervision.signal import Rollouts, Signal


def play_dialog(task: Task, messages: list[dict], fmt: ToolFormat, reward: RewardConfig):
    """Act out a dialog's assistant messages in a live episode of ``task``: (result, calls, results)."""
    episode = EnvEpisode(task, reward)
    calls: list[list] = []
    results: list[list] = []
    for message in messages[1:]:
        if message["role"] == "user":
            if calls:
                episode.end_turn()
            episode.begin_turn()
            calls.append([])
            results.append([])
        elif message["role"] == "assistant":
            step = episode.act(message["content"], fmt)
            if step.calls or step.format_error:
                calls[-1].append(step.calls)
                results[-1].append(step.observations)
    episode.end_turn()
    return episode.result(), calls, results


def ground_truth_trajectory(task: Task, like: Trajectory, fmt: ToolFormat, tokenizer, reward: RewardConfig) -> Trajectory:
    """The expert dialog as a group member in ``like``'s place, rewarded by the environment like the others."""
    messages = expert_messages(task, fmt)
    ids, mask = dialog_sequence(messages, tokenizer)
    result, calls, results = play_dialog(task, messages, fmt, reward)
    return Trajectory(task_id=task.id, group_id=like.group_id, sample_index=like.sample_index, token_ids=ids,
                      loss_mask=mask, logprobs=[0.0] * len(ids), messages=messages, calls=calls, tool_results=results,
                      parse_errors=result.format_errors, truncated=False, reward=result.reward, result=result)


class OffPolicy(Signal):
    """The ground-truth trajectory in place of the last k members of each group its rule picks."""

    name = "off_policy"
    metric_names = ("supervision/replaced_group_share",)

    def transform(self, rollouts: Rollouts) -> dict[str, float]:
        """Replaces members in the groups the update sees; the replaced share is of those groups."""
        config, setup = self.setup.config, self.setup
        rule, replaced = config.supervision.off_policy, 0
        groups = by_group(rollouts.trajectories)
        for group, members in groups.items():
            if not rollouts.trains(group) or (
                    rule.when == "no_success" and any(rollouts.trajectories[i].result.success for i in members)):
                continue
            replaced += 1
            for i in members[len(members) - min(rule.members, len(members)):]:
                like = rollouts.trajectories[i]
                rollouts.trajectories[i] = ground_truth_trajectory(rollouts.tasks[like.task_id], like, setup.fmt,
                                                                   setup.tokenizer, config.env.reward)
                rollouts.origins[i] = Origin.EXPERT
        if rule.loss == "shaped":
            rollouts.shaped_gamma = rule.gamma
        trained = len(groups) if rollouts.train_groups is None else len(rollouts.train_groups)
        return {"supervision/replaced_group_share": replaced / max(trained, 1)}
