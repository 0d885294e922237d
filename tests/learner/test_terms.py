"""The per-row loss terms on a fixed batch, against weights computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from learner.batch import SequenceBatch
from learner.losses import policy_loss
from learner.terms import behaviour_weight_metrics, off_policy_terms


def _batch(**caps) -> tuple[SequenceBatch, torch.Tensor, torch.Tensor]:
    """A policy row whose learner/engine probability ratios are 1.5, 0.25 and 3 at its three loss tokens, a
    ground-truth row (no sampling logprobs of its own) and a hinted row whose ratios are 4, 0.5 and 8; the
    learner's old logprobs, and the loss mask."""
    old = torch.log(torch.tensor([[1.0, 0.6, 0.2, 0.9],
                                  [1.0, 0.5, 0.5, 0.5],
                                  [1.0, 0.8, 0.1, 0.8]]))
    sampled = [[0.0, math.log(0.4), math.log(0.8), math.log(0.3)],
               [0.0, 0.0, 0.0, 0.0],
               [0.0, math.log(0.2), math.log(0.2), math.log(0.1)]]
    mask = [[0, 1, 1, 1]] * 3
    batch = SequenceBatch([[5, 6, 7, 8]] * 3, mask, [1.0, 1.0, 1.0], sampled, ["policy", "expert", "hint"], **caps)
    return batch, old, torch.tensor(mask, dtype=torch.float32)


def test_a_fresh_batch_takes_no_behaviour_weight():
    batch, old, mask = _batch()
    assert off_policy_terms(batch, old) == (None, None)
    assert behaviour_weight_metrics(batch, old, mask) == {}


def test_a_stale_batch_weights_policy_tokens_by_the_truncated_ratio_to_the_engine():
    batch, old, mask = _batch(behaviour_importance_cap=2.0)
    _, weights = off_policy_terms(batch, old)
    # policy row: min(ratio, 2) at its loss tokens (3 truncated to 2); the prompt token's ratio is 1 / 1.
    # The ground-truth row and the hinted row (no hint weight asked for) take none.
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.5, 0.25, 2.0], [1.0] * 4, [1.0] * 4]))
    assert behaviour_weight_metrics(batch, old, mask) == pytest.approx(
        {"pipeline/behaviour_weight_mean": (1.5 + 0.25 + 2.0) / 3, "pipeline/behaviour_weight_truncated": 1 / 3})
    # the weight multiplies each token's clipped surrogate: at ratio π/π_old = 1 and advantage 1 the policy
    # row's token-mean loss is minus its mean weight
    loss, _ = policy_loss(old[:1], old[:1], torch.tensor([1.0]), mask[:1], token_weights=weights[:1])
    assert float(loss) == pytest.approx(-(1.5 + 0.25 + 2.0) / 3, abs=1e-6)


def test_hint_rows_keep_their_own_weight_which_already_divides_by_the_engine():
    batch, old, _ = _batch(behaviour_importance_cap=2.0, hint_importance_cap=5.0)
    _, weights = off_policy_terms(batch, old)
    # the hint row's π(y | no hint) / π_engine(y | hint), truncated at the hint's cap 5, not multiplied again
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.5, 0.25, 2.0], [1.0] * 4, [1.0, 4.0, 0.5, 5.0]]))
