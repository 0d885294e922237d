"""Live multi-turn tool episodes over the BFCL API classes, scored the way BFCL scores them.

A task is a list of user turns plus a ground truth (tool calls per turn). An episode holds two sets of
live API instances loaded from the task's initial config: the model's, driven by the calls it makes, and
the ground truth's, driven by the reference calls turn by turn. At the end of each user turn the two are
compared (BFCL's state check and response check), so scoring costs one turn of execution, never a replay.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES

from rollout.config import RewardConfig
from rollout.types import FormatError, ToolCall


@cache
def api_class(name: str) -> type:
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)


def load_instances(classes: list[str], initial_config: dict[str, dict], long_context: bool = False) -> dict[str, Any]:
    """Fresh API instances loaded with (a copy of) their scenario, as BFCL's executor builds them."""
    instances = {}
    for name in classes:
        instance = api_class(name)()
        if name not in STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(initial_config.get(name, {})), long_context=long_context)
        instances[name] = instance
    return instances


@dataclass
class Task:
    """One multi-turn task. ``turns[i]`` are the user messages of turn i; ``ground_truth[i]`` its calls."""

    id: str
    env: str
    category: str
    turns: list[list[str]]
    ground_truth: list[list[ToolCall]]
    classes: list[str]
    initial_config: dict[str, Any]
    tools: list[dict]  # JSON-Schema function specs visible from the first turn
    revealed_tools: dict[int, list[dict]] = field(default_factory=dict)  # turn -> specs that appear then
    long_context: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Step:
    """What one assistant message did: its parsed calls and the observations they produced."""

    calls: list[ToolCall]
    observations: list[str]
    format_error: str | None = None


@dataclass
class TurnCheck:
    passed: bool
    reason: str | None = None  # why the turn failed, for humans and for supervision signals


@dataclass
class EpisodeResult:
    success: bool
    reward: float
    turns_passed: int
    turns: int
    first_failed_turn: int | None
    failure: str | None
    format_errors: int
    turn_checks: list[TurnCheck]


