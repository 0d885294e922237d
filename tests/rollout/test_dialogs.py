"""Expert dialogs: the ground truth, rendered in each format, with the tool results of real execution."""

from __future__ import annotations

import pytest

from rollout.dialogs import NEEDS_MORE, expert_messages
from rollout.envs import EnvEpisode, load_tasks
from rollout.formats import FORMATS


@pytest.fixture(scope="module")
def tasks():
    return {t.id: t for t in load_tasks("bfcl", "all")}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_expert_dialog_replays_to_success(tasks, fmt):
    """Feeding the dialog's assistant messages back through a live episode scores 1.0 on every entry kind."""
    for task_id in ("multi_turn_base_0", "multi_turn_miss_param_3", "multi_turn_miss_func_49", "multi_turn_long_context_7"):
        task = tasks[task_id]
        messages = expert_messages(task, FORMATS[fmt])
        assert messages[0]["role"] == "system"
        episode = EnvEpisode(task)
        for message in messages[1:]:
            if message["role"] == "user":
                if episode.turn >= 0:
                    episode.end_turn()
                episode.begin_turn()
            elif message["role"] == "assistant":
                episode.act(message["content"], FORMATS[fmt])
        episode.end_turn()
        assert episode.result().success, task_id


def test_expert_dialog_carries_real_tool_results(tasks):
    task = tasks["multi_turn_base_0"]
    messages = expert_messages(task, FORMATS["hermes"])
    roles = ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "tool", "assistant"]
    assert [m["role"] for m in messages[:9]] == roles
    assert messages[2]["content"] == '<tool_call>\n{"name": "cd", "arguments": {"folder": "document"}}\n</tool_call>'
    assert messages[3]["content"] == '{"current_working_directory": "document"}'
    assert messages[8]["content"] == "Done. I used cd, mkdir and mv."
    grep_result = next(m["content"] for m in messages if m["role"] == "tool" and "matching_lines" in m["content"])
    assert "budget analysis" in grep_result


def test_empty_truth_turn_asks_for_what_is_missing(tasks):
    task = tasks["multi_turn_miss_param_3"]
    empty = [i for i, calls in enumerate(task.ground_truth) if not calls]
    assert empty
    messages = expert_messages(task, FORMATS["python"])
    replies = [m for m in messages if m["role"] == "assistant" and m["content"] == NEEDS_MORE]
    assert len(replies) == len(empty)
