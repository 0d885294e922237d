"""The supervision signals on real tasks, real environments and the real chat template (no engine needed)."""

from __future__ import annotations

import json

import pytest

from learner.batch import dialog_sequence
from rollout.chat import load_tokenizer
from rollout.config import RewardConfig
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from rollout.formats import get_format
from rollout.types import ToolCall
from supervision.config import ReflectionConfig
from supervision.erroneous import corrected_dialog, erroneous_samples
from supervision.expert import ExpertData, read_chats
from supervision.hint import strip_hint, template_hint
from supervision.off_policy import ground_truth_trajectory
from supervision.reflection import RuleJudge, classify, review_turns
from supervision.signal import FailureBuffer
from tests.scripted import scripted_episode

HERMES = get_format("hermes")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _multi_turn_task():
    return next(t for t in load_tasks("synth", "train", limit=50) if len(t.turns) >= 3 and all(t.ground_truth))


@pytest.mark.parametrize("position", ["user", "system"])
def test_hint_is_sampled_with_and_trained_without(tokenizer, position):
    task = _multi_turn_task()
    hint = template_hint(task)
    assert task.ground_truth[0][0].name in hint and "request 2:" in hint
    plain, _ = scripted_episode(task, tokenizer)
    hinted, generated = scripted_episode(task, tokenizer, hint=hint, hint_position=position)
    prompt = tokenizer.decode(hinted.token_ids[: generated[0][0]])
    assert hint in prompt and prompt.endswith("<|im_start|>assistant\n")
    stripped = strip_hint(hinted)
    # token for token the unhinted episode: same generated tokens behind the hint-free prompt
    assert stripped.token_ids == plain.token_ids and stripped.loss_mask == plain.loss_mask
    assert hint not in tokenizer.decode(stripped.token_ids)
    assert stripped.messages == plain.messages and stripped.hint == hint
    assert strip_hint(stripped) == stripped


def test_ground_truth_member_is_the_expert_dialog_in_rollout_layout_with_reward_one(tokenizer):
    task = _multi_turn_task()
    sampled, _ = scripted_episode(task, tokenizer, replies=["I cannot help."] * len(task.turns))
    assert sampled.reward == 0.0
    member = ground_truth_trajectory(task, sampled, HERMES, tokenizer, RewardConfig())
    expert_run, _ = scripted_episode(task, tokenizer)  # the expert replies played through a TokenEpisode
    assert member.token_ids == expert_run.token_ids and member.loss_mask == expert_run.loss_mask
    assert member.reward == 1.0 and member.result.success and member.group_id == sampled.group_id
    assert [[[c for c in step] for step in turn] for turn in member.calls] == [[[c] for c in gt] for gt in task.ground_truth]


def test_erroneous_samples_correct_the_first_failing_turn(tokenizer):
    task = _multi_turn_task()
    expert = expert_messages(task, HERMES)
    turns, turn = [[]], 0
    for message in expert[2:]:
        if message["role"] == "user":
            turns.append([])
        elif message["role"] == "assistant":
            turns[-1].append(message["content"])
    # turn 1 is right, turn 2 calls its first function with a wrong argument value, turn 3 is right again
    first = task.ground_truth[1][0]
    key = next(iter(first.arguments))
    wrong = HERMES.render([ToolCall(first.name, {**first.arguments, key: "nonsense"})])
    replies = [*turns[0], wrong, "Done.", *turns[2]]
    trajectory, _ = scripted_episode(task, tokenizer, replies=replies)
    assert trajectory.result.first_failed_turn == 1
    messages, train_from = corrected_dialog(task, trajectory, HERMES, RewardConfig())
    turn = 1
    assert messages[:train_from] == trajectory.messages[:train_from]
    assert messages[train_from - 1] == {"role": "user", "content": "\n".join(task.turns[turn])}
    corrected = [m["content"] for m in messages[train_from:] if m["role"] == "assistant"]
    assert corrected[:-1] == [HERMES.render([c]) for c in task.ground_truth[turn]]
    samples = erroneous_samples(task, trajectory, HERMES, tokenizer, RewardConfig())
    assert [(s.kind, s.turn) for s in samples] == [("ground_truth", 1), ("corrected", 1)]
    ids, mask = samples[1].ids, samples[1].mask
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert wrong not in trained and HERMES.render([first]) in trained and turns[0][0] not in trained
    buffer = FailureBuffer(3)
    buffer.add(samples * 2)  # 4 samples, the oldest drops out
    assert [s.kind for s in buffer.take(2)] == ["corrected", "ground_truth"]
    assert [s.kind for s in buffer.take(5)] == ["corrected", "corrected", "ground_truth"]  # at most all, cycling
    again = FailureBuffer(3)
    again.restore(json.loads(json.dumps(buffer.state())))
    assert again.take(1)[0] == buffer.take(1)[0]


