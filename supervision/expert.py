"""Expert data: ground-truth dialogs (or a user's JSONL of chats) as SFT sequences, and the ground-truth
trajectory that off-policy supervision puts into a group, played through the real environment."""

from __future__ import annotations

import json
import random
from pathlib import Path

from learner.batch import dialog_sequence
from rollout.config import RewardConfig
from rollout.envs import Episode, Task
from rollout.expert import expert_messages
from rollout.formats import ToolFormat
from rollout.worker import Trajectory

ROLES = ("system", "user", "assistant", "tool")


def read_chats(path: str | Path) -> list[list[dict]]:
    """A JSONL file of ``{"messages": [{"role", "content"}, ...]}``; a bad line is a one-line error."""
    chats = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"supervision.expert.jsonl: cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            ok = isinstance(messages, list) and all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok or not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{path}:{number}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}} "
                             "with at least one assistant message")
        chats.append(messages)
    if not chats:
        raise ValueError(f"{path}: no chats")
    return chats


class ExpertData:
    """An endless, seeded stream of expert SFT sequences; its position is part of the checkpoint."""

    def __init__(self, tasks: list[Task], fmt: ToolFormat, tokenizer, seed: int, jsonl: str | None = None):
        self.fmt, self.tokenizer = fmt, tokenizer
        self.chats = read_chats(jsonl) if jsonl else None
        self.tasks = tasks
        self.order = list(range(len(self.chats) if self.chats else len(tasks)))
        random.Random(seed).shuffle(self.order)
        self.position = 0

    def take(self, n: int) -> list[tuple[list[int], list[int]]]:
        sequences = []
        for _ in range(n):
            index = self.order[self.position % len(self.order)]
            self.position += 1
            messages = self.chats[index] if self.chats else expert_messages(self.tasks[index], self.fmt)
            sequences.append(dialog_sequence(messages, self.tokenizer))
        return sequences


def play_dialog(task: Task, messages: list[dict], fmt: ToolFormat, reward: RewardConfig):
    """Act out a dialog's assistant messages in a live episode of ``task``: (result, calls, results)."""
    episode = Episode(task, reward)
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
