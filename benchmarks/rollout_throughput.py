"""Rollout throughput: generated tokens/s of a RolloutWorker against a naive baseline, and 2 workers vs 1.

- worker: one vLLM engine, every pending assistant turn of every live episode in one engine call.
- naive: the same model in transformers, HF ``generate`` one episode at a time, driving the very same
  episode logic (``TokenEpisode``); a subset of the tasks, since tokens/s is a rate.
- scaling: a RolloutPool of 1 and of 2 Ray actors on the same batch.
Generated tokens are counted the same way everywhere: the sum of every trajectory's loss mask.

    python benchmarks/rollout_throughput.py [--size small] [--tasks 8] [--group 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from cluster.local import init_ray
from learner.bootstrap import build_default_model
from learner.models import load_policy
from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import load_tasks
from rollout.pool import RolloutPool
from rollout.worker import EpisodeRequest, RolloutWorker, TokenEpisode, group_requests


def requests_for(tasks, group: int) -> list[EpisodeRequest]:
    return [request for requests in group_requests(tasks, group, seed=0) for request in requests]


def worker_rate(model: str, config: RolloutConfig, requests) -> float:
    worker = RolloutWorker(model, config, RewardConfig())
    worker.run(requests[:2])  # warm-up
    start = time.perf_counter()
    trajectories = worker.run(requests)
    return sum(sum(t.loss_mask) for t in trajectories) / (time.perf_counter() - start)


def naive_rate(model_dir: str, config: RolloutConfig, requests) -> float:
    model, tokenizer = load_policy(model_dir)
    model.eval()
    generated, start = 0, time.perf_counter()
    for request in requests:
        episode = TokenEpisode(request, tokenizer, config, RewardConfig())
        torch.manual_seed(request.seed)
        while not episode.done:
            with torch.no_grad():
                output = model.generate(
                    input_ids=torch.tensor([episode.token_ids]), max_new_tokens=config.max_new_tokens,
                    do_sample=True, temperature=config.temperature, eos_token_id=episode.end_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            tokens = output[0, len(episode.token_ids):].tolist()
            generated += len(tokens)
            episode.receive(tokens, [-1.0] * len(tokens), finished=bool(tokens) and tokens[-1] == episode.end_id)
    return generated / (time.perf_counter() - start)


def pool_rate(model: str, config: RolloutConfig, tasks, group: int) -> float:
    pool = RolloutPool(model, config, RewardConfig())
    pool.generate(tasks[:2], group, seed=99)  # warm-up of every engine
    start = time.perf_counter()
    trajectories = pool.generate(tasks, group, seed=0)
    rate = sum(sum(t.loss_mask) for t in trajectories) / (time.perf_counter() - start)
    pool.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local model directory (default: build the offline preset --size)")
    parser.add_argument("--size", default="small", choices=["tiny", "small"], help="preset to build (default small)")
    parser.add_argument("--tasks", type=int, default=8, help="synth/test tasks for the worker run (default 8)")
    parser.add_argument("--group", type=int, default=4, help="episodes per task (default 4)")
    parser.add_argument("--baseline-tasks", type=int, default=2, help="tasks for the slow naive baseline (default 2)")
    parser.add_argument("--pool-tasks", type=int, default=16, help="tasks for the 1-vs-2 worker runs (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per assistant message (default 64)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="toolrl-bench-"))
    model = args.model or str(build_default_model(scratch / args.size, size=args.size, seed=0))
    config = RolloutConfig(max_new_tokens=args.max_new_tokens, max_total_tokens=2048, max_steps_per_turn=3)
    tasks = load_tasks("synth", "test", limit=max(args.tasks, args.pool_tasks))
    requests = requests_for(tasks[: args.tasks], args.group)

    worker = worker_rate(model, config, requests)
    naive = naive_rate(model, config, requests_for(tasks[: args.baseline_tasks], args.group))
    init_ray(num_cpus=4)
    one = pool_rate(model, config.model_copy(update={"workers": 1}), tasks[: args.pool_tasks], args.group)
    two = pool_rate(model, config.model_copy(update={"workers": 2}), tasks[: args.pool_tasks], args.group)

    print(f"model {model} ({args.size}), cpus {os.cpu_count()}, max_new_tokens {args.max_new_tokens}")
    print(f"{'run':<46} {'generated tok/s':>16}")
    print(f"{f'RolloutWorker, {args.tasks} tasks x {args.group}':<46} {worker:>16.1f}")
    print(f"{f'naive HF generate, 1 episode at a time ({args.baseline_tasks}x{args.group})':<46} {naive:>16.1f}")
    print(f"{f'RolloutPool 1 worker, {args.pool_tasks} tasks x {args.group}':<46} {one:>16.1f}")
    print(f"{f'RolloutPool 2 workers, {args.pool_tasks} tasks x {args.group}':<46} {two:>16.1f}")
    print(f"worker / naive: {worker / naive:.1f}x    2 workers / 1 worker: {two / one:.2f}x")


if __name__ == "__main__":
    main()
