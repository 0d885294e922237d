"""Tool-call syntaxes: hand-written cases, round trips, and fuzzing that only FormatError escapes."""

from __future__ import annotations

import keyword

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


def test_python_positional_arguments_follow_the_schema_order():
    assert python.parse("[mv('a.txt', destination='b')]", TOOLS) == [
        ToolCall("mv", {"source": "a.txt", "destination": "b"})
    ]
    assert python.parse("mv(source='a', destination='b')") == [ToolCall("mv", {"source": "a", "destination": "b"})]
    with pytest.raises(FormatError, match="keyword names"):
        python.parse("[mv('a.txt')]")
    with pytest.raises(FormatError, match="given twice"):
        python.parse("[mv('a', source='b')]", TOOLS)


@pytest.mark.parametrize(
    "text",
    [
        "[f(x=__import__('os').system('touch SENTINEL'))]",
        "[__import__('os').system('touch SENTINEL')]",
        "[f(x=open('SENTINEL', 'w'))]",
        "[os.system('touch SENTINEL')]",
        "[f(x=(lambda: 1)())]",
        "[f(x={1, 2})]",
        "[f(x=1+2j)]",
        "[f(**{'a': 1})]",
        "[f(x=y)]",
        "[1, 2]",
        "[f(x=1)",
    ],
)
def test_python_accepts_literals_only(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FormatError):
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
    with pytest.raises(FormatError, match="invalid JSON"):
        json_list.parse('[{"name": "ls",]')


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'; choose from hermes, python, json"):
        get_format("xml")


def test_render_tools_lists_every_tool_once():
    for fmt in FORMATS.values():
        text = fmt.render_tools(TOOLS * 2)
        assert text.count('"name":"mv"') == 2


def test_one_megabyte_argument_round_trips():
    call = [ToolCall("echo", {"content": "x" * (1 << 20)})]
    for fmt in FORMATS.values():
        assert fmt.parse(fmt.render(call)) == call


# ------------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s))
calls = st.builds(ToolCall, identifiers, st.dictionaries(identifiers, json_values, max_size=4))
SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(calls=st.lists(calls, min_size=1, max_size=3), fmt=st.sampled_from(sorted(FORMATS)))
def test_render_then_parse_is_identity(calls, fmt):
    assert FORMATS[fmt].parse(FORMATS[fmt].render(calls)) == calls


CONFUSING = st.sampled_from(
    ["<tool_call>", "</tool_call>", "{", "}", "[", "]", "(", ")", '"', "'", ":", ",", "=", "\\", "\n",
     '"name"', '"arguments"', "__import__('os')", "lambda", "```", "json", "python", "f(", "1e999", "-", "*"]
)
confusing_text = st.lists(CONFUSING | st.text(max_size=5), max_size=40).map("".join)


def parse_raises_only_format_error(fmt, text):
    try:
        result = FORMATS[fmt].parse(text, TOOLS)
    except FormatError as exc:
        assert str(exc).startswith("error")
    else:
        assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) for c in result)


@SETTINGS
@given(text=st.text(), fmt=st.sampled_from(sorted(FORMATS)))
def test_arbitrary_text_raises_only_format_error(text, fmt):
    parse_raises_only_format_error(fmt, text)


@SETTINGS
@given(text=confusing_text, fmt=st.sampled_from(sorted(FORMATS)))
def test_confusing_text_raises_only_format_error(text, fmt):
    parse_raises_only_format_error(fmt, text)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_deep_nesting_raises_only_format_error(fmt):
    for depth in (100, 10_000, 200_000):
        parse_raises_only_format_error(fmt, "[" * depth + "]" * depth)
        parse_raises_only_format_error(fmt, "<tool_call>" + "{\"a\":" * depth + "1" + "}" * depth + "</tool_call>")
        parse_raises_only_format_error(fmt, "[f(x=" + "[" * depth + "]" * depth + ")]")


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=confusing_text | st.text(), fmt=st.sampled_from(sorted(FORMATS)))
def test_fuzz_parse_long(text, fmt):
    parse_raises_only_format_error(fmt, text)
