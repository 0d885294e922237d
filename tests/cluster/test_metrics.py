"""A step's metrics from trajectories built by hand: every value checked against one computed by hand."""

from __future__ import annotations

import math

import pytest

from cluster.metrics import rollout_metrics, step_metrics, time_metrics
from cluster.sampling import Draws
from rollout.envs import EpisodeResult
from rollout.types import ToolCall
from rollout.worker import Trajectory
from supervision.config import StepKind

CALL = '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>'


def _trajectory(group: str, reward: float, replies: list[str], calls: list[list[list[ToolCall]]], generated: int,
                success: bool = False, parse_errors: int = 0, truncated: bool = False,
                cut: list[bool] | None = None) -> Trajectory:
    """One episode: a user message, then ``replies`` (a tool message after each one but the last);
    ``generated`` tokens carry loss_mask 1, behind two prompt tokens."""
    messages = [{"role": "user", "content": "Do it."}]
    for i, reply in enumerate(replies):
        messages.append({"role": "assistant", "content": reply})
        if i < len(replies) - 1:
            messages.append({"role": "tool", "content": "a.txt"})
    result = EpisodeResult(success=success, reward=reward, turns_passed=int(success), turns=1,
                           first_failed_turn=None if success else 0, failure=None if success else "wrong",
                           format_errors=parse_errors, turn_checks=[])
    return Trajectory(task_id=f"task-{group}", group_id=group, sample_index=0, token_ids=[0] * (2 + generated),
                      loss_mask=[0, 0] + [1] * generated, logprobs=[0.0] * (2 + generated), messages=messages,
                      calls=calls, tool_results=[], parse_errors=parse_errors, truncated=truncated, reward=reward,
                      result=result, message_truncated=cut if cut is not None else [False] * len(replies))


def _four() -> list[Trajectory]:
    """Two groups, interleaved: g1 = {a, b} with rewards 1 and 0 (informative), g2 = {c, d} both 0.5 (flat)."""
    ls, cd = ToolCall("ls"), ToolCall("cd", {"folder": "x"})
    a = _trajectory("g1", 1.0, [CALL, "Done."], [[[ls], []]], generated=5, success=True)  # tool call, response
    c = _trajectory("g2", 0.5, [f"Sure {CALL}"], [[[ls, cd]]], generated=4)  # polluted: text around the call
    b = _trajectory("g1", 0.0, [""], [[[]]], generated=2, parse_errors=1, truncated=True)  # collapsed: empty
    d = _trajectory("g2", 0.5, ["Hello"], [[[]]], generated=3, parse_errors=2, truncated=True,
                    cut=[True])  # collapsed: cut at max_new_tokens with no call in it
    return [a, c, b, d]


def test_rollout_metrics_of_two_groups_match_the_values_computed_by_hand():
    metrics = rollout_metrics(_four())
    assert metrics == pytest.approx({
        "reward": 0.5,  # (1 + 0.5 + 0 + 0.5) / 4
        "reward_std": math.sqrt(0.125),  # squared deviations 0.25, 0, 0.25, 0 over 4
        "success": 0.25,  # a only
        "parse_error_rate": 0.5,  # b and d (d's two errors count once)
        "truncated_rate": 0.5,  # b and d
        "response_tokens": 3.5,  # (5 + 4 + 2 + 3) / 4 generated tokens
        "flat_group_share": 0.5,  # g2's rewards are all 0.5, g1's differ
        "turns_per_episode": 1.25,  # 2 + 1 + 1 + 1 assistant messages over 4 episodes
        "tool_calls_per_message": 0.6,  # 1 + 2 + 0 + 0 calls over 5 assistant messages
        "structure/healthy_tool_call": 0.2,  # a's call
        "structure/healthy_response": 0.2,  # a's "Done."
        "structure/polluted": 0.2,  # c
        "structure/collapsed": 0.4,  # b and d
        "broken_share": 0.6,  # b, c and d
    })
    assert list(metrics) == ["reward", "reward_std", "success", "parse_error_rate", "truncated_rate",
                             "response_tokens", "flat_group_share", "turns_per_episode", "tool_calls_per_message",
                             "structure/healthy_tool_call", "structure/healthy_response", "structure/polluted",
                             "structure/collapsed", "broken_share"]


def test_flat_group_share_counts_groups_not_episodes():
    a, c, b, d = _four()
    lone = _trajectory("g3", 0.0, ["Done."], [[[]]], generated=1)  # a group of one is always flat
    assert rollout_metrics([a, c, b, d, lone])["flat_group_share"] == pytest.approx(2 / 3)
    assert rollout_metrics([c, d])["flat_group_share"] == 1.0
    assert rollout_metrics([a, b])["flat_group_share"] == 0.0
    assert rollout_metrics([a, b])["reward_std"] == pytest.approx(0.5)


def test_episodes_without_assistant_messages_give_zero_rates_not_a_division_error():
    silent = _trajectory("g1", 0.0, [], [], generated=0)
    metrics = rollout_metrics([silent, silent])
    assert metrics["turns_per_episode"] == 0.0 and metrics["tool_calls_per_message"] == 0.0
    assert metrics["response_tokens"] == 0.0 and metrics["reward_std"] == 0.0
    assert all(metrics[f"structure/{state}"] == 0.0
               for state in ("healthy_tool_call", "healthy_response", "polluted", "collapsed"))


def test_step_metrics_merge_every_source_and_mark_the_update_that_ran():
    drawn = Draws(trajectories=_four(), metrics={"dynamic_sampling/draws": 2.0})
    metrics = step_metrics(StepKind.RL, drawn, {"supervision/x": 1.0}, {"loss": 0.25}, updated=True, probed=False)
    assert metrics["reward"] == 0.5 and metrics["dynamic_sampling/draws"] == 2.0
    assert metrics["supervision/x"] == 1.0 and metrics["loss"] == 0.25
    assert {k: v for k, v in metrics.items() if k.startswith("update/")} == {
        "update/rl": 1.0, "update/sft": 0.0, "update/combined": 0.0, "update/skipped": 0.0}
    assert metrics["diagnostics/probed"] == 0.0
    empty = step_metrics(StepKind.RL, Draws(), {}, {}, updated=False, probed=True)  # no rollouts: no rollout metrics
    assert "reward" not in empty and empty["update/skipped"] == 1.0 and empty["diagnostics/probed"] == 1.0


def test_time_metrics_sum_the_phases_and_rate_the_update():
    metrics = time_metrics({"rollout": 3.0, "update": 2.0}, trained_tokens=500)
    assert metrics == {"time/rollout_s": 3.0, "time/update_s": 2.0, "time/step_s": 5.0, "tokens_per_s/learner": 250.0}
