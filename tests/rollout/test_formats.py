"""Tool-call syntaxes: hand-written cases, round trips, and fuzzing that only FormatError escapes."""

from __future__ import annotations

import json
import keyword
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.formats import FORMATS, get_format
from rollout.types import FormatError, ToolCall

hermes, python, json_list = (get_format(n) for n in ("hermes", "python", "json"))
TOOLS = [{"name": "mv", "description": "move", "parameters": {"type": "object", "properties": {
    "source": {"type": "string"}, "destination": {"type": "string"}}, "required": ["source", "destination"]}}]


def test_hermes_several_calls_with_surrounding_text():
    text = 'Sure.\n<tool_call>\n{"name": "cd", "arguments": {"folder": "docs"}}\n</tool_call>\n' \
           '<tool_call>{"name": "ls", "arguments": {}}</tool_call>'
    assert hermes.parse(text) == [ToolCall("cd", {"folder": "docs"}), ToolCall("ls", {})]
    assert hermes.parse("The file is moved.") == []
    tagged = ToolCall("echo", {"content": "a </tool_call> <tool_call> b"})
    assert hermes.parse(hermes.render([tagged])) == [tagged]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('<tool_call>\n{"name": "cd", "arguments": {"folder": }\n</tool_call>', "invalid JSON"),
        ('<tool_call>\n{"name": "cd"', "invalid JSON"),
        ('<tool_call>\n{"name": "cd", "arguments": {}}\n', "unbalanced"),
        ('{"name": "cd", "arguments": {}}\n</tool_call>', "unbalanced"),
        ('<tool_call>{"arguments": {}}</tool_call>', "string \"name\""),
        ('<tool_call>{"name": "cd", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ('<tool_call>["cd"]</tool_call>', "JSON object"),
    ],
)
def test_hermes_malformed_calls_explain_themselves(text, message):
    with pytest.raises(FormatError, match=message):
        hermes.parse(text)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_nested_unicode_arguments_round_trip(fmt):
    calls = [
        ToolCall("write", {"path": "données/日本語.txt", "body": {"lines": ["α", "", "\\n'\"", None], "n": -0.5}}),
        ToolCall("noop", {}),
        ToolCall("emoji", {"s": "🙂 </tool_call> ]) ' \" ```", "flags": [True, False, 10**12]}),
    ]
    assert FORMATS[fmt].parse(FORMATS[fmt].render(calls)) == calls


def test_python_positional_arguments_stay_positional_until_bound():
    # the method's signature names them when the call is bound, not the spec (rollout.envs.base)
    assert python.parse("[mv('a.txt', destination='b')]") == [ToolCall("mv", {"destination": "b"}, ("a.txt",))]
    assert python.parse("mv(source='a', destination='b')") == [ToolCall("mv", {"source": "a", "destination": "b"})]
    positional = [ToolCall("f", {"k": [1]}, ("x", -2.5, None, {"a": [True]}))]
    assert python.parse(python.render(positional)) == positional
    assert python.render(positional) == "[f('x', -2.5, None, {'a': [True]}, k=[1])]"
    for fmt in (hermes, json_list):
        with pytest.raises(ValueError, match="positional"):
            fmt.render(positional)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[f(x=__import__('os').system('touch SENTINEL'))]", "must be literals"),
        ("[__import__('os').system('touch SENTINEL')]", "expected a list of calls"),
        ("[f(x=open('SENTINEL', 'w'))]", "must be literals"),
        ("[os.system('touch SENTINEL')]", "expected a list of calls"),
        ("[f(x=(lambda: open('SENTINEL', 'w'))())]", "must be literals"),
        ("[f(x=lambda: 1)]", "must be literals"),
        ("[f(x=f'{y}')]", "must be literals"),
        ("[f(x={1, 2})]", "must be literals"),
        ("[f(x=1+2j)]", "must be literals"),
        ("[f(x=...)]", "unsupported literal"),
        ("[f(x=b'a')]", "unsupported literal"),
        ("[f(x={1: 'a'})]", "keys .* must be strings"),
        ("[f(**{'a': 1})]", "kwargs"),
        ("[f(*[1])]", "must be literals"),
        ("[f(x=y)]", "must be literals"),
        ("[f(x=1, x=2)]", "given twice"),
        ("[1, 2]", "expected a list of calls"),
        ("[f(x=1)", "not a valid call list"),
        ("[f(x=" + "[" * 300 + "]" * 300 + ")]", "not a valid call list"),
    ],
)
def test_python_accepts_literals_only(text, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FormatError, match=message):
        python.parse(text)
    assert not (tmp_path / "SENTINEL").exists()


def test_python_plain_text_is_not_a_call():
    assert python.parse("I moved the file for you.") == []
    assert python.parse("[]") == []
    assert python.parse("```python\n[ls(a=True)]\n```") == [ToolCall("ls", {"a": True})]


