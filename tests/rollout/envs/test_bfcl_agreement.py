"""Scoring agrees with bfcl-eval's own checker: the ground truth, perturbations of it, miss_func's hidden
functions called early, and positional arguments for every method with two or more parameters."""

from __future__ import annotations

import dataclasses
import random
from functools import cache

import pytest
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import (
    multi_turn_checker,
    multi_turn_irrelevance_checker,
)

from rollout.config import RewardConfig
from rollout.envs import load_tasks, run_episode
from rollout.envs.base import signature
from rollout.envs.bfcl import class_methods
from rollout.formats import render_call
from rollout.types import ToolCall

STRICT = RewardConfig(mode="strict")

# Calls of the functions that no ground truth uses, with plausible values (success is no matter).
PLAUSIBLE = {
    "add": {"a": 3.5, "b": 4}, "subtract": {"a": 10, "b": 4.25}, "multiply": {"a": 3, "b": 4.5},
    "divide": {"a": 10, "b": 4}, "percentage": {"part": 20, "whole": 80}, "power": {"base": 2, "exponent": 10},
    "round_number": {"number": 3.14159, "decimal_places": 2}, "square_root": {"number": 16, "precision": 4},
    "imperial_si_conversion": {"value": 5.0, "unit_in": "miles", "unit_out": "km"},
    "si_unit_conversion": {"value": 1500, "unit_in": "m", "unit_out": "km"},
    "filter_stocks_by_price": {"stocks": ["AAPL", "GOOG", "TSLA"], "min_price": 100.0, "max_price": 300.0},
    "get_transaction_history": {"start_date": "2024-01-01", "end_date": "2024-12-31"},
    "notify_price_change": {"stocks": ["AAPL", "NVDA"], "threshold": 2.5},
    "trading_login": {"username": "trader", "password": "secret"},
    "get_symbol_by_name": {"name": "Apple"},
    "get_budget_fiscal_year": {"lastModifiedAfter": "2024-01-01T00:00:00", "includeRemoved": "true"},
    "adjustClimateControl": {"temperature": 22.0, "unit": "celsius", "fanSpeed": 60, "mode": "cool"},
}


@pytest.fixture(scope="module")
def all_tasks():
    return load_tasks("bfcl", "all")


def ground_truth_steps(task):
    return [[list(calls)] if calls else [] for calls in task.ground_truth]


def with_step(steps, turn, calls):
    """``steps`` with one more assistant step of ``calls`` at the end of ``turn``."""
    changed = [list(s) for s in steps]
    changed[turn] = [*changed[turn], list(calls)]
    return changed


# ---------------------------------------------------------------- perturbations of one task


def perturbations(task, rng):
    """Ground truth plus one perturbation of each kind that applies to this task."""
    gt = ground_truth_steps(task)
    yield "ground_truth", gt
    yield "one_call_per_step", [[[c] for c in calls] for calls in task.ground_truth]
    nonempty = [i for i, calls in enumerate(task.ground_truth) if calls]
    turn = rng.choice(nonempty)
    calls = list(task.ground_truth[turn])

    dropped = [list(s) for s in gt]
    dropped[turn] = [calls[:k] + calls[k + 1 :] for k in [rng.randrange(len(calls))]]
    yield "drop_call", dropped

    with_args = [k for k, c in enumerate(calls) if c.arguments]
    if with_args:
        k = rng.choice(with_args)
        key = rng.choice(sorted(calls[k].arguments))
        value = calls[k].arguments[key]
        if isinstance(value, bool):
            value = not value
        elif isinstance(value, (int, float)):
            value = value + 1
        elif isinstance(value, str):
            value = value + "_x"
        elif isinstance(value, list):
            value = value[1:] if value else ["x"]
        changed = [list(s) for s in gt]
        changed[turn] = [calls[:k] + [ToolCall(calls[k].name, {**calls[k].arguments, key: value})] + calls[k + 1 :]]
        yield "change_argument", changed

    if len(calls) > 1:
        k = rng.randrange(len(calls) - 1)
        swapped = [list(s) for s in gt]
        swapped[turn] = [calls[:k] + [calls[k + 1], calls[k]] + calls[k + 2 :]]
        yield "swap_calls", swapped

    empty_turns = [i for i, c in enumerate(task.ground_truth) if not c]
    if empty_turns and empty_turns[0] + 1 < len(gt) and task.ground_truth[empty_turns[0] + 1]:
        # a call of the next turn, made one turn early: BFCL still executes it, so state moves on
        i = empty_turns[0]
        yield "call_in_empty_turn", with_step(gt, i, task.ground_truth[i + 1][:1])

    yield from hidden_early(task, gt, rng)

    skipped = [list(s) for s in gt]
    skipped[turn] = []
    yield "empty_turn", skipped


