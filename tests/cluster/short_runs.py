"""The short end-to-end runs of the Scheduler tests: 2 RolloutWorkers and 1 Learner on the tiny policy."""

from __future__ import annotations

import json

from cluster.config import load_config


def short_config(model: str, run_dir, *extra: str):
    return load_config(None, [
        f"trainer.model={model}", f"trainer.run_dir={run_dir}", "trainer.total_steps=3", "trainer.tasks_per_step=2",
        "trainer.eval_every=3", "trainer.eval_tasks=4", "trainer.ood_eval_tasks=4", "trainer.save_every=1", "rollout.group_size=2",
        "rollout.max_new_tokens=24", "learner.lr=1e-3",
        # a random policy earns no reward, so advantages are zero: the entropy bonus makes the update real
        # (and the flat groups must stay in the batch for it)
        "learner.entropy_coef=0.05", "learner.skip_flat_groups=false",
        # a random policy has no informative group to draw for; updates at full lr from the first
        "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0",
        "rollout.workers=2", *extra,  # each step's groups are shared by two engines
    ])


def logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s", "wall_s"))}
            for r in logged(run_dir)]