def result_text(value: Any) -> str:
    """A tool result as the model (and BFCL's response check) sees it: str as is, dicts as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


# Arguments the API classes feed to arbitrary-precision arithmetic (mpmath dps, decimal prec, int ** int):
# unbounded values from a model would hang the process, so they are capped far above any real use.
BOUNDED_ARGUMENTS = {"precision": 1000, "exponent": 1000}
MAX_INTEGER = 10**12


def _integers(value: Any):
    if isinstance(value, int) and not isinstance(value, bool):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _integers(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _integers(item)


def signature(method: Any) -> inspect.Signature:
    """The signature of a bound API method, read once per function (``inspect.signature`` is slow)."""
    return _function_signature(method.__func__)


@cache
def _function_signature(function: Any) -> inspect.Signature:
    full = inspect.signature(function)
    return full.replace(parameters=list(full.parameters.values())[1:])  # without ``self``


def bind_arguments(call: ToolCall, method: Any) -> inspect.BoundArguments:
    """The call's arguments bound to ``method``'s signature as Python binds them (positionals first, in
    the signature's order), defaults filled in and deep-copied.

    Raises ValueError (the message is the model's observation) on unknown, missing, surplus or out-of-range
    arguments. Types are left to the method, as in BFCL: its own ground truth sometimes disagrees with
    its schema (a string ``ticket_id`` where the doc says integer). Defaults are copied because some API
    methods have mutable defaults (``post_tweet(tags=[])``) that would otherwise leak across episodes.
    """
    try:
        bound = signature(method).bind(*call.positional, **call.arguments)
    except TypeError as exc:
        raise ValueError(f"error: {call.name}: {exc}") from None
    for key, value in bound.arguments.items():
        limit = BOUNDED_ARGUMENTS.get(key, MAX_INTEGER)
        too_big = any(abs(number) > limit for number in _integers(value))
        if too_big or (key in BOUNDED_ARGUMENTS and isinstance(value, float) and not abs(value) <= limit):
            raise ValueError(f"error: {call.name}: argument {key!r} is out of range (|value| <= {limit})")
    bound.apply_defaults()
    bound.arguments = copy.deepcopy(bound.arguments)
    return bound


def keyword_call(call: ToolCall, method: Any) -> ToolCall:
    """``call`` with its positional arguments named by ``method``'s signature, so that records, the JSON
    syntaxes and supervision see one form; unchanged when they do not bind (dispatch says why)."""
    if not call.positional:
        return call
    try:
        named = signature(method).bind_partial(*call.positional, **call.arguments).arguments
    except TypeError:
        return call
    return ToolCall(call.name, dict(named))


def dispatch(call: ToolCall, method: Any) -> str:
    """Run one call on a bound API method; bad arguments and the method's own errors are observations."""
    if not isinstance(call.arguments, dict) or not all(isinstance(k, str) for k in call.arguments):
        return f"error: {call.name}: arguments must be an object with string keys"
    try:
        bound = bind_arguments(call, method)
    except ValueError as exc:
        return str(exc)
    try:
        # result_text inside: a huge int result fails even to print (Python's int-to-str limit)
        return result_text(method(*bound.args, **bound.kwargs))
    except Exception as exc:  # noqa: BLE001 - the API classes raise on bad input: an observation
        return f"Error during execution: {exc}"


class EnvEpisode:
    """The environment side of one live episode of ``task``: its API instances, tool calls and turn checks
    (the token side is rollout.worker's TokenEpisode). Call ``begin_turn``, then ``act``/``execute`` per
    assistant step, then ``end_turn``; after the last turn ``result`` gives the reward."""

    def __init__(self, task: Task, reward: RewardConfig | None = None):
        self.task = task
        self.reward = reward or RewardConfig()
        self.instances = self._load_instances()
        self._truth_instances = self._load_instances()
        self._methods = public_methods(self.instances)
        self._truth_methods = public_methods(self._truth_instances)
        self.visible_tools: dict[str, dict] = {}
        self.turn = -1
        self.turn_checks: list[TurnCheck] = []
        self.format_errors = 0
        self._turn_calls = 0
        self._turn_refused: list[str] = []
        self._all_results: list[str] = []

    def _load_instances(self) -> dict[str, Any]:
        return load_instances(self.task.classes, self.task.initial_config, self.task.long_context)

    @property
    def done(self) -> bool:
        return len(self.turn_checks) == len(self.task.turns)

    def begin_turn(self) -> list[str]:
        """Open the next user turn: reveal the tools that appear now, return the user messages."""
        if self.turn != len(self.turn_checks) - 1 or self.done:
            raise RuntimeError("begin_turn called while a turn is open or after the last turn")
        self.turn += 1
        if self.turn == 0:
            self.visible_tools = {spec["name"]: spec for spec in self.task.tools}
        for spec in self.task.revealed_tools.get(self.turn, []):
            self.visible_tools[spec["name"]] = spec
        self._turn_calls = 0
        self._turn_refused = []
        return self.task.turns[self.turn]

    def act(self, text: str, fmt: Any) -> Step:
        """Parse an assistant message in format ``fmt`` and execute its calls.

        An unparsable message yields one error observation; a message with no call yields none (it is
        the reply that ends the user turn).
        """
        try:
            calls = fmt.parse(text)
        except FormatError as exc:
            self.format_errors += 1
            return Step(calls=[], observations=[str(exc)], format_error=str(exc))
        calls = [keyword_call(c, self._methods[c.name]) if c.name in self._methods else c for c in calls]
        return Step(calls=calls, observations=self.execute(calls))

    def execute(self, calls: list[ToolCall]) -> list[str]:
        """Run the calls of one assistant step against the model's live instances, in order."""
        if self.turn != len(self.turn_checks):
            raise RuntimeError("execute called outside an open turn")
        results = [self._model_call(call) for call in calls]
        self._turn_calls += len(calls)
        self._all_results.extend(results)
        return results

    def _model_call(self, call: ToolCall) -> str:
        # BFCL's executor runs any public method of the task's classes whether its doc was shown or not
        # (visibility decides only what the prompt shows); strict mode refuses a hidden one and fails the
        # turn for it, so that it never passes a trajectory that BFCL fails
        name = call.name if isinstance(call.name, str) else None
        hidden = self.reward.mode == "strict" and name in self._methods and name not in self.visible_tools
        if hidden:
            self._turn_refused.append(name)
        if name not in self._methods or hidden:
            shown = ", ".join(sorted(self.visible_tools))
            return f"error: unknown function {str(call.name)[:80]!r}; available functions: {shown}"
        return dispatch(call, self._methods[name])

    def end_turn(self) -> TurnCheck:
        """Close the current turn: advance the ground truth one turn and compare (BFCL's checks)."""
        if self.turn != len(self.turn_checks):
            raise RuntimeError("end_turn called outside an open turn")
        truth_calls = self.task.ground_truth[self.turn]
        truth_results = [dispatch(call, self._truth_methods[call.name]) for call in truth_calls]
        check = self._check_turn(truth_calls, truth_results)
        self.turn_checks.append(check)
        return check

    def _check_turn(self, truth_calls: list[ToolCall], truth_results: list[str]) -> TurnCheck:
        if self._turn_refused:
            return TurnCheck(False, f"hidden function: called {self._turn_refused[0]} before the prompt showed it")
        if not truth_calls:
            if self.reward.mode == "strict" and self._turn_calls:
                return TurnCheck(False, "irrelevance: called a tool in a turn that needs none")
            return TurnCheck(True)
        if not self._turn_calls:
            return TurnCheck(False, "empty turn: no tool call where the ground truth has some")
        for name, truth in self._truth_instances.items():
            differences = public_state_differences(self.instances[name], truth)
            if differences:
                return TurnCheck(False, f"state mismatch in {name}: {', '.join(differences)}")
        missing = missing_results(truth_results, self._all_results)
        if missing:
            return TurnCheck(False, f"response mismatch: missing {len(missing)} result(s), e.g. {missing[0][:120]}")
        return TurnCheck(True)

    def play(self, steps: list[list[list[ToolCall]]]) -> list[list[list[str]]]:
        """Play whole turns, ``steps[turn][step] = calls``, from the next turn on; returns each call's result
        as ``[turn][step]``."""
        results = []
        for turn_steps in steps:
            self.begin_turn()
            results.append([self.execute(calls) for calls in turn_steps])
            self.end_turn()
        return results

    def result(self) -> EpisodeResult:
        if not self.done:
            raise RuntimeError("result requested before the last turn ended")
        failed = [i for i, check in enumerate(self.turn_checks) if not check.passed]
        passed = len(self.turn_checks) - len(failed)
        success = not failed
        if self.reward.shaping == "binary":
            reward = float(success)
        else:
            reward = passed / len(self.turn_checks)
        if self.format_errors:
            reward -= self.reward.format_penalty
        return EpisodeResult(
            success=success,
            reward=reward,
            turns_passed=passed,
            turns=len(self.turn_checks),
            first_failed_turn=failed[0] if failed else None,
            failure=self.turn_checks[failed[0]].reason if failed else None,
            format_errors=self.format_errors,
            turn_checks=self.turn_checks,
        )


def public_methods(instances: dict[str, Any]) -> dict[str, Any]:
    """Tool name -> bound method; a later class wins a name clash, as in BFCL's executor."""
    return {name: getattr(instance, name) for instance in instances.values() for name in _public_names(type(instance))}


@cache
def _public_names(cls: type) -> tuple[str, ...]:
    # inspect.getmembers walks every attribute: once per class, not once per episode
    return tuple(name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_"))


def public_state_differences(model: Any, truth: Any) -> list[str]:
    """Public attributes of ``truth`` whose value differs in ``model`` (BFCL's state check)."""
    return [
        name
        for name, value in vars(truth).items()
        if not name.startswith("_") and getattr(model, name, None) != value
    ]


def missing_results(required: list[str], produced: list[str]) -> list[str]:
    """The items of ``required`` not covered by ``produced`` as a multiset (BFCL's response check)."""
    pool = list(produced)
    missing = []
    for item in required:
        if item in pool:
            pool.remove(item)
        else:
            missing.append(item)
    return missing


def run_episode(task: Task, steps: list[list[list[ToolCall]]], reward: RewardConfig | None = None) -> EpisodeResult:
    """Play ``steps[turn][step] = calls`` through a live episode and score it."""
    episode = EnvEpisode(task, reward)
    episode.play(steps)
    return episode.result()


def replay_ground_truth(task: Task, reward: RewardConfig | None = None) -> EpisodeResult:
    """Execute the task's ground truth as if a model had made exactly those calls, one step per turn."""
    return run_episode(task, [[calls] if calls else [] for calls in task.ground_truth], reward)