def hidden_early(task, gt, rng):
    """miss_func: the hidden function's calls from the turn that needs it, made one turn before it is
    revealed and at a random earlier turn, then made again (twice) or not (once) where the truth makes them."""
    for turn, specs in task.revealed_tools.items():
        names = {spec["name"] for spec in specs}
        needed = next((i for i in range(turn, len(gt)) if names & {c.name for c in task.ground_truth[i]}), None)
        if needed is None:  # never called by this ground truth (2 entries): a call made elsewhere
            calls = [example_call(name) for name in sorted(names)]
        else:
            calls = [c for c in task.ground_truth[needed] if c.name in names]
        for early in sorted({turn - 1, rng.randrange(turn)}):
            twice = with_step(gt, early, calls)
            yield "hidden_early_twice", twice
            if needed is not None:
                rest = [c for c in task.ground_truth[needed] if c.name not in names]
                once = [list(s) for s in twice]
                once[needed] = [rest] if rest else []
                yield "hidden_early_once", once


@cache
def truth_occurrences() -> dict[str, list[tuple]]:
    """Function name -> every (task, turn, index) where a ground truth calls it."""
    found: dict[str, list[tuple]] = {}
    for task in load_tasks("bfcl", "all"):
        for turn, calls in enumerate(task.ground_truth):
            for index, call in enumerate(calls):
                found.setdefault(call.name, []).append((task, turn, index))
    return found


def example_call(name):
    if name in truth_occurrences():
        task, turn, index = truth_occurrences()[name][0]
        return task.ground_truth[turn][index]
    return ToolCall(name, PLAUSIBLE[name])


# ---------------------------------------------------------------- positional arguments, one probe per method


def positional_values(call, method):
    """``call``'s arguments as positional values in the signature's order, up to the last one it names
    (defaults filled in before it)."""
    parameters = list(signature(method).parameters.values())
    last = max(i for i, p in enumerate(parameters) if p.name in call.arguments)
    return tuple(call.arguments.get(p.name, p.default) for p in parameters[: last + 1])


def probe(name, cls, tasks, rng):
    """(task, turn, index) of a ground-truth call of ``name``: one naming the most arguments where some
    ground truth calls it, else a plausible call appended to a turn of a task with its class."""
    if name in truth_occurrences():
        found = truth_occurrences()[name]
        most = max(len(task.ground_truth[turn][index].arguments) for task, turn, index in found)
        return rng.choice([(t, turn, i) for t, turn, i in found if len(t.ground_truth[turn][i].arguments) == most])
    task = rng.choice([t for t in tasks if cls in t.classes])
    turn = rng.choice([i for i, calls in enumerate(task.ground_truth) if calls])
    truth = [list(calls) for calls in task.ground_truth]
    truth[turn].append(ToolCall(name, PLAUSIBLE[name]))
    return dataclasses.replace(task, ground_truth=truth), turn, len(truth[turn]) - 1


def positional_cases(tasks, rng):
    """For every method with two or more parameters of the eight classes: the call positionally, with its
    first two values swapped, and with one value too many (an error for the model in both checkers)."""
    classes = sorted({cls for task in tasks for cls in task.classes})
    for cls in classes:
        for name, method in class_methods((cls,)).items():
            if len(signature(method).parameters) < 2:
                continue
            task, turn, index = probe(name, cls, tasks, rng)
            values = positional_values(task.ground_truth[turn][index], class_methods(tuple(task.classes))[name])
            variants = {"positional": values, "positional_surplus": (*values, values[-1])}
            if len(values) > 1 and values[0] != values[1]:
                variants["positional_swapped"] = (values[1], values[0], *values[2:])
            for kind, made_values in variants.items():
                made = list(task.ground_truth[turn])
                made[index] = ToolCall(name, {}, made_values)
                steps = ground_truth_steps(task)
                steps[turn] = [made]
                yield task, kind, steps


