"""What ``launch.py train`` and ``sweep`` print for a step, and the line that ends a run: plain strings.

A step prints only the keys it has: an SFT step sampled nothing (no reward, no success) and an RL step
trained no SFT loss. Eval success carries its binomial standard error, so that a change between two
evals can be read against the noise of a 100-task eval (±4 points at 20 %).
"""

from __future__ import annotations

import math

from cluster.config import ToolRLConfig
from supervision.config import StepKind

SUITES = {"id": "eval/", "format_ood": "eval/format_ood/", "content_ood": "eval/content_ood/"}
PHASES = ("sample", "supervise", "update", "sync", "observe", "eval", "checkpoint")
SFT_SAMPLES = "supervision/sft_samples/"  # + the signal: a step's SFT sequences from it

# "parse errors" beside "polluted 100 %" read as a contradiction under format_ood: the two count different
# things, and a call in the trained syntax is no parse error of the tested one (the parser reads it as text)
EVAL_CAPTION = ("unparsable call: share of tasks with a call in the tested syntax that its parser rejected; a call "
                "in another syntax is read as plain text, so it shows as polluted, not here. The states are shares "
                "of assistant messages.")


def eval_table(summary: dict[str, dict]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The greedy eval table of ``launch.py eval``: its columns, and a row of cells per category of ``summary``
    (rollout.evaluate.summarize) with the share of assistant messages in each structure state."""
    states = [key.removeprefix("structure/") for key in summary["all"] if key.startswith("structure/")]
    columns = ("category", "tasks", "success", "turn accuracy", "unparsable call", *states)
    return columns, [[name, str(row["tasks"]), f"{row['success']:.1%}", f"{row['turn_accuracy']:.1%}",
                      f"{row['parse_error_rate']:.1%}", *(f"{row[f'structure/{state}']:.1%}" for state in states)]
                     for name, row in summary.items()]


def reward_is_success(config: ToolRLConfig) -> bool:
    """Under the binary reward without a format penalty the sampled reward is the success rate: print one."""
    reward = config.env.reward
    return reward.shaping == "binary" and not reward.format_penalty


def percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def standard_error(success: float, tasks: float) -> float:
    """Binomial standard error of a success rate measured on ``tasks`` tasks."""
    return math.sqrt(success * (1 - success) / tasks)


def eval_success(metrics: dict, prefix: str = "eval/") -> str | None:
    """'24.0 % ± 4.3' for the suite at ``prefix`` (without ± when the task count was not logged)."""
    if prefix + "success" not in metrics:
        return None
    success, tasks = metrics[prefix + "success"], metrics.get(prefix + "tasks")
    error = f" ± {100 * standard_error(success, tasks):.1f}" if tasks else ""
    return percent(success) + error


def _kind(metrics: dict) -> StepKind:
    return next(k for k in StepKind if metrics.get(f"update/{k}"))


def no_update_reason(metrics: dict) -> str:
    """Why a step changed no weight, in words."""
    reasons = []
    if metrics.get("flat_group_share") == 1.0:
        reasons.append("every group's rewards were equal")
    if _kind(metrics) != StepKind.RL and not any(v for k, v in metrics.items() if k.startswith(SFT_SAMPLES)):
        reasons.append("no SFT data yet")
    return "no update: " + ("; ".join(reasons) or "nothing to train on")


def _sampled(metrics: dict, reward_shown: bool) -> str | None:
    if "success" not in metrics:
        return None
    reward = f"reward {metrics['reward']:.3f}, " if reward_shown else ""
    return f"sampled {reward}success {percent(metrics['success'])}"


def _sft(metrics: dict) -> str | None:
    if "sft_loss" not in metrics:
        return None
    counts = [f"{int(v)} {k.removeprefix(SFT_SAMPLES)}" for k, v in metrics.items() if k.startswith(SFT_SAMPLES) and v]
    return f"sft loss {metrics['sft_loss']:.3f}" + (f" ({', '.join(counts)})" if counts else "")


def eval_line(metrics: dict) -> str | None:
    """'eval success id 24.0 % ± 4.3, format_ood ...' for the suites evaluated at this step."""
    shown = [f"{suite} {text}" for suite, prefix in SUITES.items() if (text := eval_success(metrics, prefix))]
    return "eval success " + ", ".join(shown) if shown else None


def step_line(metrics: dict, reward_shown: bool) -> str:
    """One line per step: kind, what it sampled and trained, evals, seconds per phase, alarms."""
    kind = _kind(metrics) + (f", {no_update_reason(metrics)}" if metrics.get("update/skipped") else "")
    parts = [p for p in (_sampled(metrics, reward_shown), _sft(metrics), eval_line(metrics)) if p]
    phases = " ".join(f"{phase} {metrics[f'time/{phase}_s']:.1f}s" for phase in PHASES)
    alarms = [k.removeprefix("alarm/") for k in metrics if k.startswith("alarm/")]
    alarm = f" [bold red]ALARM: {', '.join(alarms)}[/bold red]" if metrics.get("alarm") else ""
    return f"step {metrics['step']} ({kind}): {'; '.join(parts) or 'nothing sampled'} | {phases}{alarm}"


def progress_label(metrics: dict) -> str:
    """The progress bar's description after a step: what that step measured."""
    if "success" in metrics:
        return f"training (sampled success {percent(metrics['success'])})"
    if "sft_loss" in metrics:
        return f"training (sft loss {metrics['sft_loss']:.2f})"
    return "training"


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def final_lines(config: ToolRLConfig, first: dict, last: dict, seconds: float) -> list[str]:
    """The run in words: start → end greedy success of each suite (± its standard error), and the wall time."""
    took = f"in {duration(seconds)}"
    if not any(key.startswith("eval/") for key in last):
        return [f"trained {config.trainer.total_steps} steps {took} (no eval: trainer.eval_every=0)"]
    env, lines = config.env, []
    for suite, prefix in SUITES.items():
        end = eval_success(last, prefix)
        if end is None:
            continue
        start = eval_success(first, prefix)
        where = f"{env.name}/{env.eval_split}" if suite == "id" else suite
        n = int(last.get(prefix + "tasks", 0))
        tasks = f" ({n} task{'s' * (n != 1)})" if n else ""
        change = f"{start} → {end}" if start else f"{end} at step {last['step']}"
        lines.append(f"greedy {where} success {change}{tasks}")
    lines[0] += f" {took}"
    return lines + template_lines(first, last)


def template_lines(first: dict, last: dict) -> list[str]:
    """Greedy success per synth template, start → end, largest gain first: where RL's change happened."""
    prefix = "eval/template/"
    names = sorted((k.removeprefix(prefix) for k in last if k.startswith(prefix)),
                   key=lambda name: (first.get(prefix + name, 0.0) - last[prefix + name], name))
    if not names:
        return []
    width = max(map(len, names))
    return ["greedy success per template:"] + [
        f"  {name:<{width}}  " + (f"{percent(first[prefix + name]):>7} → " if prefix + name in first else "")
        + percent(last[prefix + name]) for name in names]
