"""Configuration of the rollout side: which environment, how it is scored, how calls are written."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["bfcl", "strict"] = Field(
        "bfcl",
        description="bfcl: BFCL's official multi-turn scoring (turns whose ground truth is empty are not "
        "checked). strict: additionally fail any call made in a turn whose ground truth is empty "
        "(BFCL's irrelevance rule).",
    )
    shaping: Literal["binary", "turn_fraction"] = Field(
        "binary",
        description="binary: 1.0 when every turn passes, else 0.0 (the paper's reward). turn_fraction: "
        "turns passed / turns.",
    )
    format_penalty: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Subtracted from the reward once if any assistant message had an unparsable tool call.",
    )


class EnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["bfcl", "synth"] = Field(
        "synth", description="Tool environment: bfcl (BFCL v3 multi-turn) or synth (procedural tasks)."
    )
    train_split: str = Field("train", description="Split the policy trains on.")
    eval_split: str = Field("test", description="Held-out split for periodic evaluation.")
    seed: int = Field(0, description="Seed of the train/test split (bfcl) and of task generation (synth).")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="How episodes are scored.")


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["hermes", "python", "json"] = Field(
        "hermes", description="Tool-call syntax the policy writes and is parsed with (rollout/formats.py)."
    )
    group_size: int = Field(4, ge=1, description="Episodes sampled per task (the GRPO group size G).")
