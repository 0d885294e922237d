"""Micro-batches: within both limits, the same number on every rank, every sequence exactly once."""

from __future__ import annotations

import pytest

from learner.batch import SequenceBatch
from learner.layout import forward_positions, micro_batches


def _batch(lengths: list[int]) -> SequenceBatch:
    return SequenceBatch([[7] * n for n in lengths], [[0] + [1] * (n - 1) for n in lengths], [0.5] * len(lengths))


def test_a_token_budget_cuts_long_sequences_into_micro_batches_of_their_own():
    batch = _batch([10, 12, 300, 11, 280, 9])
    parts = micro_batches(batch, rank=0, world_size=1, max_sequences=8, max_tokens=600, pad_id=0)
    # sorted by length; 280 joining the four short ones would pad to 5 × 280; 280 and 300 pad to 2 × 300 = 600
    assert [[len(ids) for ids in part.token_ids] for part in parts] == [[9, 10, 11, 12], [280, 300]]
    assert all(max(map(len, p.token_ids)) * len(p) <= 600 or len(p) == 1 for p in parts)
    parts = micro_batches(batch, rank=0, world_size=1, max_sequences=8, max_tokens=100, pad_id=0)
    assert [[len(ids) for ids in part.token_ids] for part in parts] == [[9, 10, 11, 12], [280], [300]]
    # without a budget only the count limits
    parts = micro_batches(batch, rank=0, world_size=1, max_sequences=4, max_tokens=None, pad_id=0)
    assert [len(part) for part in parts] == [4, 2]


def test_every_rank_runs_the_same_number_of_micro_batches_and_each_sequence_runs_once():
    batch = _batch([400, 8, 390, 9, 10, 11, 12])  # rank 0 gets 400, 390, 10, 12; rank 1 gets 8, 9, 11
    shares = [micro_batches(batch, rank, 2, max_sequences=8, max_tokens=500, pad_id=0, by_length=False)
              for rank in (0, 1)]
    assert [len(share) for share in shares] == [3, 3]  # rank 0: [400] [390] [10, 12]; rank 1: [8, 9, 11] + 2 empty
    assert [len(part) for part in shares[1]] == [3, 1, 1] and shares[1][1].tokens() == shares[1][2].tokens() == 0
    seen = sorted(len(ids) for share in shares for part in share for ids, mask in zip(part.token_ids, part.loss_mask)
                  if any(mask))
    assert seen == sorted([400, 8, 390, 9, 10, 11, 12])


def test_padding_share_counts_the_padded_positions_and_sorting_by_length_cuts_them():
    batch = _batch([2, 9, 3, 8])
    unsorted = micro_batches(batch, 0, 1, max_sequences=2, max_tokens=None, pad_id=0, by_length=False)
    by_length = micro_batches(batch, 0, 1, max_sequences=2, max_tokens=None, pad_id=0)
    def padding_share(parts: list[SequenceBatch]) -> float:
        return forward_positions(parts, pairs_per_position=None)["padding_share"]

    assert padding_share(unsorted) == pytest.approx(1 - 22 / (2 * 9 + 2 * 8))  # [2, 9] and [3, 8]
    assert padding_share(by_length) == pytest.approx(1 - 22 / (2 * 3 + 2 * 9))  # [2, 3] and [8, 9]
    assert padding_share([_batch([5, 5])]) == 0.0
