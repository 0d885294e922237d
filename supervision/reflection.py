"""Process Reflection Supervision: a judge reads a trajectory and the ground truth and writes, per turn,
the user's intent and the correct behaviour, the mistake (classified) and its root cause, the corrected
tool-call sequence and, for the error turn, similar scenarios with their correct calls. The reflection
becomes SFT text; the corrected action comes from the erroneous signal.

Two judges, one interface (``review(task, calls, first_failed, failure) -> str``): ``RuleJudge`` diffs the
model's calls against the ground truth (deterministic, offline; the default) and ``LLMJudge`` asks any
OpenAI-compatible endpoint, with answers cached by request.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from learner.batch import SftSample, dialog_sequence
from rollout.envs import Task
from rollout.formats import ToolFormat, render_call
from rollout.types import ToolCall
from rollout.worker import Trajectory
from supervision.config import ReflectionConfig
from supervision.llm import ChatClient, client_metric_names
from supervision.signal import Rollouts, Setup, Signal

JUDGE_METRICS = "supervision/reflection/judge"  # the LLM judge's requests, cache hits and unusable replies
JUDGE_CACHE = "judge_cache.jsonl"  # LLM answers, keyed by request: a resumed or repeated run asks nothing again
MISTAKES = ("wrong_tool", "wrong_argument", "missing_argument", "missing_precondition", "wrong_order",
            "spurious_call", "premature_stop")
PRECONDITION_WORDS = ("login", "authenticate")  # BFCL's session calls: message_login, authenticate_twitter, ...
ROOT_CAUSES = {
    "wrong_tool": "the request was mapped to the wrong function",
    "wrong_argument": "an argument value was not taken from the request or from an earlier result",
    "missing_argument": "a required argument was left out",
    "missing_precondition": "a step the API requires first (a login or authentication) was skipped",
    "wrong_order": "the right functions were called in the wrong order",
    "spurious_call": "a call the request did not ask for was made",
    "premature_stop": "the turn ended before every needed call was made",
}


@dataclass
class TurnReview:
    turn: int
    request: str
    correct: list[ToolCall]
    made: list[ToolCall]
    mistake: str | None
    cause: str


def classify(made: list[ToolCall], correct: list[ToolCall]) -> tuple[str | None, str]:
    """The first mistake in ``made`` against ``correct`` and a one-line account of it (None: the calls match)."""
    if made == correct:
        return None, ""
    if not correct:
        return "spurious_call", f"the request needs no call, but {made[0].name} was called"
    for i, expected in enumerate(correct):
        if i >= len(made):
            return "premature_stop", f"stopped after {i} of {len(correct)} calls; {expected.name} was never called"
        got = made[i]
        if got == expected:
            continue
        if got.name == expected.name:
            missing = [k for k in expected.arguments if k not in got.arguments]
            if missing:
                return "missing_argument", f"{got.name} lacks {', '.join(missing)}"
            wrong = [k for k in expected.arguments if got.arguments[k] != expected.arguments[k]]
            if wrong:
                key = wrong[0]
                return "wrong_argument", (f"{got.name} got {key}={got.arguments[key]!r} instead of "
                                          f"{expected.arguments[key]!r}")
            extra = [k for k in got.arguments if k not in expected.arguments]
            return "wrong_argument", f"{got.name} got an argument it should not have: {extra[0]}"
        later = [c.name for c in correct[i + 1 :]]
        if got.name in later and any(w in expected.name.lower() for w in PRECONDITION_WORDS):
            return "missing_precondition", f"{expected.name} must come before {got.name}"
        if got.name in later:
            return "wrong_order", f"{got.name} was called before {expected.name}"
        return "wrong_tool", f"{got.name} was called where {expected.name} was needed"
    return "spurious_call", f"{made[len(correct)].name} was called after every needed call was made"


def review_turns(task: Task, calls: list[list[list[ToolCall]]], first_failed: int | None) -> list[TurnReview]:
    """One review per turn the model played, up to and including the first failed one."""
    last = len(calls) - 1 if first_failed is None else min(first_failed, len(calls) - 1)
    reviews = []
    for turn in range(last + 1):
        made = [call for step in calls[turn] for call in step]
        mistake, cause = classify(made, task.ground_truth[turn])
        reviews.append(TurnReview(turn, "\n".join(task.turns[turn]), task.ground_truth[turn], made, mistake, cause))
    return reviews


def similar_scenarios(task: Task, function: str, pool: list[Task], k: int) -> list[tuple[str, list[ToolCall]]]:
    """Up to ``k`` other requests whose ground truth calls ``function``, picked deterministically per task."""
    start = zlib.crc32(task.id.encode()) % max(len(pool), 1)
    found = []
    for other in pool[start:] + pool[:start]:
        if other.id == task.id:
            continue
        for texts, truth in zip(other.turns, other.ground_truth):
            if any(c.name == function for c in truth):
                found.append(("\n".join(texts), truth))
                break
        if len(found) == k:
            break
    return found


def _calls_text(calls: list[ToolCall]) -> str:
    return " then ".join(render_call(c) for c in calls) if calls else "no function call (ask for what is missing)"


class RuleJudge:
    """Deterministic reflection from the diff of the model's calls against the ground truth."""

    def __init__(self, config: ReflectionConfig, fmt: ToolFormat, pool: list[Task]):
        self.config, self.fmt, self.pool = config, fmt, pool

    def review(self, task: Task, calls: list[list[list[ToolCall]]], first_failed: int | None, failure: str | None) -> str:
        sections = []
        for r in review_turns(task, calls, first_failed):
            lines = [f"Turn {r.turn + 1}. Request: {r.request}",
                     f"Intent and correct behaviour: {_calls_text(r.correct)}."]
            if r.mistake is None and r.turn != first_failed:
                lines.append("Verdict: correct.")
            else:
                mistake = r.mistake or "wrong_argument"  # same calls, yet the turn failed: a value differed downstream
                cause = r.cause or f"the calls look right but the result differs ({failure})"
                lines += [f"Mistake: {mistake}: {cause}.", f"Root cause: {ROOT_CAUSES[mistake]}.",
                          "Improvement plan:", self.fmt.render(r.correct) if r.correct else "no call"]
                if r.turn == first_failed and self.config.similar_scenarios:
                    function = (r.correct or r.made or [ToolCall("")])[0].name
                    for n, (request, truth) in enumerate(
                            similar_scenarios(task, function, self.pool, self.config.similar_scenarios), 1):
                        lines.append(f"Similar scenario {n}: {request} -> {_calls_text(truth)}")
            sections.append("\n".join(lines))
        return "\n\n".join(sections)


