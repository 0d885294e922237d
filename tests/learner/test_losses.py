"""Losses against hand-computed values, masking, and the token alignment against the real chat layout."""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    aggregate,
    entropy_loss,
    grpo_advantages,
    kl_loss,
    policy_loss,
    sequence_logprobs,
    sft_loss,
    token_entropy,
)


def test_sequence_logprobs_are_aligned_with_the_token_they_score():
    # vocabulary of 3; logits at position t-1 score token t
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    ids = torch.tensor([[2, 1, 0]])
    logprobs = sequence_logprobs(logits, ids)
    assert logprobs.shape == (1, 3)
    assert logprobs[0, 0] == 0.0
    assert logprobs[0, 1].item() == pytest.approx(math.log(1 / 3))  # uniform logits at position 0
    assert logprobs[0, 2].item() == pytest.approx(math.log(2 / 4))  # token 0 has weight 2 of 4 at position 1


def test_token_entropy_of_uniform_and_peaked_distributions():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]])
    entropy = token_entropy(logits)
    assert entropy[0, 0] == 0.0
    assert entropy[0, 1].item() == pytest.approx(math.log(4))
    assert entropy[0, 2].item() == pytest.approx(0.0, abs=1e-6)


def test_aggregations_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx((6.0 + 4.0) / 2)
    assert aggregate(values, mask, "token-mean", denominator=10).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(values, mask, "sum")  # type: ignore[arg-type]


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    advantages = grpo_advantages(rewards, groups, eps=0.0)
    std = math.sqrt(((0.75**2) + 3 * (0.25**2)) / 3)  # unbiased std of (1, 0, 0, 0)
    expected = [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0.0, 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, rel=1e-5)
    dr_grpo = grpo_advantages(rewards, groups, scale_by_std=False)
    assert dr_grpo.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0])


def test_shaped_off_policy_rows_and_token_weights_by_hand():
    old = torch.zeros(2, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 0.9], [0.5, 0.25, 0.9]])).requires_grad_(True)
    mask = torch.tensor([[0, 1, 1], [0, 1, 1]])
    advantages = torch.tensor([1.0, 2.0])
    loss, _ = policy_loss(new, old, advantages, mask, shaped_rows=torch.tensor([False, True]), gamma=0.25,
                          token_weights=torch.tensor([[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]]))
    # row 0 (on-policy, clipped PPO): max(-1*0.5, -1*0.8) = -0.5, then -1*0.9 weighted by 0.5
    # row 1 (shaped, ratio-free): -2*p/(p+0.25) for p = 0.25 and 0.9; the old logprobs (ratio 0.25) do not matter
    expected = (-0.5 - 0.5 * 0.9 - 2 * 0.25 / 0.5 - 2 * 0.9 / 1.15) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/d log p of -A p/(p+γ) is -A γ p/(p+γ)², divided by the 4 tokens
    assert new.grad[1, 1].item() == pytest.approx(-2 * 0.25 * 0.25 / 0.5**2 / 4, rel=1e-5)
    assert new.grad[0, 0].item() == 0.0 and new.grad[1, 0].item() == 0.0


def test_rl_batch_skips_flat_groups_whole():
    from types import SimpleNamespace

    from learner.batch import rl_batch

    rewards = {"a": [1.0, 0.0], "b": [0.0, 0.0], "c": [1.0, 1.0], "d": [0.5, 0.0]}
    trajectories = [SimpleNamespace(group_id=g, reward=r, token_ids=[i], loss_mask=[1], logprobs=[0.0])
                    for i, (g, r) in enumerate((g, r) for g, rs in rewards.items() for r in rs)]
    every = rl_batch(trajectories, scale_by_std=False)
    assert every.token_ids == [[i] for i in range(8)]
    assert every.advantages == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.25, -0.25])
    informative = rl_batch(trajectories, scale_by_std=False, skip_flat_groups=True)
    assert informative.token_ids == [[0], [1], [6], [7]]  # groups b and c left out, a and d whole and in order
    assert informative.advantages == pytest.approx([0.5, -0.5, 0.25, -0.25])


