"""The model card of a bootstrapped default: where its successes lie and how much RL could sharpen.

Measured through the real rollout path (one in-process vLLM RolloutWorker) on synth/test: greedy success,
sampled success and pass@k at the training temperature per template, and greedy success of both OOD suites.
The card's targets (issue "RL that teaches") are checked here so a recipe's result says whether it has them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from learner.models import CARD_NAME
from rollout.config import EnvConfig, RewardConfig, RolloutConfig
from rollout.envs import load_tasks
from rollout.passk import SAMPLE_SEED, headroom_rows, headroom_summary

EVAL_SAMPLE = 50  # the card's fixed sample: the first 50 tasks of synth/test (seed 0)
SAMPLES, TEMPERATURE = 8, 1.0


def greedy_rate(worker, tasks, fmt: str | None = None) -> float:
    """Greedy success of an in-process RolloutWorker on ``tasks`` (in syntax ``fmt``)."""
    from rollout.worker import group_requests

    requests = [r for group in group_requests(tasks, 1, seed=0, tag="eval", fmt=fmt) for r in group]
    return sum(t.result.success for t in worker.run(requests, temperature=0.0)) / len(tasks)


def targets(headroom: dict, format_ood: float, content_ood: float) -> dict[str, bool]:
    """Greedy 15-50 %, pass@8 15 points above greedy, half the train templates at 10-90 % sampled success,
    each OOD suite >= 10 % greedy."""
    from rollout.envs.synth_templates import TEMPLATES

    overall = headroom["all"]
    train = [name for name, t in TEMPLATES.items() if not t.held_out]
    in_band = [name for name in train if name in headroom and 0.1 <= headroom[name]["sampled"] <= 0.9]
    return {"greedy_15_50": 0.15 <= overall["greedy"] <= 0.5,
            "pass8_15_above_greedy": overall["pass@8"] - overall["greedy"] >= 0.15,
            "half_train_templates_10_90": len(in_band) * 2 >= len(train),
            "format_ood_10": format_ood >= 0.1, "content_ood_10": content_ood >= 0.1}


def measure_card(model_dir: Path, eval_tasks: int = 200, ood_tasks: int = 100) -> dict:
    """Add the measurements to ``model_dir``'s card (rewritten atomically) and return the card."""
    from rollout.evaluate import OOD_FORMAT
    from rollout.worker import RolloutWorker

    model_dir = Path(model_dir)
    worker = RolloutWorker(str(model_dir), RolloutConfig(temperature=TEMPERATURE), RewardConfig())
    tasks = load_tasks("synth", EnvConfig().eval_split, seed=0, limit=eval_tasks)
    rows = headroom_rows(lambda groups, t: worker.run([r for g in groups for r in g], t), tasks, SAMPLES,
                         TEMPERATURE, seed=SAMPLE_SEED)
    headroom = headroom_summary(rows, by="template")
    format_ood = greedy_rate(worker, tasks[:ood_tasks], fmt=OOD_FORMAT[RolloutConfig().format])
    content_ood = greedy_rate(worker, load_tasks("synth", "ood_content", seed=0, limit=ood_tasks))
    card = json.loads((model_dir / CARD_NAME).read_text())
    card |= {
        f"success_synth_test_first{EVAL_SAMPLE}": sum(r["greedy"] for r in rows[:EVAL_SAMPLE]) / EVAL_SAMPLE,
        "success_synth_test": headroom["all"]["greedy"],
        "eval_tasks": eval_tasks,
        "headroom": {"samples": SAMPLES, "temperature": TEMPERATURE, "per_template": headroom},
        "format_ood_greedy": format_ood, "content_ood_greedy": content_ood, "ood_tasks": ood_tasks,
        "targets": targets(headroom, format_ood, content_ood),
    }
    staging = model_dir / f".{CARD_NAME}.tmp"
    staging.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(staging, model_dir / CARD_NAME)
    return card
