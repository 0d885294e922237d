"""Fuzzing parse + dispatch: whatever a model writes becomes observations, never an escaped exception,
and never executed code (an injection that worked would create the sentinel file)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.envs import EnvEpisode, load_tasks
from rollout.formats import FORMATS

SENTINEL = "SENTINEL_toolrl"
INJECTIONS = [
    f"__import__('os').system('touch {SENTINEL}')",
    f"open('{SENTINEL}', 'w').write('x')",
    f"exec(\"open('{SENTINEL}','w')\")",
    f"eval(\"__import__('os').system('touch {SENTINEL}')\")",
    f"(lambda: __import__('os').system('touch {SENTINEL}'))()",
    f"os.system('touch {SENTINEL}')",
    "__builtins__",
    "_load_scenario",
    "__class__",
]

TASK_IDS = ("multi_turn_base_0", "multi_turn_base_60", "multi_turn_miss_func_0")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    previous = os.getcwd()
    os.chdir(workdir)  # a successful injection would touch the sentinel here
    tasks = {t.id: t for t in load_tasks("bfcl", "all")}
    opened = []
    for task_id in TASK_IDS:
        episode = EnvEpisode(tasks[task_id])
        episode.begin_turn()
        opened.append(episode)
    yield opened
    os.chdir(previous)
    assert not (workdir / SENTINEL).exists()


def tool_names(episodes):
    return sorted({name for e in episodes for name in e.visible_tools})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
    | st.sampled_from(INJECTIONS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def call_objects(draw, names):
    name = draw(st.sampled_from(names) | st.sampled_from(INJECTIONS) | st.text(max_size=12) | json_values)
    arguments = draw(
        st.dictionaries(
            st.sampled_from(["file_name", "folder", "a", "b", "numbers", "precision", "exponent", "content"])
            | st.text(max_size=10),
            json_values,
            max_size=4,
        )
        | json_values
    )
    return {"name": name, "arguments": arguments}


def assert_observations(step):
    observations = step.observations
    assert isinstance(observations, list) and all(isinstance(o, str) for o in observations)
    assert len(observations) == (1 if step.format_error else len(step.calls))


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(text=st.text(max_size=300), fmt=st.sampled_from(sorted(FORMATS)), which=st.integers(0, 2))
def test_arbitrary_text_is_an_observation(episodes, text, fmt, which):
    assert_observations(episodes[which].act(text, FORMATS[fmt]))


@SETTINGS
@given(data=st.data(), which=st.integers(0, 2))
def test_hermes_calls_with_wrong_names_types_and_injections(episodes, data, which):
    calls = data.draw(st.lists(call_objects(tool_names(episodes)), min_size=1, max_size=3))
    body = "\n".join(f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in calls)
    assert_observations(episodes[which].act(body, FORMATS["hermes"]))


@SETTINGS
@given(data=st.data(), which=st.integers(0, 2))
def test_json_list_calls_with_wrong_names_types_and_injections(episodes, data, which):
    calls = data.draw(st.lists(call_objects(tool_names(episodes)), min_size=1, max_size=3))
    assert_observations(episodes[which].act(json.dumps(calls), FORMATS["json"]))


@SETTINGS
@given(
    name=st.sampled_from(["cd", "ls", "power", "logarithm", "echo", "mean"]) | st.sampled_from(INJECTIONS),
    argument=st.sampled_from(INJECTIONS) | st.text(max_size=20).map(repr) | st.integers().map(str),
    key=st.sampled_from(["folder", "a", "base", "exponent", "precision", "content", "numbers"]),
    which=st.integers(0, 2),
)
def test_python_calls_with_injections(episodes, name, argument, key, which):
    for text in (f"[{name}({key}={argument})]", f"[{name}({argument})]", f"[{argument}]"):
        assert_observations(episodes[which].act(text, FORMATS["python"]))


@SETTINGS
@given(
    name=st.sampled_from(["power", "logarithm", "square_root", "round_number", "tail", "add"]),
    value=st.integers() | st.floats(allow_nan=True, allow_infinity=True),
    key=st.sampled_from(["base", "exponent", "precision", "value", "number", "lines", "decimal_places", "a"]),
)
def test_huge_numbers_cannot_hang_the_arithmetic(episodes, name, value, key):
    call = {"name": name, "arguments": {"base": 10, "exponent": 2, "value": 5, "number": 2.0, "precision": 3,
                                        "a": 1, "b": 2, key: value}}
    assert_observations(episodes[1].act(json.dumps([call]), FORMATS["json"]))


def test_one_megabyte_arguments(episodes):
    big = "x" * (1 << 20)
    for fmt, text in (
        ("hermes", f'<tool_call>\n{{"name": "echo", "arguments": {{"content": "{big}", "file_name": "b.txt"}}}}\n</tool_call>'),
        ("json", json.dumps([{"name": "mean", "arguments": {"numbers": big}}])),
        ("python", f"[echo(content='{big}', file_name='c.txt')]"),
        ("hermes", f"<tool_call>\n{{\"name\": \"{big}\", \"arguments\": {{}}}}\n</tool_call>"),
    ):
        step = episodes[0].act(text, FORMATS[fmt])
        assert_observations(step)
        assert len(step.observations) == 1


def test_injection_strings_reach_no_interpreter(episodes, tmp_path):
    for text in INJECTIONS:
        for fmt in FORMATS.values():
            assert_observations(episodes[0].act(text, fmt))
            assert_observations(episodes[0].act(f"[{text}]", fmt))
    hermes = FORMATS["hermes"]
    for injection in INJECTIONS:
        step = episodes[0].act(
            f'<tool_call>\n{{"name": {json.dumps(injection)}, "arguments": {{}}}}\n</tool_call>', hermes
        )
        assert step.observations[0].startswith("error: unknown function")
    assert not os.path.exists(SENTINEL)


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(["hermes", "json"]), which=st.integers(0, 2))
def test_messages_of_several_calls_dispatch_safely(episodes, data, fmt, which):
    calls = data.draw(st.lists(call_objects(tool_names(episodes)), min_size=1, max_size=3))
    text = (
        "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls) if fmt == "hermes" else json.dumps(calls)
    )
    assert_observations(episodes[which].act(text, FORMATS[fmt]))
