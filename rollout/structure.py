"""Structural state of an assistant message: healthy tool call, healthy response, polluted or collapsed.

The paper's collapse shows in the *structure* of the messages before it shows in the reward: tool-call
markup breaks, gets mixed with text, and finally degenerates. Each generated message gets one state:

- ``healthy_tool_call``: the format parses it into at least one call, there is only whitespace outside
  the call markup (hermes) and the policy ended the message itself (not cut at ``max_new_tokens``);
- ``healthy_response``: plain text with no tool-call syntax or chat control markup in it, ended by the policy;
- ``polluted``: the structure is there but damaged: calls that parse with text around them; call syntax
  or control markup (``<tool_call>``, ``<|im_start|>``, a ``{"name": ...}`` object, a ``[f(...)]`` list)
  inside a plain-text reply; unbalanced tags or broken JSON that is *recoverable*; a call (complete or
  recoverable) in a message cut at ``max_new_tokens``;
- ``collapsed``: nothing is left: an empty message (the policy ended at once), degenerate repetition
  (one n-gram of up to 64 units repeated at least 4 times over at least 24 units, where a unit is a
  word, a punctuation mark or a markup tag), call markup from which no call can be recovered, or a
  message cut at ``max_new_tokens`` with no call in it (it neither stopped nor produced structure: what
  a policy wrecked by a too-large update emits).

*Recoverable* means: at least one attempted call has a name that looks like a function name (an
identifier, dots allowed), and either its JSON parses after simple fixes or (JSON syntaxes) it starts with
``{"name": "<that name>"`` so the call it meant is still readable. The fixes are: close an open string,
append the missing closing brackets in order, cut at an extra or mismatched closing bracket, drop trailing
commas, give a dangling ``"key":`` a null value, and read each ``<tool_call>`` body up to the next tag
even when the closing tag is missing (or read the text before a ``</tool_call>`` that has no opening
tag). Tool names are not checked against the task's tools: a call to an unknown tool is a content error,
not a structural one.

Pure functions of text; nothing here evaluates model output (``json`` and ``ast`` literals only, through
``rollout.formats``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from rollout.formats import HermesFormat, ToolFormat, get_format
from rollout.types import FormatError

STATES = ("healthy_tool_call", "healthy_response", "polluted", "collapsed")

# Degenerate repetition: a block of >= MIN_REPEATS copies of one n-gram (n <= MAX_PERIOD units) that
# spans >= MIN_SPAN units (so a single unit must repeat 24 times, a 6-unit phrase 4 times).
MAX_PERIOD, MIN_REPEATS, MIN_SPAN = 64, 4, 24
_UNITS = re.compile(r"<\|[^|\s]{1,24}\|>|</?[A-Za-z_]{1,24}>|\w+|[^\w\s]")
# Markup or call syntax that has no place in a plain-text reply, in any of the formats.
_RESIDUE = re.compile(r"<\|[a-z_]{1,24}\|>|</?tool_(?:call|response)>|</?tools>|\{\s*\"name\"\s*:|\[\s*[A-Za-z_][\w.]*\s*\(")
_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
_NAMED_START = re.compile(r'\s*\[?\s*\{\s*"name"\s*:\s*"[A-Za-z_][\w.\-]*"')
_CLOSERS = {"{": "}", "[": "]", "(": ")"}
_OPEN, _CLOSE = HermesFormat._open, HermesFormat._close
_TAGS = re.compile(re.escape(_OPEN) + "|" + re.escape(_CLOSE))
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"\s*")


def degenerate(text: str) -> bool:
    """Whether ``text`` contains a block of one n-gram repeated (see MAX_PERIOD, MIN_REPEATS, MIN_SPAN)."""
    units = _UNITS.findall(text)
    for period in range(1, min(MAX_PERIOD, len(units) // MIN_REPEATS) + 1):
        needed = max(MIN_SPAN, MIN_REPEATS * period)
        run = 0  # consecutive positions i with units[i] == units[i + period]: the block is run + period long
        for i in range(len(units) - period):
            run = run + 1 if units[i] == units[i + period] else 0
            if run + period >= needed:
                return True
    return False


def close_brackets(text: str, quotes: str = '"') -> str:
    """``text`` up to its first complete bracketed value, with unclosed strings and brackets closed.

    An extra or mismatched closing bracket cuts the text there; a comma before a closing bracket or at the
    end is dropped and a dangling ``key:`` gets ``null``. The result need not parse: the caller tries it.
    """
    out: list[str] = []
    stack: list[str] = []
    quote, escaped = None, False
    for char in text:
        if quote:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in quotes:
            quote = char
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in _CLOSERS.values():
            if not stack or stack[-1] != char:
                break
            _drop_comma(out)
            stack.pop()
            if not stack:
                return "".join(out) + char
        out.append(char)
    else:
        if quote:
            out.append(quote)
    _drop_comma(out)
    if "".join(out[-1:]) == ":":
        out.append(" null")
    return "".join(out) + "".join(reversed(stack))


def _drop_comma(out: list[str]) -> None:
    """Trailing whitespace and one trailing comma off the characters in ``out``."""
    while out and out[-1].isspace():
        out.pop()
    if out and out[-1] == ",":
        out.pop()
        while out and out[-1].isspace():
            out.pop()


def _json_call(body: str) -> bool:
    """Whether ``body`` holds a call object (or a list of them) that parses after close_brackets, or one
    whose function name is readable at its start."""
    start = min((i for i in (body.find("{"), body.find("[")) if i != -1), default=-1)
    if start == -1:
        return False
    if _NAMED_START.match(body, start):
        return True
    try:
        value = json.loads(close_brackets(body[start:]))
    except (ValueError, RecursionError):
        return False
    return any(_named(obj) for obj in (value if isinstance(value, list) else [value]))


def _named(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("name"), str) and bool(_NAME.fullmatch(obj["name"]))
            and isinstance(obj.get("arguments", {}), dict))


def _hermes_bodies(text: str) -> list[str]:
    """What follows each ``<tool_call>`` up to the next tag, and what precedes an unopened ``</tool_call>``."""
    bodies, opened, position = [], False, 0
    for match in _TAGS.finditer(text):
        if opened or match.group() == _CLOSE:
            bodies.append(text[position : match.start()])
        opened, position = match.group() == _OPEN, match.end()
    if opened:
        bodies.append(text[position:])
    return bodies


def recoverable(text: str, fmt: ToolFormat) -> bool:
    """Whether a simple fix (module docstring) turns ``text`` into at least one call of syntax ``fmt``."""
    if fmt.name == "hermes":
        return any(_json_call(body) for body in _hermes_bodies(text))
    if fmt.name == "json":
        return _json_call(text)
    start = text.find("[")
    body = text[start:] if start != -1 else text.strip()
    try:
        calls = fmt.parse(close_brackets(body, quotes="\"'"))
    except FormatError:
        return False
    return any(_NAME.fullmatch(call.name) for call in calls)


def _outside_calls(text: str) -> str:
    """The text of a hermes message outside its call blocks (the message is known to parse)."""
    parts, position = [], 0
    while (start := text.find(_OPEN, position)) != -1:
        parts.append(text[position:start])
        _, end = _DECODER.raw_decode(text, _SPACE.match(text, start + len(_OPEN)).end())
        position = _SPACE.match(text, end).end() + len(_CLOSE)
    parts.append(text[position:])
    return "".join(parts)


def classify_message(text: str, fmt: ToolFormat, truncated: bool = False) -> str:
    """The structural state (one of STATES) of one assistant message; ``truncated``: cut at max_new_tokens."""
    if not text.strip() or degenerate(text):
        return "collapsed"
    try:
        calls = fmt.parse(text)
    except FormatError:
        return "polluted" if recoverable(text, fmt) else "collapsed"
    if calls:
        clean = fmt.name != "hermes" or not _outside_calls(text).strip()
        return "healthy_tool_call" if clean and not truncated else "polluted"
    if truncated:
        return "polluted" if recoverable(text, fmt) else "collapsed"
    return "polluted" if _RESIDUE.search(text) else "healthy_response"


def message_states(trajectory) -> list[str]:
    """The state of each assistant message of a rollout Trajectory, in the format it was played in."""
    fmt = get_format(trajectory.format)
    texts = [m["content"] for m in trajectory.messages if m["role"] == "assistant"]
    return [classify_message(text, fmt, cut) for text, cut in zip(texts, trajectory.message_truncated, strict=True)]


def structure_shares(trajectories) -> dict[str, float]:
    """Share of each state over all assistant messages of ``trajectories`` (all 0.0 when there are none)."""
    states = [state for trajectory in trajectories for state in message_states(trajectory)]
    return {state: states.count(state) / max(len(states), 1) for state in STATES}
