"""Per-row terms of the RL loss that depend on where a sequence came from (``Origin``), and the weight-sync
check that compares the learner's log-probs with the engine's."""

from __future__ import annotations

import torch

from learner.batch import Origin, SequenceBatch


def off_policy_terms(part: SequenceBatch, old: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which rows of the micro-batch take LUFFY's shaped objective, and the hint rows' truncated importance
    weights (``old``: the learner's [B, T] old log-probs of the micro-batch)."""
    rows = range(len(part))
    shaped = None
    if part.shaped_gamma is not None and any(part.origin(i) == Origin.EXPERT for i in rows):
        shaped = torch.tensor([part.origin(i) == Origin.EXPERT for i in rows], device=old.device)
    weights = None
    if part.hint_importance_cap is not None and any(part.origin(i) == Origin.HINT for i in rows):
        weights = torch.ones_like(old)
        for i in rows:
            if part.origin(i) == Origin.HINT:
                sampled = torch.tensor(part.sampling_logprobs[i], device=old.device)
                # π(y | no hint) / π(y | hint): the learner's recomputed old logprobs over the engine's
                ratio = torch.exp(old[i, : len(sampled)] - sampled)
                weights[i, : len(sampled)] = torch.clamp(ratio, max=part.hint_importance_cap)
    return shaped, weights


def sampling_differences(part: SequenceBatch, logprobs: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """|learner − engine| log-prob at the loss tokens (``mask``) of the micro-batch's policy-sampled rows, in
    one transfer (no per-token ``.item()``); none for a micro-batch without the engine's logprobs."""
    if not part.sampling_logprobs:
        return []
    sampled = torch.zeros_like(logprobs)
    for row, values in enumerate(part.sampling_logprobs):
        sampled[row, : len(values)] = torch.tensor(values, device=logprobs.device)
    policy = torch.tensor([part.origin(i) == Origin.POLICY for i in range(len(part))], device=logprobs.device)
    where = mask.bool() & policy[:, None]
    return (logprobs[where] - sampled[where]).abs().tolist()


def difference_metrics(differences: list[float]) -> dict[str, float]:
    """rollout_logprob_diff(_max): near zero when the engines hold the learner's weights (fp32 on both sides)."""
    if not differences:
        return {}
    return {"rollout_logprob_diff": sum(differences) / len(differences), "rollout_logprob_diff_max": max(differences)}
