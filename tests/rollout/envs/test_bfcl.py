"""The BFCL environment: data, splits, live dispatch, scoring (bfcl-eval agreement: test_bfcl_agreement)."""

from __future__ import annotations

import json

import pytest

from rollout.config import RewardConfig
from rollout.envs import EnvEpisode, load_tasks, replay_ground_truth, run_episode
from rollout.envs.bfcl import CATEGORIES, scenario_index
from rollout.formats import get_format
from rollout.types import ToolCall

STRICT = RewardConfig(mode="strict")


@pytest.fixture(scope="module")
def all_tasks():
    return load_tasks("bfcl", "all")


def by_id(tasks, task_id):
    return next(t for t in tasks if t.id == task_id)


def test_loads_800_entries_in_four_categories(all_tasks):
    assert len(all_tasks) == 800
    for category in CATEGORIES:
        tasks = [t for t in all_tasks if t.category == category]
        assert len(tasks) == 200
        assert all(len(t.turns) == len(t.ground_truth) for t in tasks)
    assert sum(t.long_context for t in all_tasks) == 200
    # some answers pass arguments positionally (cd('archives')): named at load, so every syntax renders them
    assert not any(c.positional for t in all_tasks for calls in t.ground_truth for c in calls)


def test_split_is_half_by_scenario_and_deterministic():
    train, test = load_tasks("bfcl", "train"), load_tasks("bfcl", "test")
    assert len(train) == len(test) == 400
    train_scenarios = {scenario_index(t) for t in train}
    assert train_scenarios.isdisjoint(scenario_index(t) for t in test)
    assert [t.id for t in load_tasks("bfcl", "train")] == [t.id for t in train]
    assert [t.id for t in load_tasks("bfcl", "train", seed=1)] != [t.id for t in train]


def test_schemas_are_json_schema(all_tasks):
    def types(node):
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                yield node["type"]
            for value in node.values():
                yield from types(value)
        elif isinstance(node, list):
            for value in node:
                yield from types(value)

    seen = {kind for task in all_tasks for kind in types(task.tools)}
    assert seen <= {"object", "string", "number", "integer", "boolean", "array"}
    assert "object" in seen and "number" in seen


def test_miss_func_hides_the_function_until_its_turn(all_tasks):
    task = by_id(all_tasks, "multi_turn_miss_func_0")
    (turn, specs), = task.revealed_tools.items()
    hidden = specs[0]["name"]
    assert hidden not in {s["name"] for s in task.tools}
    early = ToolCall(hidden, {"file_name": "final_report.pdf"})
    bfcl, strict = EnvEpisode(task), EnvEpisode(task, STRICT)
    for index in range(turn):
        assert hidden not in bfcl.begin_turn() and hidden not in bfcl.visible_tools
        strict.begin_turn()
        # BFCL's executor runs a function whose doc is not shown yet; strict refuses it and fails the turn
        assert not bfcl.execute([early])[0].startswith("error")
        assert strict.execute([early])[0].startswith("error: unknown function")
        bfcl.end_turn()
        assert strict.end_turn().reason.startswith("hidden function")
    assert bfcl.begin_turn() == ["I have updated some more functions you can choose from. What about now?"]
    assert hidden in bfcl.visible_tools


def test_positional_arguments_bind_by_the_signature(all_tasks):
    task = next(t for t in all_tasks if "purchase_insurance" in {c.name for calls in t.ground_truth for c in calls})
    call = next(c for calls in task.ground_truth for c in calls if c.name == "purchase_insurance")
    # the spec lists insurance_cost before booking_id; the method (and Python, and BFCL) the other way round
    values = tuple(call.arguments[key] for key in
                   ("access_token", "insurance_type", "booking_id", "insurance_cost", "card_id"))
    episode = EnvEpisode(task)
    episode.begin_turn()
    step = episode.act(f"[purchase_insurance({', '.join(map(repr, values))})]", get_format("python"))
    assert step.calls == [call]  # recorded by name, as the JSON syntaxes and supervision need
    surplus = episode.execute([ToolCall("purchase_insurance", {}, (*values, "extra"))])[0]
    assert surplus.startswith("error: purchase_insurance: too many positional arguments")


