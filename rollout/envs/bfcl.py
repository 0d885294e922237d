"""BFCL v3 multi-turn (base, miss_param, miss_func, long_context; 200 entries each) from ``bfcl-eval``.

The data, tool docs and API classes are read from the installed package, never copied. Entries with the
same index share a scenario across the four categories, so the train/test split is drawn over scenario
indices: a scenario is in the same split in every category.
"""

from __future__ import annotations

import json
import random
from functools import cache
from importlib import resources

from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

from rollout.envs.base import Task, api_class, keyword_call, public_methods
from rollout.formats import get_format
from rollout.types import FormatError

CATEGORIES = ("base", "miss_param", "miss_func", "long_context")
SPLITS = ("train", "test", "all", *CATEGORIES)
SCENARIOS = 200


def _data_file(*parts: str):
    return resources.files("bfcl_eval").joinpath("data", *parts)


def _read_jsonl(*parts: str) -> list[dict]:
    with _data_file(*parts).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def to_json_schema(node):
    """BFCL's schema dialect ("dict", "float", "tuple") to JSON Schema, as chat templates expect."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    renamed = {"dict": "object", "float": "number", "tuple": "array", "any": None}
    out = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            value = renamed.get(value, value)
            if value is None:
                continue
        out[key] = value if key == "type" else to_json_schema(value)
    return out


@cache
def class_tools(class_name: str) -> tuple[dict, ...]:
    """The function specs of one API class, in JSON Schema, without BFCL's response schema."""
    docs = _read_jsonl("multi_turn_func_doc", MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name])
    return tuple(
        {"name": d["name"], "description": d["description"], "parameters": to_json_schema(d["parameters"])}
        for d in docs
    )


@cache
def api_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Every tool name and every argument name of the BFCL multi-turn APIs (synth's tasks call the same)."""
    tools = [tool for class_name in MULTI_TURN_FUNC_DOC_FILE_MAPPING for tool in class_tools(class_name)]
    arguments = {name for tool in tools for name in tool["parameters"].get("properties", {})}
    return tuple(sorted({tool["name"] for tool in tools})), tuple(sorted(arguments))


def scenario_split(seed: int) -> dict[str, set[int]]:
    indices = list(range(SCENARIOS))
    random.Random(f"bfcl-split-{seed}").shuffle(indices)
    return {"train": set(indices[: SCENARIOS // 2]), "test": set(indices[SCENARIOS // 2 :])}


@cache
def class_methods(classes: tuple[str, ...]) -> dict[str, object]:
    """The public methods of unloaded instances of ``classes``: only their signatures are read."""
    return public_methods({name: api_class(name)() for name in classes})


def _parse_ground_truth(entry: dict, ground_truth: list[list[str]]) -> list[list]:
    """The answer strings as calls, positional arguments named by the methods' signatures (some answers,
    ``cd('archives')`` say, pass them positionally), so that every syntax can render them."""
    python = get_format("python")
    methods = class_methods(tuple(entry["involved_classes"]))
    parsed = []
    for index, calls in enumerate(ground_truth):
        try:
            parsed.append([keyword_call(c, methods[c.name]) for text in calls for c in python.parse(text)])
        except FormatError as exc:
            raise ValueError(f"{entry['id']}: ground truth of turn {index} does not parse: {exc}") from exc
    return parsed


def _entry_to_task(entry: dict, ground_truth: list[list[str]], category: str) -> Task:
    tools = [spec for name in entry["involved_classes"] for spec in class_tools(name)]
    parsed = _parse_ground_truth(entry, ground_truth)
    revealed: dict[int, list[dict]] = {}
    for turn, names in entry.get("missed_function", {}).items():
        for spec in tools:
            if spec["name"] in names:
                # One entry (miss_func_49) calls a hidden function before its turn: reveal it when the
                # ground truth first needs it, or the reference answer itself could never be given.
                uses = [i for i, calls in enumerate(parsed) if spec["name"] in {c.name for c in calls}]
                revealed.setdefault(min([int(turn), *uses]), []).append(spec)
    hidden = {spec["name"] for specs in revealed.values() for spec in specs}
    turns = []
    for index, messages in enumerate(entry["question"]):
        texts = [m["content"] for m in messages if m.get("role") == "user"]
        if not texts and str(index) in entry.get("missed_function", {}):
            texts = [DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC]
        turns.append(texts)
    return Task(
        id=entry["id"],
        env="bfcl",
        category=category,
        turns=turns,
        ground_truth=parsed,
        classes=list(entry["involved_classes"]),
        initial_config=entry["initial_config"],
        tools=[spec for spec in tools if spec["name"] not in hidden],
        revealed_tools=revealed,
        long_context=category == "long_context",
    )


@cache
def _category_tasks(category: str) -> tuple[Task, ...]:
    entries = _read_jsonl(f"BFCL_v4_multi_turn_{category}.json")
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl("possible_answer", f"BFCL_v4_multi_turn_{category}.json")}
    return tuple(_entry_to_task(e, answers[e["id"]], category) for e in entries)


def scenario_index(task: Task) -> int:
    return int(task.id.rsplit("_", 1)[1])


def load_tasks(split: str, seed: int = 0) -> list[Task]:
    """Tasks of a named split: train/test (50/50 by scenario, from ``seed``), all, or one category."""
    if split not in SPLITS:
        raise ValueError(f"unknown bfcl split {split!r}; choose from {', '.join(SPLITS)}")
    categories = [split] if split in CATEGORIES else CATEGORIES
    tasks = [task for category in categories for task in _category_tasks(category)]
    if split in ("train", "test"):
        keep = scenario_split(seed)[split]
        tasks = [task for task in tasks if scenario_index(task) in keep]
    return tasks