def _bfcl(task_id: str):
    return next(t for t in load_tasks("bfcl", "base") if t.id == task_id)


def _planted(task, turn: int, made: list[ToolCall]) -> list[list[list[ToolCall]]]:
    return [[[c] for c in task.ground_truth[t]] for t in range(turn)] + [[made]]


@pytest.mark.parametrize("mistake, plant", [
    ("wrong_tool", lambda gt: [ToolCall("ls", {}), *gt[1:]]),
    ("wrong_argument", lambda gt: [ToolCall(gt[0].name, {k: "elsewhere" for k in gt[0].arguments}), *gt[1:]]),
    ("missing_argument", lambda gt: [gt[0], ToolCall(gt[1].name, {}), *gt[2:]]),
    ("wrong_order", lambda gt: [gt[1], gt[0], *gt[2:]]),
    ("spurious_call", lambda gt: [*gt, ToolCall("ls", {})]),
    ("premature_stop", lambda gt: gt[:-1]),
    ("missing_precondition", None),
])
def test_rule_judge_classifies_planted_mistakes_on_bfcl(mistake, plant):
    task, turn = (_bfcl("multi_turn_base_5"), 2) if plant is None else (_bfcl("multi_turn_base_0"), 0)
    truth = task.ground_truth[turn]
    made = truth[1:] if plant is None else plant(truth)
    assert classify(made, truth)[0] == mistake
    calls = _planted(task, turn, made)
    reviews = review_turns(task, calls, first_failed=turn)
    assert [r.mistake for r in reviews] == [None] * turn + [mistake]
    text = RuleJudge(ReflectionConfig(), HERMES, load_tasks("bfcl", "base")).review(task, calls, turn, "state mismatch")
    error_section = text.split("\n\n")[turn]
    assert f"Mistake: {mistake}:" in error_section
    plan = error_section.split("Improvement plan:\n", 1)[1].split("\nSimilar scenario")[0]
    assert HERMES.parse(plan) == truth  # the corrected calls are the ground truth
    assert error_section.count("Similar scenario") == 2


def test_expert_data_from_tasks_or_a_jsonl_file(tokenizer, tmp_path):
    tasks = load_tasks("synth", "train", limit=4)
    stream = ExpertData(tasks, HERMES, tokenizer, seed=0)
    first = stream.take(5)
    assert len(first) == 5 and stream.position == 5
    assert {s.task_id for s in first[:4]} == {t.id for t in tasks} and {s.kind for s in first} == {"ground_truth"}
    assert sorted(tuple(s.ids) for s in first[:4]) == sorted(
        tuple(dialog_sequence(expert_messages(t, HERMES), tokenizer)[0]) for t in tasks)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}) + "\n")
    (sample,) = ExpertData([], HERMES, tokenizer, 0, str(chats)).take(1)
    assert (sample.signal, sample.kind, sample.task_id) == ("expert", "chat", None)
    assert tokenizer.decode([t for t, m in zip(sample.ids, sample.mask) if m]) == "hello<|im_end|>"
    chats.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(ValueError, match=r"chats.jsonl:1: expected"):
        read_chats(chats)


def test_tools_only_hint_names_the_functions_in_order():
    task = _multi_turn_task()
    text = template_hint(task, "tools")
    turns = [" then ".join(c.name for c in calls) for calls in task.ground_truth]
    assert text == "Hint: " + "; ".join(f"request {i}: {t}" for i, t in enumerate(turns, 1)) + "."
