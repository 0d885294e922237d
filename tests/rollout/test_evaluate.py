"""The eval suites: format_ood really swaps the syntax, content_ood really holds content out, and the
periodic eval of a training run logs all three (one short real run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.models import default_policy
from rollout.chat import load_tokenizer
from rollout.config import EnvConfig, RewardConfig, RolloutConfig
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from rollout.envs.bfcl import scenario_index, scenario_split
from rollout.evaluate import build_suite, summarize
from rollout.formats import get_format
from rollout.worker import EpisodeRequest, TokenEpisode

ROOT = Path(__file__).resolve().parents[2]
STATES = ("healthy_tool_call", "healthy_response", "polluted", "collapsed")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_policy())


def _play(task, tokenizer, request_format, replies):
    """A hermes-configured worker's episode, with the request's own syntax, fed ``replies``."""
    request = EpisodeRequest(task, "g0", 0, seed=0, format=request_format)
    episode = TokenEpisode(request, tokenizer, RolloutConfig(format="hermes", max_total_tokens=8192), RewardConfig())
    for reply in replies:
        if episode.done:
            break
        tokens = tokenizer.encode(reply, add_special_tokens=False) + [episode.end_id]
        episode.receive(tokens, [0.0] * len(tokens), finished=True)
    return episode.trajectory()


def test_format_ood_prompts_and_parses_the_other_syntax(tokenizer):
    id_suite = build_suite("id", EnvConfig(), "hermes", limit=5)
    suite = build_suite("format_ood", EnvConfig(), "hermes", limit=5)
    assert (suite.format, id_suite.format) == ("python", "hermes")
    assert [t.id for t in suite.tasks] == [t.id for t in id_suite.tasks] == [f"synth_test_{i}" for i in range(5)]
    task = suite.tasks[0]
    python, hermes = get_format("python", descriptions=False), get_format("hermes", descriptions=False)
    replies = [m["content"] for m in expert_messages(task, python) if m["role"] == "assistant"]
    assert replies[0].startswith("[") and "<tool_call>" not in replies[0]
    trajectory = _play(task, tokenizer, suite.format, replies)
    assert trajectory.format == "python"
    assert trajectory.messages[0]["content"] == python.render_tools(task.tools) != hermes.render_tools(task.tools)
    assert "Python list of calls" in trajectory.messages[0]["content"]
    assert trajectory.calls[0][0] == task.ground_truth[0][: len(trajectory.calls[0][0])]  # parsed, not text
    assert trajectory.result.success and trajectory.parse_errors == 0
    # the same episode without the per-request syntax is hermes: the python reply is no tool call there
    plain = _play(task, tokenizer, None, replies)
    assert plain.format == "hermes" and not plain.result.success and plain.calls[0] == []
    assert build_suite("format_ood", EnvConfig(), "hermes", limit=1, ood_format="json").format == "json"
    assert build_suite("format_ood", EnvConfig(), "python", limit=1).format == "hermes"


def test_content_ood_holds_content_out():
    synth = build_suite("content_ood", EnvConfig(), "hermes", limit=20)
    assert [t.id for t in synth.tasks] == [t.id for t in load_tasks("synth", "ood_content", limit=20)]
    assert synth.split == "ood_content" and synth.format == "hermes"
    train_classes = {c for t in load_tasks("synth", "train") for c in t.classes}
    assert {"TicketAPI", "TravelAPI"} & {c for t in synth.tasks for c in t.classes}
    assert not {"TicketAPI", "TravelAPI"} & train_classes

    bfcl = build_suite("content_ood", EnvConfig(name="bfcl", train_split="base"), "hermes", limit=9)
    assert [t.category for t in bfcl.tasks] == ["miss_param", "miss_func", "long_context"] * 3  # interleaved
    test_scenarios = scenario_split(0)["test"]
    assert all(scenario_index(t) in test_scenarios for t in bfcl.tasks)
    assert bfcl.split == "test:miss_param+miss_func+long_context"
    other = build_suite("content_ood", EnvConfig(name="bfcl", train_split="miss_func"), "hermes")
    assert {t.category for t in other.tasks} == {"base", "miss_param", "long_context"} and len(other.tasks) == 300


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("content_ood", {"split": "test"}, "--split applies to the id and format_ood suites"),
    ("format_ood", {"ood_format": "hermes"}, "needs a syntax other than the trained one (hermes)"),
    ("nope", {}, "unknown eval suite 'nope'"),
])
def test_bad_suite_requests_fail_in_one_line(name, kwargs, message):
    with pytest.raises(ValueError) as info:
        build_suite(name, EnvConfig(), "hermes", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args", [["--suite", "content_ood", "--split", "test"], ["--suite", "format_ood", "--format", "hermes"]])
def test_cli_rejects_a_suite_it_cannot_build_before_starting_ray(args):
    result = subprocess.run([sys.executable, "launch.py", "eval", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error:") and result.stderr.count("\n") == 1


def test_summary_weighs_each_task_by_its_assistant_messages():
    def row(category, success, messages, shares):
        return {"category": category, "success": success, "turns_passed": int(success), "turns": 1,
                "parse_errors": 0, "assistant_messages": messages, "structure": dict(zip(STATES, shares))}

    rows = [row("A", True, 3, (1.0, 0.0, 0.0, 0.0)), row("A", False, 1, (0.0, 0.0, 0.0, 1.0)),
            row("B", False, 0, (0.0, 0.0, 0.0, 0.0))]  # a task that never reached the engine
    summary = summarize(rows)
    assert list(summary) == ["A", "B", "all"]
    assert summary["all"]["structure/healthy_tool_call"] == 0.75 and summary["all"]["structure/collapsed"] == 0.25
    assert summary["B"]["structure/collapsed"] == 0.0 and summary["all"]["success"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_periodic_eval_logs_the_three_suites(scheduler_on, tiny_model_dir, tmp_path):
    from cluster.config import load_config
    from rollout.evaluate import evaluate

    run_dir = tmp_path / "run"
    config = load_config(None, [
        f"trainer.model={tiny_model_dir}", f"trainer.run_dir={run_dir}", "trainer.total_steps=1",
        "trainer.tasks_per_step=1", "rollout.group_size=2", "rollout.max_new_tokens=16", "trainer.eval_every=1",
        "trainer.eval_tasks=3", "trainer.ood_eval_tasks=2", "trainer.save_every=0", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0",
    ])
    scheduler = scheduler_on(config)
    assert [(s.name, s.format, len(s.tasks)) for s in scheduler.eval_suites] == [
        ("id", "hermes", 3), ("format_ood", "python", 2), ("content_ood", "hermes", 2)]
    initial = scheduler.initial_eval()
    step = scheduler.train_step()
    for metrics in (initial, step):
        for prefix in ("eval/", "eval/format_ood/", "eval/content_ood/"):
            assert {prefix + key for key in ("success", "turn_accuracy", "parse_error_rate")} <= metrics.keys()
            assert sum(metrics[f"{prefix}structure/{s}"] for s in STATES) == pytest.approx(1.0)
    # a random policy at 16 tokens a message never ends a message itself: nothing is healthy
    assert initial["eval/structure/healthy_tool_call"] == 0.0
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1] and all("eval/content_ood/success" in r for r in logged)
    # through the Ray workers, a format_ood episode is prompted in python while the pool is configured hermes
    suite = scheduler.eval_suites[1]
    rows = evaluate(scheduler.pool, suite.tasks, chunk=2, on_progress=lambda n: None, fmt=suite.format)
    python = get_format("python", descriptions=False)
    assert [r["format"] for r in rows] == ["python", "python"]
    assert rows[0]["messages"][0]["content"] == python.render_tools(suite.tasks[0].tools)
    scheduler.close()