# ---------------------------------------------------------------- the comparison


def bfcl_verdict(task, steps, run_id):
    """bfcl-eval's own verdict, its error type, and whether its irrelevance rule passes too (its checker
    ``eval``s our strings: fine in a test, never on model output)."""
    decoded = [[[render_call(c) for c in step] for step in turn if step] for turn in steps]
    truth = [[render_call(c) for c in calls] for calls in task.ground_truth]
    entry = {"id": task.id, "initial_config": task.initial_config, "involved_classes": task.classes}
    name = f"toolrl_agreement_{run_id}"
    try:
        verdict = multi_turn_checker(decoded, truth, entry, task.id.rsplit("_", 1)[0], name)
        return verdict["valid"], verdict.get("error_type"), multi_turn_irrelevance_checker(decoded, truth)["valid"]
    finally:
        # its executor caches instances in module globals keyed by model name: drop ours
        for key in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
            del vars(multi_turn_utils)[key]


def agreement_cases(tasks, seed):
    for task in tasks:
        rng = random.Random(f"{seed}-{task.id}")
        for kind, steps in perturbations(task, rng):
            yield task, kind, steps
    yield from positional_cases(tasks, random.Random(f"{seed}-positional"))


ERROR_TYPES = {
    "state mismatch": "multi_turn:instance_state_mismatch",
    "response mismatch": "multi_turn:execution_response_mismatch",
    "empty turn": "multi_turn:empty_turn_model_response",
}
# where the two modes differ (calls in an empty-truth turn, hidden functions): compared in both
BOTH_MODES = {"call_in_empty_turn", "hidden_early_twice", "hidden_early_once"}


def disagreement(ours, theirs, error_type, strict):
    """Why our verdict differs from bfcl-eval's (None: it agrees)."""
    if strict and not ours.success and ours.failure.startswith("hidden function"):
        return None  # strict's own rule, which BFCL lacks: it may only fail more
    if ours.success != theirs:
        return "verdict"
    if ours.success or ours.failure.startswith("irrelevance"):
        return None
    expected = next(t for prefix, t in ERROR_TYPES.items() if ours.failure.startswith(prefix))
    return None if expected == error_type else "failure class"


def assert_agreement(tasks, seed, minimum):
    counts: dict[str, int] = {}
    disagreements = []
    for run_id, (task, kind, steps) in enumerate(agreement_cases(tasks, seed)):
        valid, error_type, relevant = bfcl_verdict(task, steps, run_id)
        for strict in (False, True) if kind in BOTH_MODES else (False,):
            ours = run_episode(task, steps, STRICT if strict else None)
            counts[kind] = counts.get(kind, 0) + 1
            why = disagreement(ours, valid and (relevant or not strict), error_type, strict)
            if why:
                disagreements.append((why, task.id, kind, strict, ours.failure, error_type))
    total = sum(counts.values())
    assert not disagreements, f"{len(disagreements)}/{total} disagree, e.g. {disagreements[:5]}"
    assert total >= minimum, counts
    return counts


def test_checker_agrees_with_bfcl_eval(all_tasks):
    counts = assert_agreement(all_tasks, seed=0, minimum=1000)
    assert counts["ground_truth"] == 800
    assert counts["call_in_empty_turn"] >= 200
    assert counts["hidden_early_twice"] >= 2 * 202  # every function miss_func hides, in both modes
    # every method with two or more parameters of the eight classes, once each
    assert counts["positional"] == counts["positional_surplus"] == counts["positional_swapped"] == 50


@pytest.mark.slow
def test_checker_agrees_with_bfcl_eval_on_another_seed(all_tasks):
    assert_agreement(all_tasks, seed=1, minimum=4000)
