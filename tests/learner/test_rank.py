"""The Learner: real FSDP2 over gloo, in-process (1 rank) and as Ray actors (1 vs 2 ranks)."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch
import torch.distributed as dist

from learner.batch import SequenceBatch
from learner.config import LearnerConfig
from learner.group import LearnerGroup
from learner.rank import Learner, free_port
from learner.terms import sampling_differences


def random_batch(vocab: int, n: int, seed: int, with_advantages: bool = True) -> SequenceBatch:
    rng = random.Random(seed)
    ids, masks, advantages = [], [], []
    for _ in range(n):
        prompt, reply = rng.randint(4, 12), rng.randint(2, 10)
        ids.append([rng.randrange(10, vocab) for _ in range(prompt + reply)])
        masks.append([0] * prompt + [1] * reply)
        advantages.append(rng.uniform(-1.5, 1.5))
    return SequenceBatch(ids, masks, advantages if with_advantages else [])


@pytest.fixture
def learner(tiny_model_dir):
    config = LearnerConfig(lr=1e-3, micro_batch_size=2, threads=2, warmup_steps=0)
    instance = Learner(tiny_model_dir, config)
    instance.connect("127.0.0.1", free_port())
    yield instance
    dist.destroy_process_group()


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.state_dict_for_rollout().items()}


def test_rl_update_moves_weights_towards_positive_advantages(learner):
    batch = random_batch(len(learner.tokenizer), 4, seed=0)
    before = _weights(learner)
    logprobs_before = learner.logprobs(batch)
    metrics = learner.rl_update(batch, group_size=4)
    after = _weights(learner)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert metrics["clip_fraction"] == 0.0 and abs(metrics["approx_kl_old"]) < 1e-6  # first step: ratio is 1
    assert metrics["grad_norm"] > 0 and metrics["lr"] == pytest.approx(1e-3)
    logprobs_after = learner.logprobs(batch)
    # sequences with positive advantage became more likely on their generated tokens, negative less
    for ids, mask, advantage, old, new in zip(batch.token_ids, batch.loss_mask, batch.advantages,
                                              logprobs_before, logprobs_after):
        change = sum(n - o for n, o, m in zip(new, old, mask) if m)
        if abs(advantage) > 0.3:
            assert (change > 0) == (advantage > 0)


def test_an_on_policy_mini_batch_takes_its_old_logprobs_from_its_own_forward_pass(learner, monkeypatch):
    """The first mini-batch of a step trains under the weights its batch was sampled with: no separate
    old-logprob pass, and the same update, metrics and weight-sync check as with that pass (two epochs, so
    the second reuses the first's old logprobs)."""
    config = learner.config.model_copy(update={"mini_batch_tasks": 2, "ppo_epochs": 2})
    batch = random_batch(len(learner.tokenizer), 8, seed=3)  # 4 groups of 2: two mini-batches
    batch.sampling_logprobs = [[value + 0.01 for value in row] for row in learner.logprobs(batch)]
    passes = []
    counted = Learner._logprobs
    monkeypatch.setattr(Learner, "_logprobs", lambda self, model, parts: passes.append(len(parts)) or counted(
        self, model, parts))

    def update() -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        learner.start(config, seed=0)
        return learner.rl_update(batch, group_size=2), _weights(learner)

    skipped, skipped_weights = update()
    assert passes == [2]  # the second mini-batch's 4 sequences in micro-batches of 2; none for the first
    prepare = Learner._rl_parts

    def with_every_pass(self, batch, group_size):
        prepared = prepare(self, batch, group_size)
        first = prepared[0]
        first.old_logprobs = self._logprobs(self.model, first.batch)
        first.differences = [value for part, logprobs in zip(first.batch, first.old_logprobs)
                             for value in sampling_differences(part, logprobs, self._tensors(part)[2])]
        return prepared

    monkeypatch.setattr(Learner, "_rl_parts", with_every_pass)
    recomputed, recomputed_weights = update()
    assert skipped == pytest.approx(recomputed, rel=1e-6, abs=1e-7)
    assert skipped["rollout_logprob_diff"] == pytest.approx(0.01, abs=1e-4)
    assert skipped["clip_fraction"] > 0 or skipped["approx_kl_old"] > 0  # epoch 2 trained off the old logprobs
    for name, value in skipped_weights.items():
        torch.testing.assert_close(value, recomputed_weights[name], rtol=1e-5, atol=1e-6)


def test_non_finite_gradient_skips_the_step_and_training_continues(learner):
    batch = random_batch(len(learner.tokenizer), 2, seed=1)
    before = _weights(learner)
    poisoned = SequenceBatch(batch.token_ids, batch.loss_mask, [float("nan"), 1.0])
    metrics = learner.rl_update(poisoned, group_size=2)
    assert metrics["skipped_steps"] == 1.0 and not torch.isfinite(torch.tensor(metrics["grad_norm"]))
    assert all(torch.equal(before[k], v) for k, v in _weights(learner).items())
    metrics = learner.rl_update(batch, group_size=2)
    assert metrics["skipped_steps"] == 1.0 and torch.isfinite(torch.tensor(metrics["grad_norm"]))


def test_sft_update_lowers_the_nll_of_its_batch(learner):
    batch = random_batch(len(learner.tokenizer), 4, seed=2, with_advantages=False)
    first = learner.sft_update(batch)
    for _ in range(5):
        last = learner.sft_update(batch)
    assert last["sft_loss"] < first["sft_loss"] - 0.5


def test_combined_update_scales_the_sft_term_by_lambda(learner):
    sft = random_batch(len(learner.tokenizer), 4, seed=3, with_advantages=False)
    before = _weights(learner)
    alone = learner.sft_update(sft, lr=1e-30)  # measures the gradient at these weights, moves nothing
    assert all((before[k] - v).abs().max() < 1e-20 for k, v in _weights(learner).items())
    # no RL group carried a signal (all flat and skipped): the step is λ·L_sft alone
    combined = learner.combined_update(SequenceBatch([], [], []), sft, 0.25, group_size=2)
    assert combined["grad_norm"] == pytest.approx(0.25 * alone["grad_norm"], rel=1e-4)
    assert combined["sft_loss"] == pytest.approx(alone["sft_loss"], rel=1e-6)


def test_hint_rows_are_importance_weighted_and_expert_rows_skip_the_sync_check(tiny_model_dir):
    learner = Learner(tiny_model_dir, LearnerConfig(lr=1e-30, threads=2, warmup_steps=0))  # gradients only: weights stay put
    learner.connect("127.0.0.1", free_port())
    try:
        batch = random_batch(len(learner.tokenizer), 2, seed=4)
        batch.sampling_logprobs = learner.logprobs(batch)
        plain = learner.rl_update(batch, group_size=2)
        assert plain["rollout_logprob_diff"] < 1e-6
        # sampled with a hint that made every token 4x likelier than the learner (no hint) finds it
        hinted = SequenceBatch(batch.token_ids, batch.loss_mask, batch.advantages,
                               [[lp + math.log(4) for lp in row] for row in batch.sampling_logprobs], ["hint", "hint"])
        assert learner.rl_update(hinted, 2)["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)  # no cap: off
        hinted.hint_importance_cap = 10.0
        assert learner.rl_update(hinted, 2)["grad_norm"] == pytest.approx(0.25 * plain["grad_norm"], rel=1e-4)
        hinted.hint_importance_cap = 0.1
        assert learner.rl_update(hinted, 2)["grad_norm"] == pytest.approx(0.1 * plain["grad_norm"], rel=1e-4)
        # a ground-truth row has no sampling logprobs of its own: it must not count in the weight-sync check
        mixed = SequenceBatch(batch.token_ids, batch.loss_mask, batch.advantages,
                              [[0.0] * len(batch.token_ids[0]), batch.sampling_logprobs[1]], ["expert", "policy"],
                              shaped_gamma=0.1)
        metrics = learner.rl_update(mixed, 2)
        assert metrics["rollout_logprob_diff"] < 1e-6 and math.isfinite(metrics["grad_norm"])
    finally:
        dist.destroy_process_group()


def test_warmup_counts_applied_updates_and_cosine_runs_over_training_steps(learner):
    learner.config = learner.config.model_copy(update={"warmup_steps": 2})
    batch = random_batch(len(learner.tokenizer), 2, seed=1)
    learner.rl_update(SequenceBatch(batch.token_ids, batch.loss_mask, [float("nan"), 1.0]), group_size=2)
    assert learner.rl_update(batch, group_size=2)["lr"] == pytest.approx(0.5e-3)  # the skipped step did not count
    assert learner.rl_update(batch, group_size=2, lr_scale=0.5)["lr"] == pytest.approx(0.5e-3)
    cosine = LearnerConfig(lr_schedule="cosine")
    assert [cosine.lr_scale(step, 4) for step in (1, 2, 3, 4)] == pytest.approx(
        [1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4)])
    assert LearnerConfig().lr_scale(4, 4) == 1.0


@pytest.mark.slow
def test_two_ranks_make_the_same_update_as_one(tiny_model_dir, ray_local):
    """FSDP2 over 2 gloo ranks == 1 rank, for RL (with KL and two mini-batches), SFT and combined updates; the
    same RL update in bf16 mixed precision (to bf16 tolerance); then, in a further run on the same ranks, the
    control-token metrics (every rank's positions are gathered)."""
    from learner.batch import dialog_sequence
    from rollout.chat import load_tokenizer

    config = LearnerConfig(lr=1e-4, micro_batch_size=2, kl_coef=0.1, mini_batch_tasks=1, threads=1, warmup_steps=0)
    tokenizer = load_tokenizer(tiny_model_dir)
    rl = random_batch(len(tokenizer), 5, seed=3)  # odd: rank 1 gets an empty padding sequence
    sft = random_batch(len(tokenizer), 3, seed=4, with_advantages=False)
    replies = ['<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', '<tool_call>\n<|im_end|>', "done"]
    sequences = [dialog_sequence([{"role": "user", "content": "go"}, {"role": "assistant", "content": reply}],
                                 tokenizer) for reply in replies]
    dialogs = SequenceBatch([s[0] for s in sequences], [s[1] for s in sequences], [1.0, -1.0, 0.5])
    control_config = LearnerConfig(lr=1e-4, micro_batch_size=1, mini_batch_tasks=0, threads=1, warmup_steps=0)
    results, controls, mixed = {}, {}, {}
    for world in (1, 2):
        group = LearnerGroup(tiny_model_dir, config.model_copy(update={"world_size": world}), seed=0)
        metrics = group.rl_update(rl, group_size=3)
        group.sft_update(sft)
        group.combined_update(rl, sft, 0.5, group_size=3)
        results[world] = (metrics, group.state_dict_for_rollout())
        # k3 >= 0 always; > 0 because the second mini-batch runs after the first moved the policy off the reference
        assert metrics["kl_ref"] > 0 and metrics["pg_loss"] != 0
        group.start(config.model_copy(update={"world_size": world, "param_dtype": "bfloat16"}), 0)
        mixed[world] = group.rl_update(rl, group_size=3)  # bf16 all-gathers and compute, fp32 reduce-scatter
        group.start(control_config.model_copy(update={"world_size": world}), 0)
        controls[world] = {k: v for k, v in group.rl_update(dialogs, group_size=3).items() if k.startswith("control")}
        group.close()
    assert len(controls[1]) == 84 and set(controls[1]) == set(controls[2])  # 14 token sets, 6 statistics each
    for key, value in controls[1].items():
        assert controls[2][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    (metrics_1, weights_1), (metrics_2, weights_2) = results[1], results[2]
    assert metrics_1["pg_loss"] == pytest.approx(metrics_2["pg_loss"], abs=1e-6)
    # Adam turns float-noise-sized gradients into lr-sized steps, so grad norms agree to float noise
    # accumulated over 2 mini-batches and weights to a fraction of lr
    assert metrics_1["grad_norm"] == pytest.approx(metrics_2["grad_norm"], rel=1e-4)
    worst = max((weights_1[k] - weights_2[k]).abs().max().item() for k in weights_1)
    assert worst < 1e-5
    # mixed precision: the fp32 update's loss and gradient to bf16 tolerance (8 bits of mantissa), on 1 and 2 ranks
    for world in (1, 2):
        for key in ("pg_loss", "grad_norm"):  # kl_ref, a difference of two bf16 log-probs, is bf16 noise
            assert mixed[world][key] == pytest.approx(results[1][0][key], rel=2e-2), (world, key)
    assert mixed[2]["grad_norm"] != results[1][0]["grad_norm"]  # bf16 did compute in bf16
    assert mixed[2]["pg_loss"] == pytest.approx(mixed[1]["pg_loss"], rel=1e-2)


def _gradients(learner: Learner, batch: SequenceBatch) -> dict[str, torch.Tensor]:
    learner.rl_update(batch, group_size=2)
    return {name: p.grad.full_tensor().clone() for name, p in learner.model.named_parameters()}


def test_activation_checkpointing_and_small_logit_chunks_leave_the_gradients_unchanged(learner):
    batch = random_batch(len(learner.tokenizer), 4, seed=5)
    base = learner.config.model_copy(update={"lr": 1e-30, "kl_coef": 0.1, "entropy_coef": 0.01})
    gradients = {}
    for name, update in {"plain": {}, "checkpointed": {"gradient_checkpointing": True},
                         "chunks of 3 tokens": {"logits_chunk_tokens": 3}}.items():
        learner.start(base.model_copy(update=update), seed=0)
        gradients[name] = _gradients(learner, batch)
    assert any(g.abs().max() > 1e-4 for g in gradients["plain"].values())
    for name in ("checkpointed", "chunks of 3 tokens"):
        for key, value in gradients["plain"].items():
            torch.testing.assert_close(gradients[name][key], value, atol=1e-5, rtol=1e-5, msg=f"{name}: {key}")


def test_a_checkpoint_loads_after_a_forward_pass_without_backward(learner, tmp_path):
    """FSDP2 leaves the root module's parameters (embeddings, final norm, output layer) unsharded after a
    forward pass with no backward: loading then failed ("mixed torch.Tensor and DTensor"), as when mode
    adaptive rolled back after a step whose groups were all flat (only the probe's forward ran)."""
    saved = _weights(learner)
    learner.save(str(tmp_path / "step_000001"), {"step": 1})
    batch = random_batch(len(learner.tokenizer), 4, seed=3)
    learner.rl_update(batch, group_size=2)
    learner.control_probe(batch)  # forward only
    assert learner.load(str(tmp_path / "step_000001")) == {"step": 1}
    assert all(torch.equal(saved[name], tensor) for name, tensor in _weights(learner).items())


def test_beside_sampling_a_rank_keeps_to_its_reserved_cpus_unless_threads_are_set():
    before = torch.get_num_threads()
    try:
        default = Learner("unused", LearnerConfig(cpus_per_rank=1), world_size=1)
        assert torch.get_num_threads() == default.threads == os.cpu_count()
        default.share_cores(True)
        assert torch.get_num_threads() == 1
        default.share_cores(False)
        assert torch.get_num_threads() == os.cpu_count()
        explicit = Learner("unused", LearnerConfig(threads=3, cpus_per_rank=1))
        explicit.share_cores(True)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
