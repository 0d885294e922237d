"""Per-row terms of the RL loss that depend on where a sequence came from (``Origin``), and the weight-sync
check that compares the learner's log-probs with the engine's."""

from __future__ import annotations

import torch

from learner.batch import Origin, SequenceBatch


def off_policy_terms(part: SequenceBatch, old: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Which rows of the micro-batch take LUFFY's shaped objective, and the per-token importance weights of
    the rows sampled by another policy than the learner's (``old``: the learner's [B, T] old log-probs of the
    micro-batch): the hint rows', and in a stale batch (``behaviour_importance_cap`` set) the policy rows'."""
    expert, hint = rows_of(part, Origin.EXPERT, old.device), rows_of(part, Origin.HINT, old.device)
    shaped = expert if part.shaped_gamma is not None and expert.any() else None
    hinted = part.hint_importance_cap is not None and bool(hint.any())
    if not hinted and part.behaviour_importance_cap is None:
        return shaped, None
    sampled, weights = padded_sampling(part, old), None
    if hinted:
        # π(y | no hint) / π(y | hint): the learner's recomputed old logprobs over the engine's. In a stale
        # batch that already is the whole ratio to the behaviour policy, so the hint rows take no second one.
        weights = behaviour_weights(old, sampled, hint, part.hint_importance_cap)
    if part.behaviour_importance_cap is not None:
        policy = rows_of(part, Origin.POLICY, old.device)
        behaviour = behaviour_weights(old, sampled, policy, part.behaviour_importance_cap)
        weights = behaviour if weights is None else torch.where(policy[:, None], behaviour, weights)
    return shaped, weights


def rows_of(part: SequenceBatch, origin: Origin, device: torch.device) -> torch.Tensor:
    """[B] bool: the micro-batch's rows of ``origin``."""
    return torch.tensor([part.origin(i) == origin for i in range(len(part))], device=device)


def behaviour_weights(proximal: torch.Tensor, behaviour: torch.Tensor, rows: torch.Tensor, cap: float) -> torch.Tensor:
    """Per token ``min(π_prox / π_behav, cap)`` on ``rows`` ([B] bool), 1 on the other rows ([B, T] each).

    Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization"; AReaL, Fu et al.
    2025): the clipped ratio is taken against the proximal policy π_prox (here the learner's weights before
    the update, whose old logprobs it computes itself), and this weight corrects from the behaviour policy
    that sampled the tokens (the engine's logprobs) to π_prox. It is truncated at ``cap`` as in truncated
    importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
    RL training"): a bounded variance for a small bias, and no token dropped."""
    ratio = torch.clamp(torch.exp(proximal - behaviour), max=cap)
    return torch.where(rows[:, None], ratio, torch.ones_like(ratio))


def behaviour_weight_metrics(part: SequenceBatch, old: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The policy rows' mean weight over their loss tokens and the share of them truncated at the cap (none
    for a fresh batch, or a micro-batch without a policy token)."""
    cap = part.behaviour_importance_cap
    where = mask.bool() & rows_of(part, Origin.POLICY, old.device)[:, None]
    if cap is None or not where.any():
        return {}
    ratio = torch.exp(old - padded_sampling(part, old))[where]
    return {"pipeline/behaviour_weight_mean": float(torch.clamp(ratio, max=cap).mean()),
            "pipeline/behaviour_weight_truncated": float((ratio > cap).float().mean())}


def padded_sampling(part: SequenceBatch, like: torch.Tensor) -> torch.Tensor:
    """The engine's sampling log-probs of the micro-batch as a tensor shaped ``like`` (0 past each row's end)."""
    sampled = torch.zeros_like(like)
    for row, values in enumerate(part.sampling_logprobs):
        sampled[row, : len(values)] = torch.tensor(values, device=like.device)
    return sampled


def sampling_differences(part: SequenceBatch, logprobs: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """|learner − engine| log-prob at the loss tokens (``mask``) of the micro-batch's policy-sampled rows, in
    one transfer (no per-token ``.item()``); none for a micro-batch without the engine's logprobs."""
    if not part.sampling_logprobs:
        return []
    sampled = padded_sampling(part, logprobs)
    where = mask.bool() & rows_of(part, Origin.POLICY, logprobs.device)[:, None]
    return (logprobs[where] - sampled[where]).abs().tolist()


def difference_metrics(differences: list[float]) -> dict[str, float]:
    """rollout_logprob_diff(_max): near zero when the engines hold the learner's weights (fp32 on both sides)."""
    if not differences:
        return {}
    return {"rollout_logprob_diff": sum(differences) / len(differences), "rollout_logprob_diff_max": max(differences)}
