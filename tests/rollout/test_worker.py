"""RolloutWorker: token layout and loss mask against the real chat template, then real vLLM and Ray."""

from __future__ import annotations

import os

import pytest
import torch

from rollout.chat import load_tokenizer
from rollout.config import RewardConfig, RolloutConfig
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from rollout.formats import get_format
from rollout.worker import EpisodeRequest, RolloutWorker, TokenEpisode
from tests.scripted import scripted_episode

CONFIG = RolloutConfig(max_new_tokens=48, max_total_tokens=1024)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.mark.parametrize("fmt", ["hermes", "python", "json"])
def test_loss_mask_covers_exactly_the_generated_tokens(tokenizer, fmt):
    task = load_tasks("synth", "train", limit=3)[2]
    trajectory, generated = scripted_episode(task, tokenizer, fmt)
    assert len(generated) == sum(m["role"] == "assistant" for m in expert_messages(task, get_format(fmt)))
    expected = [0] * len(trajectory.token_ids)
    for start, tokens in generated:
        assert trajectory.token_ids[start : start + len(tokens)] == tokens
        expected[start : start + len(tokens)] = [1] * len(tokens)
        # the first generated token follows the generation prompt; the last is the message's <|im_end|>
        assert tokenizer.decode(trajectory.token_ids[:start]).endswith("<|im_start|>assistant\n")
        assert tokens[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trajectory.loss_mask == expected
    assert [lp != 0.0 for lp in trajectory.logprobs] == [bool(m) for m in expected]
    assert trajectory.result.success and trajectory.reward == 1.0
    assert trajectory.parse_errors == 0 and not trajectory.truncated


def test_tokens_decode_to_the_conversation_the_environment_saw(tokenizer):
    task = load_tasks("synth", "train", limit=5)[4]
    trajectory, _ = scripted_episode(task, tokenizer)
    rendered = tokenizer.apply_chat_template(trajectory.messages, tokenize=False)
    assert tokenizer.decode(trajectory.token_ids) == rendered.removesuffix("\n")
    # and the prompt the engine saw first is exactly the template's generation prompt
    first = tokenizer.apply_chat_template(trajectory.messages[:2], tokenize=False, add_generation_prompt=True)
    assert trajectory.token_ids[: len(tokenizer.encode(first))] == tokenizer.encode(first)
    tool_messages = [m for m in trajectory.messages if m["role"] == "tool"]
    assert len(tool_messages) == sum(len(c) for turn in trajectory.calls for c in turn)


def test_bad_output_is_an_observation_and_limits_truncate(tokenizer):
    task = load_tasks("synth", "test", limit=1)[0]
    config = CONFIG.model_copy(update={"max_steps_per_turn": 2})
    episode = TokenEpisode(EpisodeRequest(task, "g", 0, 0), tokenizer, config, RewardConfig(format_penalty=0.1))
    broken = tokenizer.encode("<tool_call>\n{\"name\": oops\n</tool_call>", add_special_tokens=False)
    episode.receive(broken + [episode.end_id], [-1.0] * (len(broken) + 1), finished=True)
    assert episode.messages[-1]["role"] == "tool" and episode.messages[-1]["content"].startswith("error: invalid JSON")
    cut = tokenizer.encode("<tool_call>\n{\"name\"", add_special_tokens=False)
    before = len(episode.token_ids)
    episode.receive(cut, [-1.0] * len(cut), finished=False)  # max_new_tokens reached mid-call
    closing = before + len(cut)
    assert episode.token_ids[closing] == episode.end_id and episode.loss_mask[closing] == 0
    assert episode.loss_mask[before:closing] == [1] * len(cut)
    assert episode.truncated and episode.env.format_errors == 2
    assert len(episode.calls[0]) == 2 and len(episode.env.turn_checks) == 1  # the turn closed after 2 steps


def test_a_task_longer_than_the_context_fails_without_generating(tokenizer):
    task = next(t for t in load_tasks("bfcl", "test") if t.category == "long_context")
    episode = TokenEpisode(EpisodeRequest(task, "g", 0, 0), tokenizer, CONFIG, RewardConfig())
    assert episode.done and episode.truncated
    trajectory = episode.trajectory()
    assert not trajectory.result.success and trajectory.result.turns == len(task.turns)
    assert sum(trajectory.loss_mask) == 0


@pytest.mark.slow
def test_vllm_worker_runs_episodes_with_aligned_logprobs(tiny_model_dir):
    worker = RolloutWorker(tiny_model_dir, CONFIG, RewardConfig())
    tasks = load_tasks("synth", "test", limit=3)
    requests = [EpisodeRequest(t, f"g{i}", j, seed=10 * i + j) for i, t in enumerate(tasks) for j in range(2)]
    trajectories = worker.run(requests)
    assert len(trajectories) == 6
    for trajectory in trajectories:
        assert len(trajectory.token_ids) == len(trajectory.loss_mask) == len(trajectory.logprobs)
        generated = [lp for lp, m in zip(trajectory.logprobs, trajectory.loss_mask) if m]
        assert generated and all(lp <= 0.0 for lp in generated)
        assert trajectory.result.turns == len(load_tasks("synth", "test", limit=3)[int(trajectory.group_id[1:])].turns)
    # same seeds, same trajectories
    again = worker.run(requests)
    assert [t.token_ids for t in again] == [t.token_ids for t in trajectories]
    # alone, the engine takes the machine's cores (one worker); beside an update, its one reserved CPU
    assert worker.threads == torch.get_num_threads() == os.cpu_count()
    worker.share_cores(True)
    worker.run(requests[:1])
    assert torch.get_num_threads() == 1
    worker.share_cores(False)
    worker.run(requests[:1])
    assert torch.get_num_threads() == os.cpu_count()


@pytest.mark.parametrize("fmt", ["hermes", "python"])
def test_expert_dialog_sequence_has_the_rollout_layout(tokenizer, fmt):
    """SFT data (learner.batch.dialog_sequence) is laid out token for token like a rollout of the same text."""
    from learner.batch import dialog_sequence

    for task in load_tasks("synth", "train", limit=4):
        trajectory, _ = scripted_episode(task, tokenizer, fmt)
        ids, mask = dialog_sequence(expert_messages(task, get_format(fmt)), tokenizer)
        assert ids == trajectory.token_ids
        assert mask == trajectory.loss_mask
