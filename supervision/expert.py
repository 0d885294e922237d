"""Expert data: ground-truth dialogs (or a user's JSONL of chats) as SFT sequences."""

from __future__ import annotations

import json
import random
from pathlib import Path

from learner.batch import SftSample, dialog_sequence
from rollout.dialogs import expert_messages
from rollout.envs import Task
from rollout.formats import ToolFormat
from supervision.signal import Setup, Signal

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

    def take(self, n: int) -> list[SftSample]:
        samples = []
        for _ in range(n):
            index = self.order[self.position % len(self.order)]
            self.position += 1
            if self.chats:
                kind, task_id, messages = "chat", None, self.chats[index]
            else:
                task = self.tasks[index]
                kind, task_id, messages = "ground_truth", task.id, expert_messages(task, self.fmt)
            samples.append(SftSample(Expert.name, kind, task_id, None, *dialog_sequence(messages, self.tokenizer)))
        return samples


class Expert(Signal):
    """Expert dialogs as SFT data of its own, from a seeded stream whose position the checkpoint keeps."""

    name, sft = "expert", True

    def __init__(self, setup: Setup):
        super().__init__(setup)
        config = setup.config
        self.data = ExpertData(setup.tasks, setup.fmt, setup.tokenizer, config.trainer.seed,
                               config.supervision.expert.jsonl)

    def sft_samples(self, n: int) -> list[SftSample]:
        return self.data.take(n)

    def state_dict(self) -> dict:
        return {"expert_position": self.data.position}

    def load_state_dict(self, state: dict) -> None:
        self.data.position = state["expert_position"]