def test_dispatch_checks_arguments_and_keeps_state_across_turns(all_tasks):
    episode = EnvEpisode(by_id(all_tasks, "multi_turn_base_0"))
    episode.begin_turn()
    assert "unexpected keyword" in episode.execute([ToolCall("cd", {"folder": "x", "dir": "x"})])[0]
    assert "missing a required argument" in episode.execute([ToolCall("cd", {})])[0]
    assert episode.execute([ToolCall("cd", {"folder": 3})])[0].startswith("Error during execution")
    episode.execute([ToolCall("cd", {"folder": "document"}), ToolCall("mkdir", {"dir_name": "temp"})])
    episode.end_turn()
    episode.begin_turn()
    # the reference implementation reset state at each user turn; a live episode must not
    assert "temp" in episode.execute([ToolCall("ls", {})])[0]


# ---------------------------------------------------------------- targeted perturbations


def ground_truth_steps(task):
    return [[list(calls)] if calls else [] for calls in task.ground_truth]


def test_dropped_call_fails_at_its_turn(all_tasks):
    task = by_id(all_tasks, "multi_turn_base_0")
    steps = ground_truth_steps(task)
    steps[0][0] = [c for c in steps[0][0] if c.name != "mkdir"]
    result = run_episode(task, steps)
    assert (result.success, result.first_failed_turn, result.reward) == (False, 0, 0.0)
    assert result.failure.startswith("state mismatch in GorillaFileSystem")


def test_changed_argument_fails_at_its_turn(all_tasks):
    task = by_id(all_tasks, "multi_turn_base_0")
    steps = ground_truth_steps(task)
    steps[1][0] = [ToolCall(c.name, {**c.arguments, "pattern": "forecast"}) if c.name == "grep" else c for c in steps[1][0]]
    result = run_episode(task, steps)
    assert (result.success, result.first_failed_turn) == (False, 1)
    assert result.failure.startswith("response mismatch")
    assert result.turns_passed == 3
    shaped = run_episode(task, steps, RewardConfig(shaping="turn_fraction"))
    assert shaped.reward == pytest.approx(3 / 4)


def test_reordered_calls_fail_where_state_differs(all_tasks):
    task = by_id(all_tasks, "multi_turn_base_0")
    steps = ground_truth_steps(task)
    cd, mkdir, mv = steps[0][0]
    steps[0][0] = [cd, mv, mkdir]  # mv before the target directory exists renames the file instead
    result = run_episode(task, steps)
    assert (result.success, result.first_failed_turn) == (False, 0)


def test_strict_mode_fails_a_call_in_an_empty_truth_turn(all_tasks):
    task = next(t for t in all_tasks if t.category == "miss_param")
    empty_turn = next(i for i, calls in enumerate(task.ground_truth) if not calls)
    probe = next(s["name"] for s in task.tools if not s["parameters"].get("required"))
    steps = ground_truth_steps(task)
    steps[empty_turn] = [[ToolCall(probe, {})]]
    strict = run_episode(task, steps, STRICT)
    assert (strict.success, strict.first_failed_turn) == (False, empty_turn)
    assert strict.failure.startswith("irrelevance")
    assert replay_ground_truth(task, STRICT).success


def test_format_penalty_applies_once(all_tasks):
    task = by_id(all_tasks, "multi_turn_base_0")
    episode = EnvEpisode(task, RewardConfig(format_penalty=0.1))
    hermes = get_format("hermes")
    for turn, calls in enumerate(task.ground_truth):
        episode.begin_turn()
        if turn == 0:
            assert episode.act("<tool_call>\n{not json\n</tool_call>", hermes).format_error.startswith("error")
        episode.act(hermes.render(calls), hermes)
        episode.end_turn()
    result = episode.result()
    assert result.success and result.format_errors == 1 and result.reward == pytest.approx(0.9)


def test_mutable_defaults_do_not_leak_between_episodes(all_tasks):
    task = next(t for t in all_tasks if "TwitterAPI" in t.classes and "mention" in {s["name"] for s in t.tools})
    account = task.initial_config["TwitterAPI"]
    login = ToolCall("authenticate_twitter", {"username": account["username"], "password": account["password"]})
    first = EnvEpisode(task)
    first.begin_turn()
    first.execute([login])
    posted = first.execute([ToolCall("post_tweet", {"content": "hello"})])[0]
    tweet_id = json.loads(posted)["id"]
    first.execute([ToolCall("mention", {"tweet_id": tweet_id, "mentioned_usernames": ["@bob"]})])
    second = EnvEpisode(task)
    second.begin_turn()
    second.execute([login])
    assert json.loads(second.execute([ToolCall("post_tweet", {"content": "again"})])[0])["mentions"] == []
