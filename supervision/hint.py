"""Hint-based guidance: a hint from the ground truth in the *sampling* prompt of m of the G members.

The learner never sees the hint: ``strip_hint`` puts the hint-free prompt in front of the very tokens the
policy generated (token level; generated text is not re-tokenised), so the update asks how likely those
tokens are without the hint. The old logprobs are recomputed by the learner on the stripped sequence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from rollout.envs import Task
from rollout.formats import render_call
from rollout.worker import EpisodeRequest, Trajectory, hinted
from supervision.llm import ChatClient, client_metric_names
from supervision.signal import Rollouts, Setup, Signal


def template_hint(task: Task, detail: str = "arguments") -> str:
    """Which tools in what order, per user request (``detail="arguments"``: with their arguments)."""
    def turn_text(calls) -> str:
        if not calls:
            return "no function call"
        return " then ".join(render_call(c) if detail == "arguments" else c.name for c in calls)

    parts = [turn_text(calls) for calls in task.ground_truth]
    if len(parts) == 1:
        return f"Hint: {parts[0]}."
    return "Hint: " + "; ".join(f"request {i + 1}: {text}" for i, text in enumerate(parts)) + "."


HINT_CACHE = "hint_cache.jsonl"  # the endpoint's hints, keyed by request (as the judge's answers)
WRITER_METRICS = "supervision/hint/writer"  # the LLM writer's requests, cache hits and unusable replies
HINT_SYSTEM = ("Write one short hint (one or two sentences) that helps an assistant solve this multi-turn tool "
               "task: which functions to call, in what order, with which key arguments. Do not add anything else.")


class LLMHintWriter:
    """Hints written by an OpenAI-compatible endpoint from the task and its ground truth (cached)."""

    def __init__(self, endpoint, cache: Path | None):
        self.client = ChatClient(endpoint, cache)

    def __call__(self, task: Task) -> str | None:
        """The hint; None when the endpoint's reply is unusable (``client.unusable`` counts it)."""
        request = {"requests": ["\n".join(texts) for texts in task.turns],
                   "ground_truth": [[render_call(c) for c in calls] for calls in task.ground_truth]}
        hint = self.client.complete([{"role": "system", "content": HINT_SYSTEM},
                                     {"role": "user", "content": json.dumps(request, indent=1)}])
        return hint and hint.strip()


def add_hints(groups: list[list[EpisodeRequest]], members: int, position: str,
              writer: Callable[[Task], str | None]) -> list[list[EpisodeRequest]]:
    """The first ``members`` requests of every group get the task's hint from ``writer`` (a group whose
    hint is None, an unusable LLM reply, is sampled without one)."""
    decorated = []
    for group in groups:
        hint = writer(group[0].task) if group else None
        decorated.append([replace(r, hint=hint, hint_position=position) if k < members and hint else r
                          for k, r in enumerate(group)])
    return decorated


def strip_hint(trajectory: Trajectory) -> Trajectory:
    """The trajectory as if sampled without the hint: same generated tokens behind the hint-free prompt.

    ``hint`` stays set on the result (it marks the sequence as hint-guided); a second call changes nothing.
    """
    if not trajectory.unhinted_prompt_ids:
        return trajectory
    cut, prompt = trajectory.prompt_length, trajectory.unhinted_prompt_ids
    messages = [dict(m) for m in trajectory.messages]
    where = messages[0 if trajectory.hint_position == "system" else 1]
    added = hinted("", trajectory.hint, trajectory.hint_position)  # the hint and its separating newline
    if trajectory.hint_position == "system":
        where["content"] = where["content"].removesuffix(added)
    else:
        where["content"] = where["content"].removeprefix(added)
    return replace(
        trajectory,
        token_ids=prompt + trajectory.token_ids[cut:],
        loss_mask=[0] * len(prompt) + trajectory.loss_mask[cut:],
        logprobs=[0.0] * len(prompt) + trajectory.logprobs[cut:],
        messages=messages,
        prompt_length=len(prompt),
        unhinted_prompt_ids=[],
    )


class Hint(Signal):
    """A hint from the ground truth in the sampling prompt of the first ``members`` of each group."""

    name = "hint"
    metric_names = ("supervision/hinted_group_share", *client_metric_names(WRITER_METRICS))

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.config = config = setup.config.supervision.hint
        self.writer = (LLMHintWriter(config.endpoint, setup.run_dir / HINT_CACHE) if config.writer == "llm"
                       else partial(template_hint, detail=config.detail))

    def decorate(self, groups: list[list[EpisodeRequest]]) -> list[list[EpisodeRequest]]:
        return add_hints(groups, self.config.members, self.config.position, self.writer)

    def transform(self, rollouts: Rollouts) -> dict[str, float]:
        """Weights the hinted tokens (importance_max); the hinted share is of every sampled group."""
        rollouts.hint_importance_cap = self.config.importance_max
        groups = {t.group_id for t in rollouts.trajectories}
        hinted = {t.group_id for t in rollouts.trajectories if t.hint}
        writer = (self.writer.client.metrics(WRITER_METRICS) if isinstance(self.writer, LLMHintWriter)
                  else dict.fromkeys(client_metric_names(WRITER_METRICS), 0.0))
        return {"supervision/hinted_group_share": len(hinted) / max(len(groups), 1), **writer}
