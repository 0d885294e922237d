"""The bootstrap's habits: plausible variants of a turn that the environment's checker rejects."""

from __future__ import annotations

from rollout.dialogs import ground_truth_results
from rollout.envs import run_episode
from rollout.envs.synth import generate_task, task_templates
from rollout.variants import mistaken_calls, shortcut, skip_setup


def first_turn_of(template: str):
    """A synth train task (outside RL's 1000) one of whose turns the template made, and that turn."""
    for index in range(1000, 1400):
        task = generate_task("train", index, seed=0)
        names = task_templates(task, seed=0)
        if template in names:
            return task, names.index(template)
    raise AssertionError(f"no {template} task")


def played_with(task, turn, calls):
    steps = [[truth] if truth else [] for truth in task.ground_truth]
    steps[turn] = [calls]
    return run_episode(task, steps)


def test_shortcut_passes_the_looked_up_names_instead_of_the_results():
    task, turn = first_turn_of("car_distance")
    calls, results = task.ground_truth[turn], ground_truth_results(task)[turn]
    cities = [c.arguments["city"] for c in calls if c.name == "get_zipcode_based_on_city"]
    changed = shortcut(calls, results)
    assert [c.name for c in changed] == ["estimate_distance"]
    assert [changed[0].arguments["cityA"], changed[0].arguments["cityB"]] == cities
    assert played_with(task, turn, changed).first_failed_turn == turn  # the checker rejects the habit


def test_skip_setup_leaves_out_a_call_no_later_call_uses():
    task, turn = first_turn_of("car_start")
    calls, results = task.ground_truth[turn], ground_truth_results(task)[turn]
    assert [c.name for c in skip_setup(calls, results)] == ["pressBrakePedal", "startEngine"]
    assert mistaken_calls(calls, results)[0] == "skip_setup"
    assert played_with(task, turn, skip_setup(calls, results)).first_failed_turn == turn


def test_a_single_call_has_no_habit():
    task, turn = first_turn_of("math_stats")
    assert mistaken_calls(task.ground_truth[turn], ground_truth_results(task)[turn]) is None