JUDGE_SYSTEM = (
    "You review a tool-using assistant's attempt against the ground truth. For each turn write: the user's "
    "intent and the correct behaviour; the mistake, one of " + ", ".join(MISTAKES) + ", with its root cause; "
    "an improvement plan with the corrected <tool_call> sequence; and for the first failing turn 2-3 similar "
    "scenarios with their correct calls. Plain text, one section per turn."
)


class LLMJudge:
    """The same review from an OpenAI-compatible chat endpoint; answers are cached in ``cache``."""

    def __init__(self, config: ReflectionConfig, cache: Path | None):
        self.client = ChatClient(config.endpoint, cache)

    def review(self, task: Task, calls: list[list[list[ToolCall]]], first_failed: int | None,
               failure: str | None) -> str | None:
        """The endpoint's review; None when its reply is unusable (``client.unusable`` counts it)."""
        attempt = {
            "turns": [{"request": "\n".join(task.turns[t]),
                       "assistant_calls": [render_call(c) for step in calls[t] for c in step] if t < len(calls) else [],
                       "ground_truth": [render_call(c) for c in task.ground_truth[t]]}
                      for t in range(len(task.turns))],
            "first_failed_turn": None if first_failed is None else first_failed + 1,
            "failure": failure,
        }
        return self.client.complete([{"role": "system", "content": JUDGE_SYSTEM},
                                     {"role": "user", "content": json.dumps(attempt, indent=1)}])


def reflection_sample(task: Task, trajectory: Trajectory, text: str, fmt: ToolFormat, tokenizer) -> SftSample:
    """The reflection as an SFT sequence: the tools and the attempt as the prompt, the review as the answer."""
    attempt = "\n".join(
        f"Request {t + 1}: {' '.join(task.turns[t])}\nCalls: {_calls_text([c for s in trajectory.calls[t] for c in s])}"
        for t in range(len(trajectory.calls)))
    messages = [{"role": "system", "content": fmt.render_tools(task.tools)},
                {"role": "user", "content": f"Review this attempt turn by turn.\n{attempt}"},
                {"role": "assistant", "content": text}]
    ids, mask = dialog_sequence(messages, tokenizer)
    return SftSample(Reflection.name, "reflection", task.id, trajectory.result.first_failed_turn, ids, mask)


class Reflection(Signal):
    """Each failure becomes the judge's review of it."""

    name, sft, from_failures = "reflection", True, True
    metric_names = client_metric_names(JUDGE_METRICS)

    def __init__(self, setup: Setup):
        super().__init__(setup)
        config = setup.config.supervision.reflection
        self.judge = (LLMJudge(config, setup.run_dir / JUDGE_CACHE) if config.judge == "llm"
                      else RuleJudge(config, setup.fmt, setup.tasks))

    def failure_samples(self, task: Task, trajectory: Trajectory) -> list[SftSample]:
        """The review as one sample; none when the LLM judge's reply was unusable (counted, the run goes on)."""
        result = trajectory.result
        text = self.judge.review(task, trajectory.calls, result.first_failed_turn, result.failure)
        if text is None:
            return []
        return [reflection_sample(task, trajectory, text, self.setup.fmt, self.setup.tokenizer)]

    def transform(self, rollouts: Rollouts) -> dict[str, float]:
        """The LLM judge's counts so far in this process (the rule judge asks no one: 0)."""
        if isinstance(self.judge, LLMJudge):
            return self.judge.client.metrics(JUDGE_METRICS)
        return dict.fromkeys(self.metric_names, 0.0)
