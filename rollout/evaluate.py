"""Greedy evaluation of a policy: the three suites, per-task results, per-category summaries.

Suites (``launch.py eval --suite``, and the periodic eval of a training run):
- ``id``: the training environment's eval split in the trained tool-call syntax;
- ``format_ood``: the same tasks, another syntax in the system prompt and the parser (hermes → python by
  default); the reward is unchanged, the environment scores the calls whatever syntax carried them;
- ``content_ood``: unseen content. synth: the ``ood_content`` split (held-out templates and API classes).
  bfcl: held-out categories: the ``test`` scenarios of every category other than ``env.train_split``
  when that is one category (train on ``base`` → ``miss_param``, ``miss_func``, ``long_context``), else of
  those three non-base categories (then the categories were trained on, only the scenarios are new).
  Categories are interleaved so that the first K tasks mix them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest

from rollout.config import EnvConfig
from rollout.envs import Task, load_tasks
from rollout.pool import RolloutPool
from rollout.worker import Trajectory, group_requests

SUITES = ("id", "format_ood", "content_ood")
OOD_FORMAT = {"hermes": "python", "python": "hermes", "json": "python"}  # trained syntax → tested one


@dataclass(frozen=True)
class Suite:
    name: str  # one of SUITES
    env: str
    split: str  # what the tasks are, for tables
    format: str  # tool-call syntax of its episodes
    tasks: list[Task]
    seed: int = 0  # env.seed the tasks were made with (synth templates are re-derived from it)

    @property
    def prefix(self) -> str:
        """Metric prefix: the id suite keeps the plain ``eval/`` keys."""
        return "eval/" if self.name == "id" else f"eval/{self.name}/"


def bfcl_held_out_categories(train_split: str) -> list[str]:
    from rollout.envs.bfcl import CATEGORIES

    trained = train_split if train_split in CATEGORIES else "base"
    return [category for category in CATEGORIES if category != trained]


def _interleaved(tasks: list[Task], categories: list[str]) -> list[Task]:
    columns = [[t for t in tasks if t.category == category] for category in categories]
    return [t for row in zip_longest(*columns) for t in row if t is not None]


def build_suite(name: str, env: EnvConfig, trained_format: str, limit: int | None = None,
                ood_format: str | None = None, split: str | None = None) -> Suite:
    """The tasks and syntax of one suite; ``split`` replaces the eval split (id and format_ood only)."""
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; choose from {', '.join(SUITES)}")
    if name == "content_ood":
        if split is not None:
            raise ValueError("content_ood has its own tasks: --split applies to the id and format_ood suites")
        if env.name == "synth":
            split, tasks = "ood_content", load_tasks("synth", "ood_content", seed=env.seed)
        else:
            categories = bfcl_held_out_categories(env.train_split)
            split = "test:" + "+".join(categories)
            tasks = _interleaved(load_tasks("bfcl", "test", seed=env.seed), categories)
        return Suite(name, env.name, split, trained_format, tasks[:limit], env.seed)
    split = split or env.eval_split
    tasks = load_tasks(env.name, split, seed=env.seed, limit=limit)
    syntax = (ood_format or OOD_FORMAT[trained_format]) if name == "format_ood" else trained_format
    if name == "format_ood" and syntax == trained_format:
        raise ValueError(f"format_ood needs a syntax other than the trained one ({trained_format})")
    return Suite(name, env.name, split, syntax, tasks, env.seed)


def episode_row(trajectory: Trajectory, task: Task) -> dict:
    """One evaluated episode as a JSON-able row."""
    from rollout.structure import structure_shares

    result = trajectory.result
    return {
        "id": task.id,
        "category": task.category,
        "format": trajectory.format,
        "success": result.success,
        "reward": trajectory.reward,
        "turns_passed": result.turns_passed,
        "turns": result.turns,
        "first_failed_turn": result.first_failed_turn,
        "failure": result.failure,
        "parse_errors": trajectory.parse_errors,
        "truncated": trajectory.truncated,
        "generated_tokens": sum(trajectory.loss_mask),
        "assistant_messages": sum(m["role"] == "assistant" for m in trajectory.messages),
        "structure": structure_shares([trajectory]),
        "messages": trajectory.messages,
    }


def evaluate(pool: RolloutPool, tasks: list[Task], chunk: int, on_progress: Callable[[int], None],
             fmt: str | None = None) -> list[dict]:
    """One greedy episode per task (in syntax ``fmt``, default the pool's), in chunks so progress shows;
    returns one row per task."""
    rows = []
    for start in range(0, len(tasks), chunk):
        batch = tasks[start : start + chunk]
        by_id = {t.id: t for t in batch}
        trajectories = pool.generate(batch, group_size=1, seed=0, temperature=0.0, tag="eval", fmt=fmt)
        rows += [episode_row(trajectory, by_id[trajectory.task_id]) for trajectory in trajectories]
        on_progress(len(batch))
    return rows


def evaluate_suites(pool: RolloutPool, suites: list[Suite]) -> dict[str, float]:
    """Greedy eval of every suite in one batch, so that the long tails of their episodes overlap (one
    batch per suite waits for each suite's slowest episode in turn): each suite's ``suite_metrics``."""
    groups = [group for suite in suites
              for group in group_requests(suite.tasks, 1, seed=0, tag=f"eval-{suite.name}:", fmt=suite.format)]
    trajectories = pool.run_groups(groups, temperature=0.0)
    metrics: dict[str, float] = {}
    for suite in suites:
        by_id = {t.id: t for t in suite.tasks}
        rows = [episode_row(t, by_id[t.task_id]) for t in trajectories if t.group_id.startswith(f"eval-{suite.name}:")]
        metrics.update(suite_metrics(suite, rows))
        if suite.name == "id" and suite.env == "synth":
            metrics.update(template_metrics(suite, rows))
    return metrics


def template_metrics(suite: Suite, rows: list[dict]) -> dict[str, float]:
    """``eval/template/<name>``: greedy success of the tasks that use each synth template, so that a gain
    shows where it happens (a task counts for every template it uses)."""
    from rollout.passk import task_templates_of

    by_id = {t.id: t for t in suite.tasks}
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        for name in task_templates_of(by_id[row["id"]], suite.seed):
            outcomes[name].append(row["success"])
    return {f"eval/template/{name}": sum(wins) / len(wins) for name, wins in sorted(outcomes.items())}


def _structure_mix(rows: list[dict]) -> dict[str, float]:
    """Shares of the structural states over all assistant messages of ``rows`` (each row weighs its count)."""
    messages = sum(r["assistant_messages"] for r in rows)
    states = rows[0]["structure"]
    return {state: sum(r["structure"][state] * r["assistant_messages"] for r in rows) / max(messages, 1)
            for state in states}


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per category (and "all"): tasks, success rate, turn accuracy (mean share of turns passed), share of
    tasks with a parse error, and the structural-state mix of the assistant messages (``structure/<state>``)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["category"]].append(row)
        groups["all"].append(row)
    return {
        name: {
            "tasks": len(members),
            "success": sum(r["success"] for r in members) / len(members),
            "turn_accuracy": sum(r["turns_passed"] / r["turns"] for r in members) / len(members),
            "parse_error_rate": sum(r["parse_errors"] > 0 for r in members) / len(members),
            **{f"structure/{state}": share for state, share in _structure_mix(members).items()},
        }
        for name, members in sorted(groups.items(), key=lambda item: (item[0] == "all", item[0]))
    }


def suite_metrics(suite: Suite, rows: list[dict]) -> dict[str, float]:
    """The suite's "all" summary as metrics: ``eval/success`` (id), ``eval/format_ood/success``, ...; with
    ``eval/tasks``, the n of each rate's standard error (console and report draw it)."""
    summary = summarize(rows)["all"]
    return {suite.prefix + key: float(value) for key, value in summary.items()}
