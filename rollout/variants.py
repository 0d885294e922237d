"""Plausible mistakes: variants of a turn's ground-truth calls that the environment's checker rejects.

A pretrained model arrives in a new tool environment with generic habits that differ from that
environment's conventions. The bootstrap corpus imitates this: beside the expert dialogs, some turns are
played with one of two habits, so the start policy makes the same kind of mistake often but not always, and
RL has one decision, shared by many tasks, to fix.

- ``shortcut``: a lookup is skipped and the name it looks up is passed where its result belongs (a company
  name for the ticker symbol, a city for its zip code, a person for a user id): an argument in another format.
- ``skip_setup``: a call whose result no later call of the turn uses (``cd``, a login, locking the doors) is
  left out: a skipped precondition.
"""

from __future__ import annotations

import json
from typing import Any

from rollout.types import ToolCall

KINDS = ("shortcut", "skip_setup")


def _scalars(result: str) -> set:
    """Strings and numbers inside a tool result (its JSON decoded where it is JSON)."""
    try:
        return _leaves(json.loads(result))
    except ValueError:
        return {result}


def _leaves(value: Any) -> set:
    if isinstance(value, dict):
        return set().union(*(_leaves(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_leaves(v) for v in value)) if value else set()
    return {value} if isinstance(value, (str, int, float)) and not isinstance(value, bool) else set()


def _uses(call: ToolCall, values: set) -> bool:
    return any(not isinstance(v, (list, dict, bool)) and v in values for v in call.arguments.values())


def shortcut(calls: list[ToolCall], results: list[str]) -> list[ToolCall] | None:
    """Drop every call of the first one-string-argument lookup whose result a later call uses, and pass the
    looked-up name instead of the result; None when the turn has no such lookup."""
    for j, call in enumerate(calls):
        if len(call.arguments) != 1 or not isinstance(next(iter(call.arguments.values())), str):
            continue
        if not any(_uses(later, _scalars(results[j])) for later in calls[j + 1 :]):
            continue
        replace = {}  # result value -> the name it was looked up by, for every lookup of this function
        for k, other in enumerate(calls):
            if other.name == call.name and len(other.arguments) == 1:
                for value in _scalars(results[k]) - {next(iter(other.arguments.values()))}:
                    replace[value] = next(iter(other.arguments.values()))
        return [ToolCall(c.name, {key: replace.get(v, v) if not isinstance(v, (list, dict, bool)) else v
                                  for key, v in c.arguments.items()})
                for c in calls if c.name != call.name]
    return None


def skip_setup(calls: list[ToolCall], results: list[str]) -> list[ToolCall] | None:
    """Leave out the first call (of a turn of two or more) whose result no later call uses."""
    if len(calls) < 2:
        return None
    for j, call in enumerate(calls[:-1]):
        if not any(_uses(later, _scalars(results[j])) for later in calls[j + 1 :]):
            return calls[:j] + calls[j + 1 :]
    return None


def mistaken_calls(calls: list[ToolCall], results: list[str]) -> tuple[str, list[ToolCall]] | None:
    """The turn played with a habit (shortcut first, it is the more specific), or None if neither applies."""
    for kind, variant in (("shortcut", shortcut), ("skip_setup", skip_setup)):
        changed = variant(calls, results)
        if changed is not None:
            return kind, changed
    return None


def habit_shares(text: str, where: str) -> float | tuple[tuple[str, float], ...]:
    """``0.35`` (one share for every kind) or ``shortcut=0.7,skip_setup=0.2`` (a kind not named: 0); a
    ValueError naming ``where`` for anything else."""
    per_kind = "=" in text
    try:
        if per_kind:
            shares = [(kind.strip(), float(share)) for kind, share in (part.split("=") for part in text.split(","))]
        else:
            shares = [("", float(text))]
    except ValueError:
        raise ValueError(f"{where}: expected a share or KIND=SHARE,..., got {text!r}") from None
    for kind, share in shares:
        if kind not in (KINDS if per_kind else ("",)):
            raise ValueError(f"{where}: unknown habit kind {kind!r}; the kinds are {', '.join(KINDS)}")
        if not 0 <= share <= 1:
            raise ValueError(f"{where}: a share is between 0 and 1, got {share}")
    return tuple(shares) if per_kind else shares[0][1]
