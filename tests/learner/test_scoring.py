"""Chunked token scores equal the full-logits computation, in the model and alone; the learner's peak
memory at Qwen's vocabulary stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.losses import sequence_logprobs, token_entropy
from learner.models import load_policy
from learner.scoring import ScoreRequest, chunked_token_scores, install_scoring_head, score

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.3])
def test_chunked_scores_and_their_gradients_equal_the_full_computation(temperature, entropy_coef):
    torch.manual_seed(0)
    hidden = (0.5 * torch.randn(37, 16)).requires_grad_()
    weight = (0.5 * torch.randn(50, 16)).requires_grad_()
    targets, upstream = torch.randint(0, 50, (37,)), torch.randn(37)
    logprobs, entropy = chunked_token_scores(hidden, weight, targets, temperature, chunk_tokens=8, entropy=True)
    (upstream * logprobs + entropy_coef * entropy).sum().backward()
    chunked_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logits = (hidden @ weight.T / temperature)[None]  # [1, N, V]: token t + 1 is scored from position t
    ids = torch.cat([torch.zeros(1, dtype=torch.long), targets])[None]
    full = torch.nn.functional.pad(logits, (0, 0, 0, 1))
    full_logprobs, full_entropy = sequence_logprobs(full, ids)[0, 1:], token_entropy(full)[0, 1:]
    (upstream * full_logprobs + entropy_coef * full_entropy).sum().backward()
    torch.testing.assert_close(logprobs, full_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, full_entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_grads[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_grads[1], weight.grad, atol=1e-5, rtol=1e-5)


def test_the_scoring_head_scores_only_the_requested_tokens_and_keeps_the_requested_logits(tiny_model_dir):
    model, _ = load_policy(tiny_model_dir)
    torch.manual_seed(1)
    ids = torch.randint(5, 300, (2, 12))
    attention = torch.ones_like(ids)
    reference = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    install_scoring_head(model)
    scored = torch.zeros_like(ids, dtype=torch.bool)
    scored[:, 6:] = True
    kept = torch.zeros_like(scored)
    kept[0, 7] = kept[1, 11] = True
    scores = score(model, ids, attention, ScoreRequest(ids, scored, 0.5, entropy=True, kept=kept, chunk_tokens=5))
    expected = sequence_logprobs(reference / 0.5, ids)
    torch.testing.assert_close(scores.logprobs[:, 6:], expected[:, 6:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.entropy[:, 6:], token_entropy(reference / 0.5)[:, 6:], atol=1e-5, rtol=1e-5)
    assert scores.logprobs[:, :6].abs().max() == 0  # not requested, not computed
    rows, columns = torch.tensor([0, 1]), torch.tensor([7, 11])
    torch.testing.assert_close(scores.kept_logits[rows, columns - 1], reference[rows, columns - 1] / 0.5)
    # outside a request the head is the plain output layer again
    torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, reference)


def _peak(tokens: int, chunk: int) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "learner_memory.py"), "--tokens", str(tokens),
               "--chunk", str(chunk), "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_learner_peak_memory_at_qwen_vocabulary_and_4k_tokens_stays_under_the_bound():
    """One rl_update over a 4,096-token sequence at 151,936 tokens of vocabulary, in a fresh process. The
    full-logits path (the learner before chunking) peaked at 12.1 GB over its start here; one fp32 logits
    tensor is 2.4 GB. Chunks of 512 must stay under 1.0 GB (docs/gpu-clusters.md)."""
    result = _peak(4096, 512)
    assert result["full_logits_mb"] == pytest.approx(2374, abs=1)
    assert result["peak_over_start_mb"] < 1024, result
