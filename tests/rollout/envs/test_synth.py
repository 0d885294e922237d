"""The synth environment: deterministic procedural tasks whose ground truth the real API classes accept."""

from __future__ import annotations

import json

import pytest

from rollout.envs import EnvEpisode, load_tasks, replay_ground_truth, run_episode, split_names, synth
from rollout.envs.synth_templates import HELD_OUT_CLASSES, TEMPLATES
from rollout.types import ToolCall

JSON_TYPES = {
    "integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list, "object": dict,
}


@pytest.fixture(scope="module")
def tasks():
    return {split: synth.load_tasks(split) for split in synth.SPLITS}


@pytest.fixture(scope="module")
def templates(tasks):
    return {split: [synth.task_templates(task) for task in tasks[split]] for split in synth.SPLITS}


def checked(tasks):
    """The tasks the replay and shape tests cover: 200 of train, 100 of test, 100 of ood_content."""
    return tasks["train"][:200] + tasks["test"][:100] + tasks["ood_content"][:100]


def content(task):
    return json.dumps([task.turns, [[[c.name, c.arguments] for c in calls] for calls in task.ground_truth]])


def test_generation_is_deterministic_and_depends_on_the_seed():
    for split in synth.SPLITS:
        for index in (0, 7, 123):
            task = synth.generate_task(split, index, seed=3)
            assert task.to_dict() == synth.generate_task(split, index, seed=3).to_dict()
            assert task.to_dict() != synth.generate_task(split, index, seed=4).to_dict()
            assert task.id == f"synth_{split}_{index}" and task.env == "synth"


def test_splits_sizes_and_registry(tasks):
    assert {split: len(split_tasks) for split, split_tasks in tasks.items()} == synth.SPLIT_SIZES
    assert split_names("synth") == [*synth.SPLITS, "all"]
    assert len(load_tasks("synth", "all")) == sum(synth.SPLIT_SIZES.values())
    assert load_tasks("synth", "test", limit=3) == tasks["test"][:3]
    with pytest.raises(ValueError, match="unknown synth split 'x'; choose from train, test, ood_content"):
        synth.load_tasks("x")
    with pytest.raises(ValueError, match="unknown synth split 'x'"):
        synth.generate_task("x", 0)


def test_ground_truth_replays_to_success_without_error_results(tasks):
    for task in checked(tasks):
        episode = EnvEpisode(task)
        for calls in task.ground_truth:
            episode.begin_turn()
            for result in episode.execute(calls):
                assert "error" not in result.lower(), (task.id, result)
            episode.end_turn()
        assert episode.result().success, (task.id, episode.result().failure)
        assert replay_ground_truth(task).success, task.id


def test_task_shape_tools_and_argument_types(tasks):
    for task in checked(tasks):
        assert 1 <= len(task.turns) == len(task.ground_truth) <= 3, task.id
        assert all(len(texts) == 1 and texts[0] for texts in task.turns), task.id
        assert all(1 <= len(calls) <= 4 for calls in task.ground_truth), task.id
        specs = {spec["name"]: spec for spec in task.tools}
        called = {call.name for calls in task.ground_truth for call in calls}
        assert len(specs) == len(task.tools), task.id
        assert called <= set(specs) and len(specs) - len(called) <= 2, task.id
        assert task.category in task.classes and set(task.initial_config) <= set(task.classes), task.id
        assert all("Tool description:" not in spec["description"] for spec in task.tools), task.id
        assert synth._prompt_size(task.tools, task.turns) <= synth.PROMPT_BUDGET, task.id
        for call in (call for calls in task.ground_truth for call in calls):
            properties = specs[call.name]["parameters"]["properties"]
            for key, value in call.arguments.items():
                kind = properties[key]["type"]
                assert isinstance(value, JSON_TYPES[kind]), (task.id, call)
                assert kind == "boolean" or not isinstance(value, bool), (task.id, call)


def test_ood_content_shares_no_template_and_no_held_out_class_with_train(tasks, templates):
    train = {name for names in templates["train"] for name in names}
    ood = {name for names in templates["ood_content"] for name in names}
    assert train.isdisjoint(ood)
    assert {name for names in templates["test"] for name in names} <= train
    held_out = set(HELD_OUT_CLASSES)
    assert all(held_out.isdisjoint(task.classes) for task in tasks["train"] + tasks["test"])
    assert held_out <= {cls for task in tasks["ood_content"] for cls in task.classes}
    # the registry's promise, with the generated tasks using all of it
    assert train == {t.name for t in TEMPLATES.values() if not t.held_out} and len(train) >= 12
    assert ood == {t.name for t in TEMPLATES.values() if t.held_out} and len(ood) >= 4
    assert len({TEMPLATES[name].cls for name in train}) >= 5


def test_task_templates_refuses_another_seed(tasks):
    with pytest.raises(ValueError, match="not generated with seed 1"):
        synth.task_templates(tasks["train"][0], seed=1)


def test_train_and_test_share_no_task(tasks):
    assert {content(t) for t in tasks["train"]}.isdisjoint(content(t) for t in tasks["test"])
    # values vary, not only the wording
    assert len({content(t) for t in tasks["train"]}) > 0.9 * len(tasks["train"])


def perturb(value):
    """Another value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [perturb(item) for item in value] or ["x"]
    return {key: perturb(item) for key, item in value.items()}


def perturbations(truth):
    """Each ground truth with one call dropped, and each with one argument of one call changed."""
    for turn, calls in enumerate(truth):
        for index, call in enumerate(calls):
            changed = [[ToolCall(call.name, {**call.arguments, key: perturb(value)})]
                       for key, value in call.arguments.items()]
            for replacement in [[], *changed]:
                yield truth[:turn] + [calls[:index] + replacement + calls[index + 1 :]] + truth[turn + 1 :]


def test_perturbed_ground_truth_fails(tasks):
    sample = tasks["train"][:300:5] + tasks["ood_content"][:100:4]
    outcomes = [
        run_episode(task, [[calls] if calls else [] for calls in truth]).success
        for task in sample
        for truth in perturbations(task.ground_truth)
    ]
    assert len(outcomes) > 300
    # harmless ones exist: e.g. dropping a read whose result an earlier turn already produced
    assert sum(outcomes) <= 0.1 * len(outcomes), f"{sum(outcomes)} of {len(outcomes)} perturbations succeed"
