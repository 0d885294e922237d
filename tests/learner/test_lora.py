"""learner.lora: adapters train alone under FSDP2 (gloo), rollouts get the merged weights, checkpoints resume."""

from __future__ import annotations

import peft
import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from learner.batch import SequenceBatch
from learner.config import LearnerConfig, LoraConfig
from learner.lora import ADAPTER_DIR
from learner.models import load_policy
from learner.rank import Learner, free_port
from rollout.chat import load_tokenizer
from tests.learner.test_rank import random_batch

CONFIG = LearnerConfig(lr=1e-2, micro_batch_size=2, threads=1, lora=LoraConfig(rank=4), warmup_steps=0)


def in_process(model_dir: str, config: LearnerConfig = CONFIG, seed: int = 0) -> Learner:
    learner = Learner(model_dir, config, seed=seed)
    learner.connect("127.0.0.1", free_port())
    return learner


@pytest.fixture
def learner(tiny_model_dir):
    instance = in_process(tiny_model_dir)
    yield instance
    dist.destroy_process_group()


def raw_weights(learner: Learner) -> dict[str, torch.Tensor]:
    """The model's own parameters, peft's base_layer / lora_ names included."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v.clone() for k, v in get_model_state_dict(learner.model, options=options).items()}


def hf_logprobs(weights: dict[str, torch.Tensor], model_dir: str, batch: SequenceBatch) -> list[torch.Tensor]:
    """What a plain transformers model with ``weights`` gives the batch's tokens."""
    model, _ = load_policy(model_dir)
    model.load_state_dict(weights)
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
                for ids in batch.token_ids]


def test_lora_update_trains_only_the_adapters_and_rollouts_get_the_merged_weights(learner, tiny_model_dir):
    base = load_policy(tiny_model_dir)[0].state_dict()
    adapters = {name for name, p in learner.model.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in name for name in adapters)
    assert sum(len(group["params"]) for group in learner.optimizer.param_groups) == len(adapters)
    # B starts at zero: the engines' first weights are the base model's, under the same names
    initial = learner.state_dict_for_rollout()
    assert set(initial) == set(base) and all(torch.equal(v, base[k]) for k, v in initial.items())

    batch = random_batch(len(learner.tokenizer), 4, seed=0)
    before = raw_weights(learner)
    metrics = learner.rl_update(batch, group_size=4)
    after = raw_weights(learner)
    assert metrics["grad_norm"] > 0
    assert all(torch.equal(before[k], after[k]) for k in before if ".lora_" not in k)  # the base is bit-identical
    assert all(not torch.equal(before[k], after[k]) for k in before if ".lora_B" in k)

    merged = learner.state_dict_for_rollout()
    assert set(merged) == set(base)  # HF names only: no base_layer / lora_ entries
    assert any(not torch.equal(merged[k], base[k]) for k in merged)
    learned = learner.logprobs(batch)
    for ours, theirs in zip(learned, hf_logprobs(merged, tiny_model_dir, batch)):
        assert (torch.tensor(ours[1:]) - theirs).abs().max() < 1e-5


def test_lora_checkpoint_resumes_exactly_and_loads_in_peft_and_transformers(tiny_model_dir, tmp_path):
    vocab = len(load_tokenizer(tiny_model_dir))
    step_1, step_2 = (random_batch(vocab, 4, seed=seed) for seed in (1, 2))
    learner = in_process(tiny_model_dir)
    try:
        learner.rl_update(step_1, group_size=1)  # two optimizer steps: the second also moves A (B ≠ 0 then)
        learner.save(str(tmp_path / "step_1"), {"step": 1})
        expected = learner.rl_update(step_2, group_size=1)
        expected_weights = raw_weights(learner)
    finally:
        dist.destroy_process_group()
    resumed = in_process(tiny_model_dir, seed=1)  # another seed: another random A, until load restores it
    try:
        assert resumed.load(str(tmp_path / "step_1")) == {"step": 1}
        assert resumed.rl_update(step_2, group_size=1) == expected
        assert all(torch.equal(v, expected_weights[k]) for k, v in raw_weights(resumed).items())
    finally:
        dist.destroy_process_group()

    # the checkpoint is an ordinary model for transformers, and peft's adapter on the base gives the same
    checkpoint, _ = load_policy(tmp_path / "step_1")
    base, _ = load_policy(tiny_model_dir)
    via_peft = peft.PeftModel.from_pretrained(base, tmp_path / "step_1" / ADAPTER_DIR).merge_and_unload()
    worst = max((v - via_peft.state_dict()[k]).abs().max().item() for k, v in checkpoint.state_dict().items())
    assert worst < 1e-6


@pytest.mark.slow
def test_merged_lora_weights_reach_the_engine_with_logprob_parity(tiny_model_dir, ray_local):
    """The learner is a Ray actor: the in-process engine owns this process's torch.distributed group."""
    from learner.group import LearnerGroup
    from rollout.engine import Engine

    engine = Engine(tiny_model_dir, max_model_len=1024)
    learners = LearnerGroup(tiny_model_dir, CONFIG.model_copy(update={"threads": 1, "cpus_per_rank": 0.5}))
    vocab = len(load_tokenizer(tiny_model_dir))
    learners.rl_update(random_batch(vocab, 4, seed=3), group_size=1)
    probe = random_batch(vocab, 1, seed=4)
    ids = probe.token_ids[0]
    learned = torch.tensor(learners.logprobs(probe)[0][1:])
    state = learners.state_dict_for_rollout()
    learners.close()
    stale = (torch.tensor(engine.prompt_logprobs(ids)) - learned).abs().max().item()
    assert stale > 1e-2  # the adapters really changed the distribution
    engine.update_weights(state)
    after = (torch.tensor(engine.prompt_logprobs(ids)) - learned).abs().max().item()
    assert after <= 1e-3, (stale, after)
