"""Expert dialogs: a task's ground truth rendered as a full conversation, with real tool results.

This is the SFT data of the supervision signals. The reference implementation asked an external LLM to
write these dialogs; here the ground truth is executed in the live environment and the assistant's
words are templated, so the data is exact and offline.
"""

from __future__ import annotations

from rollout.envs.base import EnvEpisode, Task
from rollout.formats import ToolFormat

NEEDS_MORE = "I can't do that yet: a required detail or function is missing. Could you provide it?"


def closing_reply(names: list[str]) -> str:
    unique = list(dict.fromkeys(names))
    listed = unique[0] if len(unique) == 1 else ", ".join(unique[:-1]) + " and " + unique[-1]
    return f"Done. I used {listed}."


def expert_messages(task: Task, fmt: ToolFormat, turn_calls: list[list] | None = None) -> list[dict]:
    """Chat messages (system, user, assistant, tool) of the ground truth played through a live episode
    (or of ``turn_calls``, other calls per turn, e.g. a bootstrap dialog's mistakes)."""
    episode = EnvEpisode(task)
    messages = [{"role": "system", "content": fmt.render_tools(task.tools)}]
    for turn, calls in enumerate(turn_calls or task.ground_truth):
        user = "\n".join(episode.begin_turn())
        if turn in task.revealed_tools:
            user = fmt.render_tools(task.revealed_tools[turn]) + "\n" + user
        messages.append({"role": "user", "content": user})
        messages += expert_turn(episode, calls, fmt)
        episode.end_turn()
    return messages


def expert_turn(episode: EnvEpisode, calls: list, fmt: ToolFormat) -> list[dict]:
    """The assistant and tool messages of one open turn of ``episode`` played by the ground truth ``calls``."""
    messages = []
    # One call per step: a later call may use an earlier result (an id, a sum), and the dialog
    # must show that result before the call that uses it.
    for call in calls:
        messages.append({"role": "assistant", "content": fmt.render([call])})
        messages.extend({"role": "tool", "content": result} for result in episode.execute([call]))
    reply = closing_reply([c.name for c in calls]) if calls else NEEDS_MORE
    return [*messages, {"role": "assistant", "content": reply}]


def ground_truth_results(task: Task) -> list[list[str]]:
    """The tool results of each turn's ground-truth calls, played through a live episode."""
    return [turn[0] for turn in EnvEpisode(task).play([[calls] for calls in task.ground_truth])]
