"""Supervisor.transform and its neighbours on hand-built groups (scripted episodes; no engine, no Ray)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cluster.config import load_config
from learner.batch import Origin, dialog_sequence
from rollout.chat import load_tokenizer
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from supervision.hint import template_hint
from supervision.supervisor import Supervisor
from tests.scripted import scripted_episode

FAIL = "I cannot help."
KEYS = ["supervision/hinted_group_share", "supervision/replaced_group_share", "supervision/collected/erroneous",
        "supervision/collected/reflection"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def tasks():
    return [t for t in load_tasks("synth", "train", limit=50) if all(t.ground_truth)][:2]


def _member(task, tokenizer, group: str, index: int, success: bool, hint: str | None = None):
    replies = None if success else [FAIL] * len(task.turns)
    trajectory, _ = scripted_episode(task, tokenizer, replies=replies, hint=hint)
    return replace(trajectory, group_id=group, sample_index=index)


def _groups(tasks, tokenizer, hint: bool = False):
    """Group a (tasks[0]): three failures, the first with the hint when ``hint``; group b (tasks[1]): a
    success between two failures."""
    text = template_hint(tasks[0]) if hint else None
    return ([_member(tasks[0], tokenizer, "a", 0, False, text), _member(tasks[0], tokenizer, "a", 1, False),
             _member(tasks[0], tokenizer, "a", 2, False)]
            + [_member(tasks[1], tokenizer, "b", k, k == 1) for k in range(3)])


def _supervisor(tokenizer, tasks, tmp_path, mode: str, signals: str, *extra: str) -> Supervisor:
    config = load_config(None, [f"supervision.mode={mode}", f"supervision.signals=[{signals}]",
                                "learner.skip_flat_groups=false", "rollout.tool_descriptions=true", *extra])
    return Supervisor(config, tokenizer, tasks, tmp_path)


def test_off_policy_replaces_the_last_members_of_groups_without_success(tokenizer, tasks, tmp_path):
    supervisor = _supervisor(tokenizer, tasks, tmp_path, "none", "off_policy", "supervision.off_policy.members=2",
                             "supervision.off_policy.loss=shaped", "supervision.off_policy.gamma=0.3")
    sampled = _groups(tasks, tokenizer)
    batch, metrics = supervisor.transform(sampled, tasks)
    expert = dialog_sequence(expert_messages(tasks[0], supervisor.fmt), tokenizer)
    assert batch.origins == [Origin.POLICY, Origin.EXPERT, Origin.EXPERT] + [Origin.POLICY] * 3
    assert batch.token_ids[1] == batch.token_ids[2] == expert[0] and batch.loss_mask[1] == expert[1]
    assert batch.token_ids[0] == sampled[0].token_ids and batch.token_ids[3:] == [t.token_ids for t in sampled[3:]]
    assert batch.advantages[0] < 0 < batch.advantages[1] == batch.advantages[2]  # ground truth: reward 1
    assert batch.shaped_gamma == 0.3 and batch.hint_importance_cap is None
    assert [metrics[k] for k in KEYS] == [0.0, 0.5, 0.0, 0.0]  # every run logs every signal's keys
    assert [t.group_id for t in sampled] == ["a"] * 3 + ["b"] * 3 and sampled[1].reward == 0.0  # input untouched


def test_off_policy_always_and_only_in_the_groups_the_update_sees(tokenizer, tasks, tmp_path):
    supervisor = _supervisor(tokenizer, tasks, tmp_path, "none", "off_policy", "supervision.off_policy.when=always")
    sampled = _groups(tasks, tokenizer)
    batch, metrics = supervisor.transform(sampled, tasks)
    assert batch.origins == ["policy", "policy", "expert"] * 2 and batch.shaped_gamma is None
    assert metrics["supervision/replaced_group_share"] == 1.0
    batch, metrics = supervisor.transform(sampled, tasks, train_groups={"b"})
    assert len(batch) == 3 and batch.origins == ["policy", "policy", "expert"]
    assert batch.token_ids[:2] == [t.token_ids for t in sampled[3:5]]
    assert metrics["supervision/replaced_group_share"] == 1.0  # of the one group the update sees
    assert supervisor.informative_groups(sampled, tasks) == ["a", "b"]


def test_hints_are_stripped_and_weighted(tokenizer, tasks, tmp_path):
    supervisor = _supervisor(tokenizer, tasks, tmp_path, "none", "hint", "supervision.hint.importance_max=2.0")
    sampled = _groups(tasks, tokenizer, hint=True)
    assert sampled[0].token_ids != sampled[1].token_ids  # the hint is in the sampled prompt
    batch, metrics = supervisor.transform(sampled, tasks)
    assert batch.token_ids == [t.token_ids for t in sampled[1:2] + sampled[1:]]  # no hint left: as unhinted
    assert batch.sampling_logprobs[0] == sampled[1].logprobs
    assert batch.origins == ["hint"] + ["policy"] * 5 and batch.hint_importance_cap == 2.0
    assert [metrics[k] for k in KEYS] == [0.5, 0.0, 0.0, 0.0]
    assert _supervisor(tokenizer, tasks, tmp_path, "none", "").transform(sampled, tasks)[0].hint_importance_cap is None


def test_failures_feed_the_buffer_and_the_sft_batch_shares_it_with_expert_data(tokenizer, tasks, tmp_path):
    supervisor = _supervisor(tokenizer, tasks, tmp_path, "interleaved", "expert, erroneous, reflection")
    batch, metrics = supervisor.transform(_groups(tasks, tokenizer), tasks, train_groups={"b"})
    assert len(batch) == 3 and set(batch.origins) == {"policy"}
    # one failure per group, also from group a that the update leaves out: 2 erroneous samples and a review
    assert [metrics[k] for k in KEYS] == [0.0, 0.0, 4.0, 2.0]
    assert [(s.signal, s.kind, s.task_id) for s in supervisor.failures.items] == [
        (signal, kind, task.id) for task in tasks
        for signal, kind in (("erroneous", "ground_truth"), ("erroneous", "corrected"), ("reflection", "reflection"))]
    sft, counts = supervisor.sft_batch(5)  # the buffer's half rounded up, the rest from the expert stream
    assert len(sft) == 5 and counts == {"supervision/sft_samples/expert": 2.0,
                                        "supervision/sft_samples/erroneous": 2.0,
                                        "supervision/sft_samples/reflection": 1.0}
    state = json.loads(json.dumps(supervisor.state()))
    assert state["expert_position"] == 2 and state["failures"]["cursor"] == 3
    resumed = _supervisor(tokenizer, tasks, tmp_path, "interleaved", "expert, erroneous, reflection")
    resumed.restore(state)
    assert resumed.state() == state and resumed.sft_batch(6)[0].token_ids == supervisor.sft_batch(6)[0].token_ids