def test_json_list_and_single_object():
    assert json_list.parse('[{"name": "ls", "arguments": {"a": true}}]') == [ToolCall("ls", {"a": True})]
    assert json_list.parse('```json\n{"name": "pwd"}\n```') == [ToolCall("pwd", {})]
    assert json_list.parse("All done.") == []
    assert json_list.parse("[]") == []
    with pytest.raises(FormatError, match="invalid JSON"):
        json_list.parse('[{"name": "ls",]')
    with pytest.raises(FormatError, match='string "name"'):
        json_list.parse('[{"name": 3, "arguments": {}}]')
    with pytest.raises(FormatError, match="must be a JSON object"):
        json_list.parse('[{"name": "ls", "arguments": "a=1"}]')


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fence_with_long_blank_run_is_fast(fmt):
    # A backtracking fence regex once took minutes on a few thousand blank lines.
    for text in ("```" + "\n" * 200_000 + "x", "```python" + " \n" * 100_000 + "```x", "```" + " " * 200_000):
        start = time.perf_counter()
        parse_raises_only_format_error(fmt, text)
        assert time.perf_counter() - start < 1.0


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'; choose from hermes, python, json"):
        get_format("xml")


def test_render_tools_lists_every_tool_once():
    for fmt in FORMATS.values():
        text = fmt.render_tools(TOOLS * 2)
        assert text.count('"name":"mv"') == 2


def test_tool_listing_without_descriptions_keeps_names_types_and_required():
    spec = {"name": "post", "description": "Post a note.", "parameters": {"type": "object", "properties": {
        "description": {"type": "string", "description": "The note."},  # a parameter *named* description
        "tags": {"type": "array", "items": {"type": "string", "description": "a tag"}}},
        "required": ["description"]}}
    bare = {"name": "post", "parameters": {"type": "object", "properties": {
        "description": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["description"]}}
    for name in FORMATS:
        text = get_format(name, descriptions=False).render_tools([spec])
        assert json.dumps(bare, separators=(",", ":")) in text and "Post a note." not in text
        assert "Post a note." in get_format(name).render_tools([spec])
    assert spec["parameters"]["properties"]["description"]["description"] == "The note."  # input untouched


def test_one_megabyte_argument():
    call = [ToolCall("echo", {"content": "é" * (1 << 20)})]
    for fmt in (hermes, json_list):
        assert fmt.parse(fmt.render(call)) == call
    # The python syntax bounds its input (ast cost grows with the node count): refused, and quickly.
    start = time.perf_counter()
    with pytest.raises(FormatError, match="too long"):
        python.parse(python.render(call))
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
identifiers = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12).filter(
    lambda s: s.isidentifier() and not keyword.iskeyword(s)
)
calls = st.builds(ToolCall, identifiers, st.dictionaries(identifiers, json_values, max_size=4))
# Each example checks all three formats. Example counts: 1,500 round trips + 2 x 2,500 fuzz texts = 6,500
# in the default suite (generation dominates the time, so checking every format per example is nearly free).
SETTINGS = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))


@settings(SETTINGS, max_examples=750)
@given(calls=st.lists(calls, min_size=1, max_size=3))
def test_render_then_parse_is_identity(calls):
    for fmt in FORMATS.values():
        assert fmt.parse(fmt.render(calls)) == calls


CONFUSING = st.sampled_from(
    ["<tool_call>", "</tool_call>", "<tool_call>\n{", "}\n</tool_call>", "{", "}", "[", "]", "(", ")", '"', "'",
     ":", ",", "=", "\\", "\n", " ", '"name"', '"arguments"', '{"name": "mv", "arguments": ', "null", "NaN",
     "__import__('os')", "open(", "lambda:", "...", "b'", "1j", "**", "*", "-", "1e999", "9" * 5000, "f'{",
     "```", "```json\n", "```python\n", "mv(", "f(", "x=", "source=", "True", "None", "x" * 100_000, "[" * 5000]
)
confusing_text = st.lists(CONFUSING | st.text(max_size=5), max_size=30).map("".join)


def parse_raises_only_format_error(fmt, text):
    try:
        result = FORMATS[fmt].parse(text)
    except FormatError as exc:
        assert str(exc).startswith("error") and "\n" not in str(exc)
    else:
        assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) and isinstance(c.positional, tuple)
                   for c in result)


def parse_all_formats(text):
    for fmt in FORMATS:
        parse_raises_only_format_error(fmt, text)


@SETTINGS
@given(text=st.text())
def test_arbitrary_text_raises_only_format_error(text):
    parse_all_formats(text)


@SETTINGS
@given(text=confusing_text)
def test_confusing_text_raises_only_format_error(text):
    parse_all_formats(text)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_deep_nesting_raises_only_format_error(fmt):
    for depth in (100, 10_000, 200_000):
        parse_raises_only_format_error(fmt, "[" * depth + "]" * depth)
        parse_raises_only_format_error(fmt, "<tool_call>" + "{\"a\":" * depth + "1" + "}" * depth + "</tool_call>")
        parse_raises_only_format_error(fmt, "[f(x=" + "[" * depth + "]" * depth + ")]")
        parse_raises_only_format_error(fmt, "[f(x=a" + "[0]" * depth + ")]")
