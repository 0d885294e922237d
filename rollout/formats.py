"""Tool-call syntaxes: how tools are shown to the model, how its calls are parsed, and how calls are written.

Formats are what "format OOD" evaluation swaps at test time. Parsing never evaluates model text: JSON is
decoded with ``json``, the python syntax is read with ``ast`` and accepts literals only. Anything that
attempts a call but is malformed raises ``FormatError`` whose message is the model's next observation.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Protocol

from rollout.types import FormatError, ToolCall

# Tool calls are never this big; the C JSON decoder stays linear up to here. ``ast`` builds one Python
# object per node (about 1 s per 200 kB of ``[[],[],...]``), so the python syntax gets a tighter bound.
MAX_CALL_TEXT = 4 << 20
MAX_PYTHON_TEXT = 200_000


class ToolFormat(Protocol):
    name: str
    descriptions: bool  # whether the tool prompt shows the specs' descriptions (rollout.tool_descriptions)

    def render_tools(self, tools: list[dict]) -> str: ...

    def parse(self, text: str) -> list[ToolCall]: ...

    def render(self, calls: list[ToolCall]) -> str: ...


def without_descriptions(tool: dict) -> dict:
    """A tool spec with every "description" removed: names, types and required parameters stay."""
    if isinstance(tool, dict):
        return {k: without_descriptions(v) for k, v in tool.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(tool, list):
        return [without_descriptions(v) for v in tool]
    return tool


def _tool_lines(tools: list[dict], descriptions: bool) -> str:
    return "\n".join(json.dumps(tool if descriptions else without_descriptions(tool), ensure_ascii=False,
                                separators=(",", ":")) for tool in tools)


def _listing(tools: list[dict], descriptions: bool, syntax: str) -> str:
    return (
        f"You can call these functions (JSON Schema, one per line):\n{_tool_lines(tools, descriptions)}\n"
        f"To call functions, reply with only {syntax}. To answer the user, reply in plain text."
    )


def _call_from_object(obj: Any) -> ToolCall:
    if not isinstance(obj, dict):
        raise FormatError("error: a tool call must be a JSON object with \"name\" and \"arguments\"")
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or not name:
        raise FormatError("error: a tool call needs a string \"name\"")
    if not isinstance(arguments, dict):
        raise FormatError(f"error: \"arguments\" of {name[:80]!r} must be a JSON object")
    return ToolCall(name, arguments)


def _json_call(call: ToolCall) -> dict:
    # JSON calls name every argument: dropping positionals silently would change the call
    if call.positional:
        raise ValueError(f"{call.name}: positional arguments have no JSON form; name them first (keyword_call)")
    return {"name": call.name, "arguments": call.arguments}


def _check_length(text: str, limit: int) -> None:
    if len(text) > limit:
        raise FormatError(f"error: tool call text too long ({len(text)} characters, at most {limit})")


def _json_error(exc: BaseException, where: str) -> FormatError:
    if isinstance(exc, ValueError):
        return FormatError(f"error: invalid JSON in {where}: {str(exc)[:200]}")
    return FormatError(f"error: JSON in {where} is nested too deeply")


def _loads(text: str, where: str) -> Any:
    _check_length(text, MAX_CALL_TEXT)
    try:
        return json.loads(text)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _json_error(exc, where) from None


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def _strip_fence(text: str, language: str) -> str:
    # Plain string operations: a regex with lazy and greedy whitespace around the body backtracks
    # cubically on a fence followed by a long run of blank lines, which degenerate models do emit.
    body = text.strip()
    if len(body) >= 6 and body.startswith("```") and body.endswith("```"):
        body = body[3:-3]
        first, newline, rest = body.partition("\n")
        if newline and first.strip().lower() in ("", language):
            body = rest
    return body.strip()


class _Format:
    def __init__(self, descriptions: bool = True):
        self.descriptions = descriptions


class HermesFormat(_Format):
    """Qwen's default: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, several per message."""

    name = "hermes"
    _open, _close = "<tool_call>", "</tool_call>"

    def render_tools(self, tools: list[dict]) -> str:
        return (
            "You may call one or more functions to assist with the user query.\n"
            "Function signatures are within <tools></tools> XML tags:\n<tools>\n"
            f"{_tool_lines(tools, self.descriptions)}\n</tools>\n"
            "For each function call, return a JSON object with the function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call>"
        )

    def parse(self, text: str) -> list[ToolCall]:
        if self._open not in text and self._close not in text:
            return []
        _check_length(text, MAX_CALL_TEXT)
        # Decode the JSON after each opening tag instead of cutting at the next closing tag, so that a
        # tag inside an argument string (echo content, say) does not split the call.
        calls, outside, position = [], [], 0
        while (start := text.find(self._open, position)) != -1:
            outside.append(text[position:start])
            body = start + len(self._open)
            try:
                obj, end = _DECODER.raw_decode(text, _SPACE.match(text, body).end())
            except (ValueError, RecursionError, MemoryError) as exc:
                raise _json_error(exc, "<tool_call>") from None
            end = _SPACE.match(text, end).end()
            if not text.startswith(self._close, end):
                raise FormatError("error: unbalanced <tool_call> tags: close each call's JSON with </tool_call>")
            calls.append(_call_from_object(obj))
            position = end + len(self._close)
        outside.append(text[position:])
        if any(self._close in part for part in outside):
            raise FormatError("error: unbalanced <tool_call> tags: </tool_call> without <tool_call>")
        return calls

    def render(self, calls: list[ToolCall]) -> str:
        return "\n".join(f"<tool_call>\n{json.dumps(_json_call(c), ensure_ascii=False)}\n</tool_call>" for c in calls)


