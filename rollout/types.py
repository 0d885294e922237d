"""Typed values that cross module and actor boundaries on the rollout side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call: a function name, keyword arguments and, from the python syntax only,
    positional ones (JSON-like values only). Positionals get their names from the method's signature
    when the call is bound, as Python binds them: a tool spec's property order need not match it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    positional: tuple = ()


class FormatError(ValueError):
    """Model output that is not a valid tool call in the expected syntax.

    ``str(error)`` is written for the model: it becomes the observation of that step.
    """
