"""Configuration of the rollout side: which environment, how it is scored, how calls are written."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The rollout settings a RolloutPool's workers and engines are started with; the others may change between
# runs on the same pool (RolloutPool.start).
ENGINE_FIELDS = frozenset({"workers", "worker_cpus", "threads", "worker_gpus", "resources", "max_restarts", "dtype",
                           "max_total_tokens", "kv_cache_gib", "gpu_memory_utilization", "sleep_during_update"})


def thread_counts(threads: int | None, actors: int, reserved_cpus: float) -> tuple[int, int]:
    """torch threads of an engine or learner rank running alone, and beside the other side (one_step_off):
    ``threads`` if set, else the machine's cores shared by the ``actors`` of its side, and its reserved CPUs."""
    if threads:
        return threads, threads
    return max(1, (os.cpu_count() or 1) // actors), max(1, int(reserved_cpus))


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["bfcl", "strict"] = Field(
        "bfcl",
        description="bfcl: BFCL's official multi-turn scoring (turns whose ground truth is empty are not "
        "checked; any public method of the task's classes runs, shown yet or not). strict: additionally fail "
        "any call made in a turn whose ground truth is empty (BFCL's irrelevance rule) and refuse a function "
        "not shown yet (miss_func), failing that turn.",
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
    tool_descriptions: bool = Field(
        False,
        description="Show the tools' descriptions in the prompt. Off for the embedded tiny default (trained "
        "without them: they carry no loss and were a third of its tokens); on for real LLMs (the GPU preset).",
    )
    group_size: int = Field(8, ge=1, description="Episodes sampled per task (the GRPO group size G).")
    workers: int = Field(1, ge=1, description="RolloutWorker actors, each with its own vLLM engine.")
    worker_cpus: float = Field(
        1.0, gt=0, description="Ray CPUs reserved per RolloutWorker (fractions oversubscribe small machines)."
    )
    threads: int | None = Field(
        None, ge=1,
        description="torch threads per engine; default: the machine's cores / workers (the learner is idle while "
        "the engines sample, so they may use its cores), and while a trainer.pipeline one_step_off update runs "
        "beside the sampling, worker_cpus (at least 1).",
    )
    worker_gpus: float = Field(
        0.0, ge=0, description="Ray GPUs per RolloutWorker (0 on CPU; 0.5 shares a GPU with a learner rank)."
    )
    resources: dict[str, float] = Field(
        {}, description="Custom Ray resources per RolloutWorker, e.g. {rollout_node: 1}: workers go only to nodes "
        "started with them (ray start --resources), to keep rollouts off the learner's nodes (docs/cluster.md).")
    max_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a RolloutWorker whose process died (a preempted node, an OOM). The "
        "pool loads the current weights into the new engine and replays the lost episodes with their own seeds, so "
        "the step's trajectories are those of an undisturbed step; one more death stops the run with one line.",
    )
    temperature: float = Field(
        1.0, gt=0.0, description="Sampling temperature of training rollouts (evals are greedy). The learner "
        "scores tokens at the same temperature (logits / T), so the PPO ratio compares like with like.",
    )
    top_p: float = Field(
        1.0, gt=0.0, le=1.0, description="Nucleus sampling mass. Below 1 the samples come from a truncated "
        "distribution that the learner does not reproduce (it scores the full π_T, as verl and OpenRLHF do): "
        "rollout_logprob_diff then shows the gap.",
    )
    max_new_tokens: int = Field(192, ge=1, description="Token limit of one assistant message.")
    max_steps_per_turn: int = Field(
        6, ge=1, description="Assistant messages allowed in one user turn before the turn is closed."
    )
    max_total_tokens: int = Field(
        2048, ge=64, description="Token limit of a whole episode; also the engine's max_model_len."
    )
    max_observation_chars: int = Field(
        1200, ge=16, description="Tool results longer than this are cut (with a marker) before the model sees them."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Engine dtype. fp32 on CPU (bf16 is ~4x slower there); bf16 on GPU."
    )
    kv_cache_gib: int = Field(1, ge=1, description="KV-cache size of a CPU engine in GiB (ignored on GPU).")
    gpu_memory_utilization: float = Field(
        0.45, gt=0, le=1, description="Share of its GPU's memory one engine may take for weights, activations and "
        "KV cache (vLLM's setting; ignored on CPU). 0.45 leaves the rest to the colocated Learner rank; ~0.9 when "
        "engines have GPUs of their own (cluster.placement separate).",
    )
    sleep_during_update: bool = Field(
        False, description="GPU only: put the engines to sleep (vLLM sleep mode level 1: KV cache freed, weights "
        "moved to CPU) while the learner updates, so a colocated learner rank can use the GPU memory.",
    )