def test_policy_loss_clips_asymmetrically_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, and one masked token with an absurd ratio that must not count
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 50.0]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    positive, metrics = policy_loss(new, old, torch.tensor([2.0]), mask, clip_low=0.2, clip_high=0.28)
    # A=2: per token max(-A r, -A clip(r)) = -2*min(1.28, 1.5), -2*0.5 (unclipped is larger), -2*1.1
    assert positive.item() == pytest.approx((-2 * 1.28 - 2 * 0.5 - 2 * 1.1) / 3)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    assert metrics["approx_kl_old"] == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3)
    negative, _ = policy_loss(new, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.28)
    # A=-1: max(r, clip(r)) = 1.5, 0.8, 1.1
    assert negative.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3)


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[10.0, 1.0]]))
    mask = torch.ones(1, 2)
    loss, metrics = policy_loss(new, old, torch.tensor([-1.0]), mask, dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 1.0) / 2)  # ratio 10 → capped at c·|A| = 3
    assert metrics["dual_clip_fraction"] == pytest.approx(0.5)
    unbounded, _ = policy_loss(new, old, torch.tensor([-1.0]), mask)
    assert unbounded.item() == pytest.approx((10.0 + 1.0) / 2)


def test_masked_tokens_contribute_no_gradient():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.125]])).requires_grad_()
    mask = torch.tensor([[0, 1, 0]])
    loss, _ = policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0]), mask)
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 2] == 0 and logprobs.grad[0, 1] != 0


def test_k3_kl_by_hand_and_zero_at_equality():
    logprobs = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    loss, metrics = kl_loss(logprobs, ref, torch.ones(1, 2))
    r = math.log(0.25 / 0.5)
    assert loss.item() == pytest.approx((math.exp(r) - r - 1) / 2)
    assert metrics["kl_ref"] == pytest.approx(loss.item())
    same, _ = kl_loss(logprobs, logprobs, torch.ones(1, 2))
    assert same.item() == 0.0


def test_entropy_and_sft_losses_by_hand():
    entropy = torch.tensor([[9.0, 1.0, 3.0]])
    mask = torch.tensor([[0, 1, 1]])
    value, metrics = entropy_loss(entropy, mask)
    assert value.item() == pytest.approx(2.0) and metrics["entropy"] == pytest.approx(2.0)
    logprobs = torch.log(torch.tensor([[0.9, 0.5, 0.25]]))
    nll, metrics = sft_loss(logprobs, mask, "seq-mean-token-sum")
    assert nll.item() == pytest.approx(math.log(2) + math.log(4))
    assert metrics["sft_tokens"] == 2.0


def test_loss_mask_follows_the_chat_layout(tiny_model_dir):
    """First generated token, the assistant's <|im_end|>, and nothing of the template around it."""
    from rollout.chat import IM_END, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [{"role": "system", "content": "tools"}, {"role": "user", "content": "list files"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    reply_ids = tokenizer.encode("ls()", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(IM_END)]
    ids = torch.tensor([prompt_ids + reply_ids])
    mask = torch.tensor([[0] * len(prompt_ids) + [1] * len(reply_ids)])
    # the last prompt tokens are the generation prompt "<|im_start|>assistant\n": never trained on
    assert tokenizer.decode(prompt_ids[-3:]).startswith("<|im_start|>assistant")
    logits = torch.randn(1, ids.shape[1], len(tokenizer))
    logprobs = sequence_logprobs(logits, ids)
    first = len(prompt_ids)
    # the first generated token is scored by the logits of the generation prompt's last token
    expected = torch.log_softmax(logits[0, first - 1], -1)[reply_ids[0]]
    assert logprobs[0, first].item() == pytest.approx(expected.item(), rel=1e-5)
    loss, metrics = sft_loss(logprobs, mask)
    manual = -sum(torch.log_softmax(logits[0, t - 1], -1)[ids[0, t]] for t in range(first, ids.shape[1])) / len(reply_ids)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert metrics["sft_tokens"] == len(reply_ids)
