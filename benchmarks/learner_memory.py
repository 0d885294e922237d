"""The learner's peak memory for one RL update at Qwen's vocabulary, on CPU.

A model with Qwen2.5's 151,936-token vocabulary and a small body (so the output layer dominates, as the
logits do at 1.5B-8B) is written to a temporary directory with the embedded default's tokenizer; one
FSDP2 rank (gloo, in this process) runs ``rl_update`` on one sequence of --tokens tokens (the last
--generated of them trained). Reported: the peak resident memory of the update over the resident memory
right before it (Linux's VmHWM, reset before the update), and the size of one full fp32 [tokens,
vocabulary] logits tensor for comparison.

    python benchmarks/learner_memory.py [--tokens 4096] [--generated 4096] [--chunk 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

QWEN_VOCAB = 151_936


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB


def start_peak() -> float:
    """Reset this process's peak resident memory (VmHWM) to its current one, which it returns. Not
    ``ru_maxrss``: that keeps the peak of the process this one was forked from (e.g. a large pytest)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def qwen_vocab_model(directory: Path, full_size: bool = False) -> Path:
    """A random Qwen2 with Qwen2.5's 151,936-token vocabulary and the embedded default's tokenizer: the body
    of Qwen2.5-1.5B (``full_size``, built on the GPU when there is one, saved in bf16) or a 1-layer, 64-wide
    one (fp32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from learner.models import DEFAULT_POLICY
    from rollout.chat import load_tokenizer

    config = Qwen2Config.from_pretrained(DEFAULT_POLICY)
    if full_size:
        body = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_parameters": {
                    "rope_type": "default", "rope_theta": 1000000.0}}
    else:
        body = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "max_position_embeddings": 8192}
    # initializer_range 0.2, not 0.02: distributions far from uniform, so sampled tokens and log-probs show
    # which weights an engine holds
    config.update({"vocab_size": QWEN_VOCAB, "tie_word_embeddings": True, "initializer_range": 0.2, **body,
                   "layer_types": ["full_attention"] * body["num_hidden_layers"]})
    torch.manual_seed(0)
    with torch.device("cuda" if full_size and torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    (model.to(torch.bfloat16) if full_size else model).save_pretrained(directory)
    load_tokenizer(DEFAULT_POLICY).save_pretrained(directory)
    return directory


def measure(tokens: int, generated: int, chunk: int) -> dict[str, float]:
    import torch.distributed as dist

    from learner.batch import SequenceBatch
    from learner.config import LearnerConfig
    from learner.rank import Learner, free_port

    with tempfile.TemporaryDirectory() as tmp:
        model = qwen_vocab_model(Path(tmp))
        learner = Learner(str(model), LearnerConfig(lr=1e-5, threads=2, warmup_steps=0, logits_chunk_tokens=chunk))
        learner.connect("127.0.0.1", free_port())
        rng = random.Random(0)
        vocab = len(learner.tokenizer)
        batch = SequenceBatch([[rng.randrange(10, vocab) for _ in range(tokens)]],
                              [[0] * (tokens - generated) + [1] * generated], [1.0])
        before = start_peak()
        metrics = learner.rl_update(batch, group_size=1)
        peak = peak_mb()
        dist.destroy_process_group()
    return {"tokens": tokens, "generated": generated, "chunk": chunk, "peak_over_start_mb": round(peak - before, 1),
            "full_logits_mb": round(tokens * QWEN_VOCAB * 4 / 2**20, 1), "grad_norm": metrics["grad_norm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="sequence length")
    parser.add_argument("--generated", type=int, default=None, help="trained tokens at the end (default: all)")
    parser.add_argument("--chunk", type=int, default=1024, help="learner.logits_chunk_tokens")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a sentence")
    args = parser.parse_args()
    result = measure(args.tokens, args.generated or args.tokens - 1, args.chunk)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"rl_update over {result['tokens']} tokens ({result['generated']} trained), vocabulary {QWEN_VOCAB:,}, "
              f"chunk {result['chunk']}: peak {result['peak_over_start_mb']:.0f} MB over the start "
              f"(one full fp32 logits tensor: {result['full_logits_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
