"""Configuration of the learner: the optimiser, the RL (GRPO/PPO) objective, SFT, and data parallelism."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BOOTSTRAP_STEPS = 1400  # optimizer steps of the committed base policy's recipe (launch.py bootstrap --steps)


def warmup_cosine(step: int, warmup: int = 0, decay_steps: int | None = None, floor: float = 0.0) -> float:
    """The factor on the peak learning rate at ``step`` (0-based): linear warmup over the first ``warmup``
    steps, then 1 (``decay_steps`` None) or a cosine from 1 that reaches ``floor`` at step ``decay_steps``.

    The RL learner's schedule, its warmup and bootstrap's recipe are all this one function."""
    if step < warmup:
        return (step + 1) / warmup
    if decay_steps is None:
        return 1.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, decay_steps - warmup)))


class LoraConfig(BaseModel):
    """Low-rank adapters (through peft) instead of full fine-tuning: each adapted weight W acts as
    W + (alpha / rank)·B·A, and only A and B train."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, ge=1, description="Adapter rank r (A is r × in_features, B is out_features × r).")
    alpha: float = Field(
        32.0, gt=0, description="LoRA alpha: the update B·A is scaled by alpha / rank. 32 as in 'LoRA Without "
        "Regret' (2025), whose learning rate (~10× full fine-tuning's) then hardly depends on the rank.",
    )
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], min_length=1,
        description="Names of the linear layers that get adapters (peft's target_modules: a name matches a "
        "module whose name ends with it). Default: every attention and MLP projection of Qwen2/Llama models.",
    )


class LearnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    world_size: int = Field(1, ge=1, description="Learner ranks (one FSDP2 shard each; gloo on CPU, NCCL on GPU).")
    cpus_per_rank: float = Field(1.0, gt=0, description="Ray CPUs reserved per Learner rank.")
    threads: int | None = Field(
        None, ge=1,
        description="torch threads per rank; default: the machine's cores / world_size (rollouts are idle "
        "while the learner updates, so it may use them), and during a trainer.pipeline one_step_off update, "
        "which the engines' sampling overlaps, the rank's cpus_per_rank (at least 1).",
    )
    gpus_per_rank: float = Field(0.0, ge=0, description="GPUs per Learner rank (1 on GPU clusters, 0 on CPU).")
    resources: dict[str, float] = Field(
        {}, description="Custom Ray resources per Learner rank, e.g. {learner_node: 1}: ranks go only to nodes started "
        "with them (ray start --resources), to keep the learner on GPU nodes (docs/cluster.md).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of RL updates (AdamW).")
    lora: LoraConfig | None = Field(
        None, description="Train LoRA adapters instead of every weight (None: full fine-tuning). Rollouts and "
        "checkpoints get the merged weights; checkpoints also hold the adapter in peft's format.",
    )
    sft_lr: float | None = Field(None, gt=0, description="Learning rate of SFT updates (default: lr).")
    warmup_steps: int = Field(
        2, ge=0, description="Linear warmup from 0 to the peak lr over this many optimizer updates actually "
        "applied (a training step whose groups were all flat makes none, so it does not use up the warmup).",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant, or cosine decay over the run's training steps (trainer.total_steps): "
        "a training step makes a varying number of optimizer updates, so only training steps are known ahead.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="AdamW betas (PyTorch's and TRL's default; (0.9, 0.95) measured no different "
        "for RL from the embedded default, see docs).",
    )
    adam_eps: float = Field(
        1e-8, gt=0, description="AdamW epsilon. Far below typical per-parameter gradients (~1e-4) it changes "
        "nothing; near them it shrinks the steps of parameters whose gradients are small and noisy.",
    )
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient norm to this value.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each RL batch.")
    mini_batch_tasks: int = Field(
        2, ge=0, description="Tasks (whole GRPO groups) per RL optimizer step; 0 = the whole batch in one step."
    )
    micro_batch_size: int = Field(
        8, ge=1, description="Sequences per forward/backward pass on one rank (gradient accumulation)."
    )
    sft_mini_batch_size: int = Field(16, ge=1, description="Sequences per SFT optimizer step.")
    clip_low: float = Field(0.2, ge=0, lt=1, description="PPO ratio clip below 1 (ε_low).")
    clip_high: float = Field(0.2, ge=0, description="PPO ratio clip above 1 (ε_high; > ε_low is 'clip-higher').")
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant c > 1 bounding the loss of negative advantages (None: off)."
    )
    behaviour_importance_cap: float = Field(
        2.0, gt=0, description="trainer.pipeline one_step_off: a batch sampled by older weights than the learner's "
        "weights each sampled token's loss by min(π_old/π_sampled, this) (decoupled PPO with TIS truncation; "
        "2 as in TIS). Synchronous steps take no weight.",
    )
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = Field(
        "token-mean", description="How per-token losses reduce to the batch loss."
    )
    kl_coef: float = Field(
        0.0, ge=0, description="Weight of the k3 KL to the frozen reference policy (0 skips the reference model)."
    )
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus (entropy is logged regardless).")
    scale_advantages_by_std: bool = Field(
        True, description="GRPO divides by the group's reward std; false keeps only the mean baseline (Dr. GRPO)."
    )
    skip_flat_groups: bool = Field(
        True,
        description="Leave groups whose rewards are all equal out of the RL update: their advantages are 0, so "
        "they only cost time and dilute the token mean (DAPO's filter, without resampling). A step whose groups "
        "are all flat makes no update. Turn off when an entropy or KL term should see every sequence.",
    )
    param_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype the forward and backward passes compute in (FSDP2 MixedPrecisionPolicy); "
        "the weights and the optimizer stay fp32. bfloat16 on GPU (flash_attention_2 requires it).",
    )
    reduce_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Dtype gradients are reduced across ranks in (fp32 keeps the sum exact enough "
        "with bf16 compute).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in the backward pass instead of keeping "
        "them: about a third more compute for activation memory of one layer (long BFCL episodes on GPU).",
    )
    logits_chunk_tokens: int = Field(
        1024, ge=1, description="Output-layer positions computed at once: the learner never holds more than "
        "this many tokens' vocabulary-sized logits (learner.scoring; 0.6 GB in fp32 at Qwen's 151,936 tokens).",
    )
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="Token budget of a micro-batch besides micro_batch_size: sequences join one "
        "while longest length × count stays within it (None: count only). Bounds the activations of long "
        "episodes on GPU.",
    )
    shared_prefix: bool = Field(
        True, description="Rows of a micro-batch that repeat a prompt (a GRPO group) compute it once: packed "
        "behind one copy of it with a 4D attention mask, in the layout whose linear and attention cost is "
        "least; same values and gradients (learner.prefix). Needs eager or sdpa "
        "attention (flash_attention_2 takes no 4D mask).",
    )
    attn_implementation: str = Field(
        "eager", description="transformers attention for training: eager (fastest for tiny models on CPU), sdpa, "
        "flash_attention_2 (GPU).",
    )

    def lr_scale(self, step: int, total_steps: int) -> float:
        """The schedule's factor on the peak lr at training step ``step`` (1-based) of ``total_steps``."""
        return warmup_cosine(step - 1, decay_steps=total_steps if self.lr_schedule == "cosine" else None)

    @model_validator(mode="after")
    def _shared_prefix_attention(self) -> LearnerConfig:
        if self.shared_prefix and self.attn_implementation not in ("eager", "sdpa"):
            raise ValueError(f"learner.shared_prefix needs eager or sdpa attention, not {self.attn_implementation}: "
                             "set learner.shared_prefix=false")
        return self

    @model_validator(mode="after")
    def _betas_in_range(self) -> LearnerConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self
