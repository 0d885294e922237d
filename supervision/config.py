"""Configuration of supervision: which signals act, and the schedule that mixes SFT into RL."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class StepKind(StrEnum):
    """Which update a training step runs (a str: the values are the names of the update/<kind> metrics)."""

    RL = "rl"  # GRPO on the sampled groups
    SFT = "sft"  # SFT on the signals' samples; samples nothing
    COMBINED = "combined"  # one update on L_rl + λ·L_sft (mode sync)


def _registry() -> dict:
    # Imported here, not above: the signal modules import torch and transformers, and reading a config
    # must stay light (launch.py reports a bad one before any heavy import); only a config that names
    # signals pays for them.
    from supervision.registry import SIGNALS

    return SIGNALS


def _known_signal(name: str) -> str:
    if name not in _registry():
        raise ValueError(f"unknown signal {name!r}; the signals are {', '.join(_registry())}")
    return name


def _signals_with(flag: str, signals: list[str] | None = None) -> list[str]:
    """The signals among ``signals`` (None: all of them) whose class sets ``flag`` (``sft``: contributes
    SFT samples; ``from_failures``: makes them from failed rollouts), in registry order."""
    if signals == []:
        return []
    return [name for name, signal in _registry().items()
            if getattr(signal, flag) and (signals is None or name in signals)]


class Phase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["rl", "sft"] = Field(description="rl: GRPO steps; sft: SFT steps on the signals' samples.")
    steps: int = Field(ge=1, description="Training steps in this phase.")


class SyncConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sft_weight: float = Field(0.1, ge=0, description="λ in L_rl + λ·L_sft (every RL optimizer step).")
    sft_batch_size: int = Field(8, ge=1, description="SFT sequences per training step, split over its RL mini-batches.")


class InterleavedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rl_steps: int = Field(20, ge=1, description="RL steps per cycle (ignored when phases is given).")
    sft_steps: int = Field(5, ge=1, description="SFT steps per cycle (ignored when phases is given).")
    sft_epochs: int = Field(1, ge=1, description="Passes over each SFT step's samples.")
    sft_batch_size: int = Field(16, ge=1, description="SFT sequences per SFT step.")
    sft_lr: float | None = Field(None, gt=0, description="Learning rate of SFT steps (default: learner.sft_lr or lr).")
    phases: list[Phase] | None = Field(
        None, description="An explicit cycle of phases, e.g. [{kind: rl, steps: 10}, {kind: sft, steps: 2}, ...]; "
        "repeats until trainer.total_steps.",
    )

    def cycle(self) -> list[Phase]:
        return self.phases or [Phase(kind="rl", steps=self.rl_steps), Phase(kind="sft", steps=self.sft_steps)]


class SftThenRlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sft_steps: int = Field(10, ge=1, description="SFT steps before the first RL step.")
    sft_batch_size: int = Field(16, ge=1, description="SFT sequences per SFT step.")


class ExpertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jsonl: str | None = Field(
        None, description="A JSONL file, one {\"messages\": [...]} chat per line, instead of the ground truth of "
        "env.train_split rendered as dialogs.",
    )


class OffPolicyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: int = Field(1, ge=1, description="Group members replaced by the ground-truth trajectory (k).")
    when: Literal["no_success", "always"] = Field(
        "no_success", description="Replace only in groups where no sampled member succeeded, or in every group."
    )
    loss: Literal["plain", "shaped"] = Field(
        "plain", description="plain: the clipped policy loss like any member; shaped: LUFFY's π/(π+γ) without "
        "old probabilities or clipping.",
    )
    gamma: float = Field(0.1, gt=0, description="γ of the shaped ratio π/(π+γ).")


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="Model name sent to the endpoint.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (the key itself is never written "
        "to the config, logs or the run directory).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds per request.")
    max_retries: int = Field(3, ge=0, description="Retries of a request that timed out, could not connect or got "
                             "HTTP 408/409/429/5xx, with exponential backoff (or the server's Retry-After).")
    max_tokens: int | None = Field(None, ge=1, description="Longest reply in tokens (None: the endpoint's default).")


class HintConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: int = Field(4, ge=1, description="Group members whose sampling prompt carries the hint (m of G).")
    position: Literal["system", "user"] = Field(
        "user", description="Where the hint goes: the end of the system prompt or the start of the first user message."
    )
    detail: Literal["tools", "arguments"] = Field(
        "arguments", description="tools: which functions in what order; arguments: also their key arguments."
    )
    importance_max: float | None = Field(
        None, gt=0, description="Weight hinted tokens by π(y|no hint)/π(y|hint), truncated at this value (None: off)."
    )
    writer: Literal["template", "llm"] = Field(
        "template", description="template: deterministic text from the ground truth; llm: written by the endpoint."
    )
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="writer llm: where to ask.")

    @model_validator(mode="after")
    def _llm_needs_endpoint(self) -> HintConfig:
        if self.writer == "llm" and not (self.endpoint.base_url and self.endpoint.model):
            raise ValueError("writer 'llm' needs endpoint.base_url and endpoint.model")
        return self


class ErroneousConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    buffer_size: int = Field(32, ge=1, description="Recent failed trajectories kept (oldest dropped first).")


class ReflectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: Literal["rule", "llm"] = Field(
        "rule", description="rule: deterministic diff against the ground truth (offline); llm: an OpenAI-compatible "
        "chat endpoint.",
    )
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig, description="judge llm: where to ask.")
    similar_scenarios: int = Field(2, ge=0, le=3, description="Similar scenarios written for the error turn.")

    @model_validator(mode="after")
    def _llm_needs_endpoint(self) -> ReflectionConfig:
        if self.judge == "llm" and not (self.endpoint.base_url and self.endpoint.model):
            raise ValueError("judge 'llm' needs endpoint.base_url and endpoint.model")
        return self


class WatchedMetric(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, description="Fire while the value is above this (None: no absolute limit).")
    min_jump: float = Field(0.0, ge=0, description="A k·σ jump must also be at least this far above the running "
                            "mean (keeps a metric that sat at 0 from firing on its first small blip).")


def _default_watch() -> dict[str, WatchedMetric]:
    # Not control/call_open/tool_call/*: one message that loops "<tool_call>\n<tool_call>\n..." to
    # max_new_tokens puts p ~ 1 at many call_open positions, so that metric is high in healthy steps too.
    # structure/polluted: from the headroom default, RL at lr 1e-3 collapses into calls in another syntax
    # (python lists in hermes episodes), polluted, not collapsed. The thresholds sit between healthy and
    # collapsed runs (measurements: docs/supervision.md, Alarm). broken_share (their sum): one run of the
    # paper sweep sat at ~25 % collapsed + ~25 % polluted for six steps, under both thresholds
    # (docs/paper-results.md, the alarm's default watch).
    return {
        "control/call_open/im_end/max": WatchedMetric(threshold=0.5, min_jump=0.2),
        "structure/collapsed": WatchedMetric(threshold=0.3, min_jump=0.1),
        "structure/polluted": WatchedMetric(threshold=0.3, min_jump=0.1),
        "broken_share": WatchedMetric(threshold=0.3, min_jump=0.1),
    }


class AlarmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the detector over every step's metrics (alarm, alarm/<reason>).")
    watch: dict[str, WatchedMetric] = Field(
        default_factory=_default_watch, description="Metric name -> rule; a step fires when a watched metric "
        "is above its threshold or jumps by k_sigma σ (and min_jump) above its running mean. Setting it replaces "
        "the defaults; a metric missing from a step (e.g. control/ keys on an SFT step) is skipped.",
    )
    k_sigma: float = Field(4.0, gt=0, description="Jump rule: fire when value − mean > k_sigma · std (running EMA).")
    warmup_steps: int = Field(5, ge=1, description="Observations of a metric before its jump and drop rules act.")
    ema_weight: float = Field(0.1, gt=0, le=1, description="Weight of the newest value in the running mean and "
                              "variance (the first 1/ema_weight observations are averaged plainly).")
    success_drop: float | None = Field(
        0.2, gt=0, le=1, description="Fire when the sampled success falls more than this, and more than k_sigma "
        "running σ, below its running mean (None: off).",
    )


class AdaptiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sft_steps: int = Field(3, ge=1, description="SFT steps after an alarm (from the SFT signals), then RL again.")
    sft_batch_size: int = Field(16, ge=1, description="SFT sequences per SFT step.")
    rollback: bool = Field(False, description="On an alarm, first reload the last checkpoint taken before it "
                           "(weights and optimizer; the step counter, task order and buffers go on).")
    lr_scale: float = Field(1.0, gt=0, le=1, description="Each alarm multiplies the RL learning rate by this "
                            "(1: unchanged).")


class SupervisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "sft_then_rl", "sync", "interleaved", "adaptive"] = Field(
        "none", description="none: GRPO only; sft_then_rl: SFT steps first; sync: an SFT term in every RL update "
        "(off_policy and hint act inside RL steps in any mode); interleaved: RL phases alternating with SFT phases; "
        "adaptive: RL steps, and an SFT phase after each alarm.",
    )
    signals: list[Annotated[str, AfterValidator(_known_signal)]] = Field(
        default_factory=list, description="Active signals (any subset of supervision.registry.SIGNALS)."
    )
    sync: SyncConfig = Field(default_factory=SyncConfig, description="mode sync.")
    interleaved: InterleavedConfig = Field(default_factory=InterleavedConfig, description="mode interleaved.")
    sft_then_rl: SftThenRlConfig = Field(default_factory=SftThenRlConfig, description="mode sft_then_rl.")
    expert: ExpertConfig = Field(default_factory=ExpertConfig, description="signal expert.")
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig, description="signal off_policy.")
    hint: HintConfig = Field(default_factory=HintConfig, description="signal hint.")
    erroneous: ErroneousConfig = Field(default_factory=ErroneousConfig, description="signal erroneous.")
    reflection: ReflectionConfig = Field(default_factory=ReflectionConfig, description="signal reflection.")
    alarm: AlarmConfig = Field(default_factory=AlarmConfig, description="The collapse detector (every mode).")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig, description="mode adaptive.")

    @model_validator(mode="after")
    def _consistent(self) -> SupervisionConfig:
        if len(set(self.signals)) != len(self.signals):
            raise ValueError("signals: each signal at most once")
        if self.mode == "adaptive" and not self.alarm.enabled:
            raise ValueError("mode 'adaptive' reacts to the alarm: set alarm.enabled=true")
        sft = _signals_with("sft", self.signals)
        if self.mode in ("sft_then_rl", "interleaved", "adaptive") and not sft:
            raise ValueError(f"mode {self.mode!r} has SFT steps: add one of {', '.join(_signals_with('sft'))} to "
                             "signals")
        if self.mode == "none" and sft:
            raise ValueError(f"mode 'none' has no SFT updates: {', '.join(_signals_with('sft'))} need sync, "
                             "interleaved, sft_then_rl or adaptive")
        if self.mode == "sft_then_rl" and _signals_with("from_failures", self.signals):
            ready = [name for name in _signals_with("sft") if name not in _signals_with("from_failures")]
            raise ValueError(f"mode 'sft_then_rl' runs SFT before any rollout: only the {', '.join(ready)} signal "
                             "has data then")
        return self


def step_kind(config: SupervisionConfig, step: int, sft_steps_left: int = 0) -> StepKind:
    """What training step ``step`` (1-based) runs: a pure function of the step, so a resumed run agrees.

    Mode adaptive depends on the alarm instead: ``sft_steps_left`` is the Scheduler's checkpointed count of
    SFT steps still owed after the last alarm (supervision.alarm.AdaptiveState).
    """
    if config.mode == "adaptive":
        return StepKind.SFT if sft_steps_left > 0 else StepKind.RL
    if config.mode == "sft_then_rl":
        return StepKind.SFT if step <= config.sft_then_rl.sft_steps else StepKind.RL
    if config.mode == "sync":
        return StepKind.COMBINED if _signals_with("sft", config.signals) else StepKind.RL
    if config.mode == "interleaved":
        cycle = config.interleaved.cycle()
        position = (step - 1) % sum(phase.steps for phase in cycle)
        for phase in cycle:
            if position < phase.steps:
                return StepKind(phase.kind)
            position -= phase.steps
    return StepKind.RL
