"""Losses: pure functions of tensors. Each returns its value and the metrics it can see.

Alignment convention (the same as ``Trajectory.logprobs`` and ``loss_mask``): position ``t`` of a
per-token tensor belongs to token ``t`` of the sequence, i.e. it is computed from the logits at ``t - 1``.
Position 0 has no predecessor and is always 0; it is a prompt token, so its mask is 0 anyway.

``denominator`` lets data-parallel ranks and gradient-accumulation micro-batches normalise by the token
(or sequence) count of the whole mini-batch, so that summing their losses gives the mini-batch's loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def sequence_logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """[B, T, V] logits and [B, T] ids → [B, T] with ``[:, t] = log p(token_t | tokens_<t)`` and ``[:, 0] = 0``."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, token_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(logprobs, (1, 0))


def token_entropy(logits: Tensor) -> Tensor:
    """[B, T, V] → [B, T]: entropy of the distribution each token was drawn from (``[:, 0] = 0``)."""
    logits = logits[:, :-1].float()
    entropy = torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return torch.nn.functional.pad(entropy, (1, 0))


def aggregate(values: Tensor, mask: Tensor, aggregation: Aggregation = "token-mean",
              denominator: float | None = None) -> Tensor:
    """Reduce per-token values over ``mask`` to a scalar.

    token-mean: sum over all tokens / number of tokens. seq-mean-token-mean: mean over sequences of each
    sequence's token mean. seq-mean-token-sum: mean over sequences of each sequence's token sum.
    ``denominator`` replaces the token count (token-mean) or sequence count (seq-mean-*).
    """
    mask = mask.to(values.dtype)
    if aggregation == "token-mean":
        return (values * mask).sum() / (denominator if denominator is not None else mask.sum().clamp(min=1))
    per_sequence = (values * mask).sum(-1)
    if aggregation == "seq-mean-token-mean":
        per_sequence = per_sequence / mask.sum(-1).clamp(min=1)
    elif aggregation != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose from {', '.join(AGGREGATIONS)}")
    return per_sequence.sum() / (denominator if denominator is not None else max(values.shape[0], 1))


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1))


def grpo_advantages(rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """One scalar per trajectory: reward minus its group's mean, divided by the group's std (GRPO).

    ``scale_by_std=False`` keeps only the mean baseline (Dr. GRPO). The std is the unbiased one; a group of
    one, or a group whose rewards are all equal, gets advantage 0.
    """
    rewards = rewards.double()
    advantages = torch.zeros_like(rewards)
    for group in torch.unique(group_ids):
        members = group_ids == group
        if members.sum() < 2:
            continue
        centred = rewards[members] - rewards[members].mean()
        std = rewards[members].std()
        # equal rewards: centred is already all zero, and 0/0 must not leak in when eps is 0
        advantages[members] = centred / (std + eps) if scale_by_std and std > 0 else centred
    return advantages.float()


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: Aggregation = "token-mean",
    denominator: float | None = None,
    shaped_rows: Tensor | None = None,
    gamma: float = 0.1,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate with asymmetric clip range and optional dual clip (for negative advantages).

    ``advantages`` is [B] (broadcast over each sequence's tokens) or [B, T]. Rows flagged in ``shaped_rows``
    ([B] bool: off-policy sequences, e.g. a ground-truth trajectory in the group) use LUFFY's shaped
    objective ``-A·π/(π+γ)`` instead: no old probabilities, no clipping. ``token_weights`` ([B, T], no
    gradient) scales each token's loss, e.g. a truncated importance weight.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    dual_clipped = torch.zeros_like(losses, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (losses > bound)
        losses = torch.where(advantages < 0, torch.minimum(losses, bound), losses)
    if shaped_rows is not None:
        probs = torch.exp(logprobs)
        losses = torch.where(shaped_rows[:, None], -advantages * probs / (probs + gamma), losses)
    if token_weights is not None:
        losses = losses * token_weights.detach()
    loss = aggregate(losses, loss_mask, aggregation, denominator)
    with torch.no_grad():
        metrics = {
            "clip_fraction": _masked_mean((clipped > unclipped).float(), loss_mask),
            "dual_clip_fraction": _masked_mean(dual_clipped.float(), loss_mask),
            "approx_kl_old": _masked_mean(-log_ratio, loss_mask),
            "ratio_max": float(torch.where(loss_mask.bool(), ratio, 0.0).max()) if loss_mask.any() else 1.0,
        }
    return loss, metrics


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, loss_mask: Tensor, aggregation: Aggregation = "token-mean",
            denominator: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """KL(π‖π_ref) by the k3 estimator ``exp(r) - r - 1`` with ``r = log π_ref - log π`` (unbiased, ≥ 0)."""
    log_ratio = torch.clamp(ref_logprobs - logprobs, -20.0, 20.0)  # exp() of a runaway ratio must stay finite
    k3 = torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, max=10.0)
    loss = aggregate(k3, loss_mask, aggregation, denominator)
    return loss, {"kl_ref": _masked_mean(k3.detach(), loss_mask)}


def entropy_loss(entropy: Tensor, loss_mask: Tensor, aggregation: Aggregation = "token-mean",
                 denominator: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean entropy of the generated tokens' distributions (subtract ``coef ×`` this to encourage exploration)."""
    return aggregate(entropy, loss_mask, aggregation, denominator), {"entropy": _masked_mean(entropy.detach(), loss_mask)}


def sft_loss(logprobs: Tensor, loss_mask: Tensor, aggregation: Aggregation = "token-mean",
             denominator: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Negative log-likelihood of the ``loss_mask`` tokens."""
    loss = aggregate(-logprobs, loss_mask, aggregation, denominator)
    return loss, {"sft_nll": _masked_mean(-logprobs.detach(), loss_mask), "sft_tokens": float(loss_mask.sum())}
