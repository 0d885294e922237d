"""vLLM engine: in-place weight updates keep logprob parity with transformers (fp32: |Δ| <= 1e-3)."""

from __future__ import annotations

import pytest
import torch

from learner.models import load_policy
from rollout.engine import Engine

pytestmark = pytest.mark.slow


def hf_logprobs(model, ids):
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_weight_update_in_place_matches_transformers(tiny_model_dir):
    model, tokenizer = load_policy(tiny_model_dir)
    model.eval()
    engine = Engine(tiny_model_dir, max_model_len=1024)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "tools"}, {"role": "user", "content": "List the files in the archive folder and sort them. " * 30}],
        tokenize=False, add_generation_prompt=True,
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 128  # longer than a KV block: a stale prefix cache would show
    before = (torch.tensor(engine.prompt_logprobs(ids)) - hf_logprobs(model, ids)).abs().max().item()
    assert before <= 1e-3

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    logits = model(torch.tensor([ids])).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]))
    loss.backward()
    optimizer.step()
    model.eval()

    stale = (torch.tensor(engine.prompt_logprobs(ids)) - hf_logprobs(model, ids)).abs().max().item()
    assert stale > 1e-2  # the update really changed the distribution
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as saved: tied head left out
    engine.update_weights(state)
    after = (torch.tensor(engine.prompt_logprobs(ids)) - hf_logprobs(model, ids)).abs().max().item()
    assert after <= 1e-3, (before, stale, after)


def test_learner_scores_tokens_at_the_sampling_temperature(ray_local):
    """Engine samples at T = 0.7; the learner's old logprobs (logits / T) match them in fp32, and a learner
    that scored at T = 1 would not (the check the weight-sync metric relies on). The learner is a Ray actor:
    the in-process engine owns this process's torch.distributed group."""
    from learner.batch import SequenceBatch
    from learner.config import LearnerConfig
    from learner.group import LearnerGroup
    from learner.models import default_policy
    from rollout.chat import load_tokenizer

    policy = str(default_policy())
    tokenizer = load_tokenizer(policy)
    engine = Engine(policy, max_model_len=1024)
    learners = LearnerGroup(policy, LearnerConfig(lr=1e-30, threads=1, cpus_per_rank=0.5))  # weights stay put
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                              add_generation_prompt=True), add_special_tokens=False)
               for text in ("Start the car.", "Add NVDA to my watchlist.")]
    samples = engine.generate(prompts, max_tokens=24, stop_token_ids=[tokenizer.eos_token_id], temperature=0.7,
                              seeds=[1, 2])
    batch = SequenceBatch([p + s.token_ids for p, s in zip(prompts, samples)],
                          [[0] * len(p) + [1] * len(s.token_ids) for p, s in zip(prompts, samples)],
                          [1.0, -1.0], [[0.0] * len(p) + s.logprobs for p, s in zip(prompts, samples)],
                          temperature=0.7)
    at_sampling_temperature = learners.rl_update(batch, group_size=2)["rollout_logprob_diff"]
    batch.temperature = 1.0
    at_one = learners.rl_update(batch, group_size=2)["rollout_logprob_diff"]
    learners.close()
    assert at_sampling_temperature <= 1e-5 and at_one > 1e-2
