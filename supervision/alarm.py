"""The collapse alarm over per-step metrics, and the adaptive schedule's state that reacts to it.

Collapse announces itself in a few metrics before success falls: the probability of ``<|im_end|>`` or of
a second ``<tool_call>`` where the JSON of a call should start (learner diagnostics), and the share of
collapsed messages (rollout.structure). ``Alarm.observe`` fires on a step when a watched metric is above
its threshold, or jumps more than ``k_sigma`` running standard deviations (and ``min_jump``) above its
running mean, or when the sampled success falls ``success_drop`` (and ``k_sigma`` σ) below its running mean. Running means and
variances are exponential moving averages; the first ``1 / ema_weight`` observations are averaged
plainly (the weight of observation n is max(ema_weight, 1/n)), and the jump and drop rules wait for
``warmup_steps`` observations. Every observed value updates the statistics, spikes included, so a
lasting change stops counting as a jump (the threshold still catches a lasting collapse).

Both states are plain JSON and go into checkpoints, so a resumed run fires exactly where the
uninterrupted one did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from supervision.config import AdaptiveConfig, AlarmConfig, StepKind

SUCCESS_DROP = "success_drop"  # the reason name of the success rule (the others are the metric names)


def _updated(stats: dict, value: float, weight: float) -> dict:
    """EMA mean and variance after one more observation (Welford's form of the exponential update)."""
    n = stats["n"] + 1
    alpha = max(weight, 1.0 / n)
    delta = value - stats["mean"]
    return {"n": n, "mean": stats["mean"] + alpha * delta, "var": (1 - alpha) * (stats["var"] + alpha * delta**2)}


class Alarm:
    def __init__(self, config: AlarmConfig):
        self.config = config
        self.stats: dict[str, dict] = {}  # watched metric -> {"n", "mean", "var"}
        self.success: dict = {"n": 0, "mean": 0.0, "var": 0.0}

    def observe(self, metrics: dict[str, float]) -> list[str]:
        """The reasons this step fires (watched metric names, "success_drop"); updates the running stats."""
        config, reasons = self.config, []
        for name, rule in config.watch.items():
            value = metrics.get(name)
            if value is None or not math.isfinite(value):
                continue
            stats = self.stats.get(name, {"n": 0, "mean": 0.0, "var": 0.0})
            above = rule.threshold is not None and value > rule.threshold
            jump = (stats["n"] >= config.warmup_steps
                    and value - stats["mean"] > max(config.k_sigma * math.sqrt(stats["var"]), rule.min_jump))
            if above or jump:
                reasons.append(name)
            self.stats[name] = _updated(stats, value, config.ema_weight)
        success = metrics.get("success")
        if config.success_drop is not None and success is not None:
            # the drop must also exceed k_sigma running σ: with a few tasks a step, sampled success swings
            # 0 <-> 0.5 from the tasks drawn alone (a healthy 2-task sweep run fired on such a swing)
            drop = max(config.success_drop, config.k_sigma * math.sqrt(self.success["var"]))
            if self.success["n"] >= config.warmup_steps and success < self.success["mean"] - drop:
                reasons.append(SUCCESS_DROP)
            self.success = _updated(self.success, success, config.ema_weight)
        return reasons

    def state(self) -> dict:
        return {"stats": self.stats, "success": self.success}

    def restore(self, state: dict) -> None:
        self.stats, self.success = state["stats"], state["success"]


def alarm_metrics(reasons: list[str]) -> dict[str, float]:
    """``alarm`` (1.0 when anything fired, else 0.0) and ``alarm/<reason>`` = 1.0 for each reason."""
    return {"alarm": float(bool(reasons)), **{f"alarm/{reason}": 1.0 for reason in reasons}}


@dataclass
class AdaptiveState:
    """What mode adaptive remembers between steps: SFT steps still owed, and the RL learning-rate factor."""

    sft_steps_left: int = 0
    lr_factor: float = 1.0

    def advance(self, kind: StepKind, fired: bool, config: AdaptiveConfig) -> None:
        """After a step of ``kind``: count an SFT step off; an alarm (re)starts the SFT phase and scales the lr."""
        if kind == StepKind.SFT and self.sft_steps_left:
            self.sft_steps_left -= 1
        if fired:
            self.sft_steps_left = config.sft_steps
            self.lr_factor *= config.lr_scale

    def state(self) -> dict:
        return asdict(self)

    def restore(self, state: dict) -> None:
        self.sft_steps_left, self.lr_factor = state["sft_steps_left"], state["lr_factor"]