class JsonListFormat(_Format):
    """The whole message is a JSON list of ``{"name", "arguments"}`` objects (a single object also counts)."""

    name = "json"

    def render_tools(self, tools: list[dict]) -> str:
        return _listing(tools, self.descriptions, 'a JSON list: [{"name": <function-name>, "arguments": <args-json-object>}, ...]')

    def parse(self, text: str) -> list[ToolCall]:
        body = _strip_fence(text, "json")
        if not body.startswith(("[", "{")):
            return []
        decoded = _loads(body, "the JSON call list")
        return [_call_from_object(obj) for obj in (decoded if isinstance(decoded, list) else [decoded])]

    def render(self, calls: list[ToolCall]) -> str:
        return json.dumps([_json_call(c) for c in calls], ensure_ascii=False)


_LITERAL_NODES = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.UnaryOp, ast.UAdd, ast.USub, ast.Load)


def _literal(node: ast.AST, call_name: str) -> Any:
    # Vet the node types first: literal_eval alone would still accept sets and complex numbers.
    if not all(isinstance(n, _LITERAL_NODES) for n in ast.walk(node)):
        raise FormatError(f"error: arguments of {call_name}() must be literals (strings, numbers, lists, dicts)")
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise FormatError(f"error: arguments of {call_name}() must be literals") from None
    return _json_like(value, call_name)


def _json_like(value: Any, call_name: str) -> Any:
    if isinstance(value, tuple | list):
        return [_json_like(v, call_name) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise FormatError(f"error: dict keys in {call_name}() arguments must be strings")
        return {k: _json_like(v, call_name) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float):
        return value
    # Ellipsis, bytes and complex numbers are Python literals but have no JSON counterpart.
    raise FormatError(f"error: unsupported literal {type(value).__name__} in {call_name}() arguments")


def render_call(call: ToolCall) -> str:
    """One call in Python syntax, ``name(value, ..., key=value, ...)`` with ``repr`` values (what BFCL's answers use)."""
    arguments = [repr(v) for v in call.positional] + [f"{k}={v!r}" for k, v in call.arguments.items()]
    return f"{call.name}({', '.join(arguments)})"


class PythonFormat(_Format):
    """The BFCL/ACEBench syntax: ``[func(a=1, b='x'), g()]``, read with ``ast`` to literals only."""

    name = "python"
    _looks_like_call = re.compile(r"\[|[A-Za-z_]\w*\s*\(")

    def render_tools(self, tools: list[dict]) -> str:
        return _listing(
            tools, self.descriptions, "a Python list of calls with keyword arguments: [func_name1(param=value), func_name2(param=value)]"
        )

    def parse(self, text: str) -> list[ToolCall]:
        body = _strip_fence(text, "python")
        if not self._looks_like_call.match(body):
            return []
        _check_length(body, MAX_PYTHON_TEXT)
        try:
            tree = ast.parse(body, mode="eval").body
        except (SyntaxError, ValueError) as exc:
            raise FormatError(f"error: not a valid call list: {str(getattr(exc, 'msg', exc))[:200]}") from None
        except (MemoryError, RecursionError):
            raise FormatError("error: not a valid call list: nested too deeply") from None
        nodes = tree.elts if isinstance(tree, ast.List) else [tree]
        return [self._call(node) for node in nodes]

    @staticmethod
    def _call(node: ast.AST) -> ToolCall:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise FormatError("error: expected a list of calls like [func(param=value)]")
        name = node.func.id
        # named when the call is bound to the method (its signature, not the spec, gives the order)
        positional = tuple(_literal(arg, name) for arg in node.args)
        arguments: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise FormatError(f"error: **kwargs is not allowed in {name}()")
            if keyword.arg in arguments:
                raise FormatError(f"error: argument {keyword.arg!r} given twice in {name}()")
            arguments[keyword.arg] = _literal(keyword.value, name)
        return ToolCall(name, arguments, positional)

    def render(self, calls: list[ToolCall]) -> str:
        return "[" + ", ".join(render_call(c) for c in calls) + "]"


FORMATS: dict[str, ToolFormat] = {f.name: f() for f in (HermesFormat, PythonFormat, JsonListFormat)}


def get_format(name: str, descriptions: bool = True) -> ToolFormat:
    """The syntax ``name``; ``descriptions=False`` lists tools by names and typed parameters only."""
    if name not in FORMATS:
        raise ValueError(f"unknown tool-call format {name!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[name] if descriptions else type(FORMATS[name])(descriptions=False)
