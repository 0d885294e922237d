"""Procedurally generated multi-turn tool tasks over the BFCL API classes (the "synth" environment).

Small enough for a tiny model trained from scratch, unlimited, and with clean OOD splits. A task draws a
fresh initial state for its API classes from its seed, then 1-3 user turns, each made by a template: a
function ``(rng, scene) -> user text`` that picks its values from the live state and issues its calls
through the scene. The scene executes every call at once on real instances of the BFCL classes, so later
calls can use earlier results, later turns see the state earlier turns left, and a call that errors is a
generator bug, never ground truth.

Splits: ``train`` and ``test`` share the templates and are told apart by a hash of the task's content
(turns + ground truth), so no test task equals a train task at any index; ``ood_content`` uses only
held-out templates, among them every template of the held-out classes (TicketAPI, TravelAPI).
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cache

from rollout.envs.base import Task
from rollout.envs.bfcl import class_tools
from rollout.envs.synth_scene import SCENARIOS, Scene, Skip
from rollout.envs.synth_templates import TEMPLATES, Template
from rollout.types import ToolCall

SPLITS = ("train", "test", "ood_content")
SPLIT_SIZES = {"train": 1000, "test": 200, "ood_content": 200}
TEST_SHARE = 5  # one content-hash bucket in TEST_SHARE belongs to test, the others to train
PROMPT_BUDGET = 1800  # characters of tool specs (JSON) + user texts: about 512 tokens


@cache
def _class_specs(cls: str) -> dict[str, dict]:
    """BFCL descriptions open with a long class preamble; keep only each function's own description."""
    return {s["name"]: {**s, "description": s["description"].split("Tool description:", 1)[-1].strip()}
            for s in class_tools(cls)}


def _prompt_size(tools: list[dict], turns: list[list[str]]) -> int:
    return len(json.dumps(tools)) + sum(len(text) for texts in turns for text in texts)


def _tool_specs(used: list[Template], truth: list[list[ToolCall]]) -> tuple[dict[str, dict], list[dict]]:
    """The specs of every function of the classes used, and those of the functions the ground truth calls."""
    specs = {name: spec for t in used for name, spec in _class_specs(t.cls).items()}
    return specs, [specs[name] for name in dict.fromkeys(c.name for calls in truth for c in calls)]


def _attempt(split: str, index: int, rng: random.Random) -> tuple[Task, list[str]] | None:
    pool = [t for t in TEMPLATES.values() if t.held_out == (split == "ood_content")]
    chosen = rng.sample(sorted({t.cls for t in pool}), rng.choice((1, 1, 2)))
    configs = {cls: SCENARIOS[cls](rng) for cls in chosen if cls in SCENARIOS}
    scene = Scene({cls: configs.get(cls, {}) for cls in chosen})
    turns, truth, used = [], [], []
    for _ in range(rng.choices((1, 2, 3), weights=(4, 4, 3))[0]):
        options = [t for t in pool if t.cls in chosen]
        rng.shuffle(options)
        for option in options:
            scene.calls = []
            try:
                turns.append([option.make(rng, scene)])
            except Skip:
                continue
            truth.append(scene.calls)
            used.append(option)
            break
        if len(turns) > 1 and _prompt_size(_tool_specs(used, truth)[1], turns) > PROMPT_BUDGET:
            del turns[-1], truth[-1], used[-1]  # nothing was generated after it: its state changes are moot
            break
    if not turns:
        return None
    specs, tools = _tool_specs(used, truth)
    for name in rng.sample(sorted(set(specs) - {spec["name"] for spec in tools}), k=rng.randint(1, 2)):
        if _prompt_size([*tools, specs[name]], turns) <= PROMPT_BUDGET:
            tools.append(specs[name])
    rng.shuffle(tools)
    classes = list(dict.fromkeys(t.cls for t in used))
    task = Task(id=f"synth_{split}_{index}", env="synth", category=used[0].cls, turns=turns,
                ground_truth=truth, classes=classes, tools=tools,
                initial_config={c: configs[c] for c in classes if c in configs})
    return task, [t.name for t in used]


def content_key(task: Task) -> str:
    """What makes two tasks the same task: their user turns and ground-truth calls."""
    return json.dumps([task.turns, [[[c.name, c.arguments] for c in turn] for turn in task.ground_truth]],
                      sort_keys=True)


def _content_bucket(task: Task) -> int:
    return int(hashlib.sha256(content_key(task).encode()).hexdigest(), 16) % TEST_SHARE


def _build(split: str, index: int, seed: int) -> tuple[Task, list[str]]:
    if split not in SPLITS:
        raise ValueError(f"unknown synth split {split!r}; choose from {', '.join(SPLITS)}")
    rng = random.Random(f"{seed}-{split}-{index}")
    while True:  # rejection: train and test take disjoint hash buckets of the content
        built = _attempt(split, index, rng)
        if built and (split == "ood_content" or (_content_bucket(built[0]) == 0) == (split == "test")):
            return built


def generate_task(split: str, index: int, seed: int = 0) -> Task:
    """Task ``index`` of ``split``: the same inputs always give the same task."""
    return _build(split, index, seed)[0]


def task_templates(task: Task, seed: int = 0) -> list[str]:
    """The templates that made each turn of ``task``, re-derived from its id and the seed that made it."""
    split, index = task.id.removeprefix("synth_").rsplit("_", 1)
    rebuilt, names = _build(split, int(index), seed)
    if rebuilt != task:
        raise ValueError(f"{task.id} was not generated with seed {seed}")
    return names


def load_tasks(split: str, seed: int = 0) -> list[Task]:
    """The default tasks of ``split``: train 1000, test 200, ood_content 200."""
    if split not in SPLITS:
        raise ValueError(f"unknown synth split {split!r}; choose from {', '.join(SPLITS)}")
    return list(_split_tasks(split, seed))


@cache
def _split_tasks(split: str, seed: int) -> tuple[Task, ...]:
    """Generated once per process (seconds for train): every Scheduler and eval suite of a sweep reads them."""
    return tuple(generate_task(split, index, seed) for index in range(SPLIT_SIZES[split]))
