"""Shared-prefix packing: the layout by hand, and the same log-probs, entropies, kept logits and gradients as
the unpacked rows (the policy's own forward; the Learner's whole update over FSDP2)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist

from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.layout import forward_positions, micro_batches
from learner.models import load_policy
from learner.prefix import pack_shared_prefixes
from learner.rank import Learner, free_port
from learner.scoring import ScoreRequest, install_scoring_head, score


def _tensors(rows: list[list[int]], masks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return SequenceBatch(rows, masks).padded(0)


def test_rows_sharing_a_prompt_pack_into_one_row_with_their_positions_and_segments():
    # two rows with prompt [5, 6, 7] (scored from 3 on: the prefix is [5, 6], each remainder starts at 7),
    # one row of its own
    ids, attention, mask = _tensors([[5, 6, 7, 8, 9], [5, 6, 7, 4], [1, 2, 3]], [[0, 0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1]])
    # unpacked: 3 rows of 5 cost 3 · (5 · 100 + 25) = 1575 pairs at k = 100; packed 2 · (7 · 100 + 49) = 1498
    packing = pack_shared_prefixes(ids, attention, mask.bool(), pairs_per_position=100)
    assert packing.ids.tolist() == [[5, 6, 7, 8, 9, 7, 4], [1, 2, 3, 0, 0, 0, 0]]
    assert packing.positions.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 1, 2, 0, 0, 0, 0]]
    assert packing.segments.tolist() == [[0, 0, 1, 1, 1, 2, 2], [1, 1, 1, -1, -1, -1, -1]]
    assert packing.row.tolist() == [[0] * 5, [0] * 5, [1] * 5]
    assert packing.column.tolist() == [[0, 1, 2, 3, 4], [0, 1, 5, 6, 0], [0, 1, 2, 0, 0]]
    allowed = packing.attention_mask("sdpa", torch.float32)[0, 0]
    assert allowed[5].tolist() == [True, True, False, False, False, True, False]  # 7 of row 2: prefix and itself
    assert allowed[6].tolist() == [True, True, False, False, False, True, True]
    additive = packing.attention_mask("eager", torch.float32)
    assert additive[0, 0, 6, 3] == torch.finfo(torch.float32).min and additive[0, 0, 6, 5] == 0
    assert not packing.attention_mask("sdpa", torch.float32)[1, 0, 1, 2]  # causal within a row of its own
    assert pack_shared_prefixes(ids, attention, mask.bool(), pairs_per_position=10) is None  # 238 > 225
    # no two rows share anything (row 2's loss starts at 1: nothing before it to share): no packing
    assert pack_shared_prefixes(ids[1:], attention[1:], mask[1:].bool(), 1e9) is None
    ids, attention, mask = _tensors([[5, 6], [5, 7]], [[0, 1], [0, 1]])
    assert pack_shared_prefixes(ids, attention, mask.bool(), 1e9) is None


def test_a_long_remainder_keeps_a_row_of_its_own_when_one_row_would_pad_everything_to_its_width():
    # prefix [5, 6]; remainders of 10, 2, 2, 2 tokens. k = 1: unpacked 4 · (12 + 144) = 624; one row of
    # 18: 18 + 324 = 342; under the cap of 12, the long one alone and the three short ones behind one
    # prefix: 2 · (12 + 144) = 312, the cheapest
    long = [5, 6] + list(range(10, 20))
    shorts = [[5, 6, 7, 20 + i] for i in range(3)]
    ids, attention, mask = _tensors([long, *shorts], [[0, 0, 0] + [1] * 9] + [[0, 0, 0, 1]] * 3)
    packing = pack_shared_prefixes(ids, attention, mask.bool(), pairs_per_position=1)
    assert packing.ids.tolist() == [long, [5, 6, 7, 20, 7, 21, 7, 22] + [0] * 4]
    assert packing.row[:, 0].tolist() == [0, 1, 1, 1]
    assert pack_shared_prefixes(ids, attention, mask.bool(), pairs_per_position=1e9).ids.shape == (1, 18)


def _group_batch(seed: int, vocab: int) -> SequenceBatch:
    """Two prompts with three sampled replies each (two of them starting alike) and one sequence of its own."""
    rng = random.Random(seed)
    rows, masks = [], []
    for length in (9, 14):
        prompt = [rng.randrange(10, vocab) for _ in range(length)]
        for reply_length in (3, 7, 5):
            reply = [11, 12] + [rng.randrange(10, vocab) for _ in range(reply_length - 2)]
            rows.append(prompt + reply)
            masks.append([0] * length + [1] * reply_length)
    rows.append([rng.randrange(10, vocab) for _ in range(8)])
    masks.append([0] * 3 + [1] * 5)
    return SequenceBatch(rows, masks, [rng.uniform(-1.5, 1.5) for _ in rows])


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("pairs_per_position", [1e9, 1.0])  # a group in one row; in several
def test_packed_rows_score_and_differentiate_like_the_unpacked_ones(tiny_model_dir, attn_implementation,
                                                                    pairs_per_position):
    model, tokenizer = load_policy(tiny_model_dir, attn_implementation=attn_implementation)
    install_scoring_head(model)
    ids, attention, mask = _group_batch(0, len(tokenizer)).padded(0)
    kept = mask.bool() & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for share in (False, True):
        model.zero_grad()
        scores = score(model, ids, attention, ScoreRequest(ids, mask.bool(), 0.7, True, True, kept, 4, pairs_per_position if share else None))
        ((scores.logprobs * weights).sum() + scores.entropy.sum()).backward()
        rows, columns = kept.nonzero(as_tuple=True)
        results.append([scores.logprobs, scores.entropy, scores.kept_logits[rows, columns - 1],
                        *[p.grad.clone() for p in model.parameters()]])
    assert (results[1][0] != 0).sum() == mask.sum()  # every loss token scored, nothing else
    for unpacked, packed in zip(*results):
        packed, unpacked = packed.detach(), unpacked.detach()
        torch.testing.assert_close(packed, unpacked, rtol=1e-5, atol=1e-5 * float(unpacked.abs().max()))


def test_the_learner_makes_the_same_update_with_and_without_sharing(tiny_model_dir):
    config = LearnerConfig(lr=1e-30, micro_batch_size=4, mini_batch_tasks=0, warmup_steps=0, kl_coef=0.1,
                           entropy_coef=0.01)
    learner = Learner(tiny_model_dir, config)
    learner.connect("127.0.0.1", free_port())
    try:
        batch = _group_batch(1, len(learner.tokenizer))
        runs = []
        for share in (False, True):
            learner.start(config.model_copy(update={"shared_prefix": share}), seed=0)
            metrics = learner.rl_update(batch, group_size=3)
            runs.append((metrics, {n: p.grad.full_tensor().clone() for n, p in learner.model.named_parameters()}))
    finally:
        dist.destroy_process_group()
    (plain, plain_grads), (shared, shared_grads) = runs
    assert shared["shared_prefix_saving"] > 0.2 and plain["shared_prefix_saving"] == 0
    for key in ("pg_loss", "grad_norm", "entropy", "kl", "control/message_start/"):
        matching = [k for k in plain if k.startswith(key)]
        assert matching, key
        for name in matching:
            assert shared[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-6), name
    for name, gradient in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], gradient, rtol=1e-5, atol=1e-5 * float(gradient.abs().max()))


def test_prompts_stay_together_in_micro_batches_and_the_positions_saved_are_counted():
    batch = _group_batch(2, 100).select(list(range(6)))  # prompt A (9 tokens): 12, 16, 14; B (14): 17, 21, 19
    parts = micro_batches(batch, 0, 1, max_sequences=3, max_tokens=None, pad_id=0, prompts_together=True)
    assert sorted(sorted(map(len, part.token_ids)) for part in parts) == [[12, 14, 16], [17, 19, 21]]
    # packed: A's 8 shared tokens + remainders of 4, 8, 6; B's 13 + 4, 8, 6
    assert forward_positions(parts, pairs_per_position=1e9) == {"padding_share": 0.0,
                                                           "shared_prefix_saving": pytest.approx(1 - 57 / 111)}
    assert forward_positions(parts, pairs_per_position=None) == {"padding_share": pytest.approx(1 - 99 / 111),
                                                            "shared_prefix_saving": 0.0}
