"""JSON-grammar decision points inside tool calls, beside the control tokens of ``learner.diagnostics``.

At toolrl's scale RL collapses with the markup intact and the JSON inside it broken (the key ``"name"``
replaced by an argument key, pairs without values), so the probe also reads these decisions:

- ``call_key``: the key after a call object's opening ``{"``: ``name`` (the key a call starts with) and
  ``argument_key`` (the first token of any argument name of the BFCL APIs, but ``name``'s);
- ``tool_name``: the value after ``"name": "``: ``tool`` (the first token of any BFCL tool name);
- ``arguments_open``: the value after ``"arguments": ``: ``object`` (a token that opens an object);
- ``value_end``: where a string value's closing quote was written: ``end`` (the quote followed by ``,``,
  ``}``, ``]`` or nothing) and ``colon`` (the quote then ``:``, which turns the value into a key).

A call object opens after ``<tool_call>`` (hermes) or after ``[`` or ``},`` in a message without
``<tool_call>`` (the json format's list; a list of objects inside the arguments matches too). The points
are found on text: each assistant message (a run of generated tokens) is the concatenation of its tokens'
texts, regular expressions find the decision characters, and a point is the generated token that starts at
that character (none when the decision falls inside a token). The token sets come from rendering calls with
the tokenizer, so they hold for any vocabulary; a tokenizer whose rendering has no token boundary at a
point has no such point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

HERMES_CALL_KEY = re.compile(r'<tool_call>\s*\{"')
JSON_CALL_KEY = re.compile(r'(?:\[|\},)\s*\{"')
TOOL_NAME = re.compile(r'name"\s*:\s*"')  # read right after a call key
ARGUMENTS_OPEN = re.compile(r'"arguments"\s*:\s*')
STRING_VALUE = re.compile(r':\s*"(?:[^"\\]|\\.)*(?=")')  # up to (not with) the closing quote
VALUE_END = re.compile(r'"\s*(?:[,}\]]|$)')
VALUE_TO_KEY = re.compile(r'"\s*:')
CALL_PREFIX = '<tool_call>\n{"'  # how hermes renders a call up to its first key
NAME_PREFIX = CALL_PREFIX + 'name": "'
POINTS = ("call_key", "tool_name", "arguments_open", "value_end")


def _first_token_at(tokenizer, texts: list[str], text: str, offset: int) -> int | None:
    """The id of the token of ``text`` that starts at character ``offset``; None inside a token."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    index = _starts(ids, texts).get(offset)
    return None if index is None else ids[index]


def _starts(ids: list[int], texts) -> dict[int, int]:
    """Character offset -> index of the first non-empty token starting there, over the joined token texts."""
    starts = {}
    for index, (offset, token) in enumerate(zip(accumulate((len(texts[i]) for i in ids), initial=0), ids)):
        if texts[token]:
            starts.setdefault(offset, index)
    return starts


@dataclass(frozen=True)
class GrammarTokens:
    """The token texts of one tokenizer and the token sets reported at each JSON-grammar point."""

    texts: tuple[str, ...]
    sets: dict[str, dict[str, tuple[int, ...]]]  # point -> set name -> ids

    @classmethod
    def from_tokenizer(cls, tokenizer, texts: list[str], tool_names: list[str],
                       argument_names: list[str]) -> GrammarTokens:
        def first_tokens(prefix: str, names: list[str]) -> tuple[int, ...]:
            found = {_first_token_at(tokenizer, texts, prefix + name, len(prefix)) for name in names}
            return tuple(sorted(found - {None}))

        sets = {}
        name_key = _first_token_at(tokenizer, texts, CALL_PREFIX + 'name"', len(CALL_PREFIX))
        if name_key is not None:
            arguments = tuple(i for i in first_tokens(CALL_PREFIX, argument_names) if i != name_key)
            sets["call_key"] = {"name": (name_key,), "argument_key": arguments}
        if tools := first_tokens(NAME_PREFIX, tool_names):
            sets["tool_name"] = {"tool": tools}
        sets["arguments_open"] = {"object": tuple(i for i, t in enumerate(texts) if t.lstrip().startswith("{"))}
        sets["value_end"] = {"end": tuple(i for i, t in enumerate(texts) if VALUE_END.match(t)),
                             "colon": tuple(i for i, t in enumerate(texts) if VALUE_TO_KEY.match(t))}
        sets = {point: {name: ids for name, ids in named.items() if ids} for point, named in sets.items()}
        return cls(tuple(texts), {point: named for point, named in sets.items() if named})

    def message_points(self, ids: list[int]) -> dict[str, list[int]]:
        """Per point, the indices into ``ids`` (one assistant message) of its decision tokens."""
        text, starts = "".join(self.texts[i] for i in ids), _starts(ids, self.texts)
        keys = (HERMES_CALL_KEY if "<tool_call>" in text else JSON_CALL_KEY).finditer(text)
        key_ends = [match.end() for match in keys]
        characters = {
            "call_key": key_ends,
            "tool_name": [m.end() for end in key_ends if (m := TOOL_NAME.match(text, end))],
            "arguments_open": [match.end() for match in ARGUMENTS_OPEN.finditer(text)],
            "value_end": [match.end() for match in STRING_VALUE.finditer(text)],
        }
        # index 0 is never a point: its logits are scored from the token before the message
        return {point: [i for c in found if (i := starts.get(c))] for point, found in characters.items()
                if point in self.sets}


def grammar_points(token_ids: Tensor, loss_mask: Tensor, grammar: GrammarTokens) -> dict[str, Tensor]:
    """Per point, a [B, L] bool mask of its generated positions (each run of generated tokens is a message)."""
    found = {point: torch.zeros(token_ids.shape, dtype=torch.bool) for point in POINTS if point in grammar.sets}
    generated = loss_mask.bool().cpu()
    padded = torch.nn.functional.pad(generated.to(torch.int8), (1, 1))
    edges = padded.diff(dim=1).nonzero().tolist()  # (row, start) at +1, (row, end) at -1, in order
    ids = token_ids.cpu().tolist()
    for (row, start), (_, end) in zip(edges[::2], edges[1::2]):
        for point, indices in grammar.message_points(ids[row][start:end]).items():
            found[point][row, [start + i for i in indices]] = True
    return {point: mask.to(token_ids.device) for point, mask in found.items()}
