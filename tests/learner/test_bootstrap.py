"""The embedded default policy: the committed asset matches its card; the recipe runs and learns."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from learner.bootstrap import CorpusMix, bootstrap, mixed_stream, played_turns
from learner.card import EVAL_SAMPLE, greedy_rate
from learner.models import CARD_NAME, default_policy, load_policy
from rollout.config import RewardConfig, RolloutConfig
from rollout.dialogs import ground_truth_results
from rollout.envs import load_tasks
from rollout.variants import mistaken_calls


@pytest.mark.slow
def test_committed_default_loads_and_matches_its_card():
    path = default_policy()
    card = json.loads((path / CARD_NAME).read_text())
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    model, _ = load_policy(path)  # transformers
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    from rollout.worker import RolloutWorker

    worker = RolloutWorker(str(path), RolloutConfig(), RewardConfig())  # vLLM, through a RolloutWorker
    measured = greedy_rate(worker, load_tasks("synth", "test", seed=0, limit=EVAL_SAMPLE))
    assert abs(measured - card[f"success_synth_test_first{EVAL_SAMPLE}"]) <= 0.10


def test_habit_rates_per_kind_apply_to_their_kind_only():
    """One share for every habit, or one per kind: the same draws, so a share equal for all kinds gives
    the same dialogs either way."""
    from itertools import islice

    from rollout.chat import load_tokenizer

    tokenizer = load_tokenizer(default_policy())

    def corpus(rate):
        counts = Counter()
        dialogs = list(islice(mixed_stream(tokenizer, 0, CorpusMix(mistake_rate=rate), counts), 60))
        return dialogs, counts

    shortcut_only, counts = corpus((("shortcut", 1.0),))
    assert counts["turns/shortcut"] > 10 and counts["turns/skip_setup"] == 0
    assert corpus(0.35) == corpus((("shortcut", 0.35), ("skip_setup", 0.35)))
    assert corpus(0.35)[0] != shortcut_only


def test_habits_per_task_play_every_turn_of_a_kind_alike():
    """Per task, a kind's first draw decides all its turns (both outcomes occur); per turn, tasks mix them."""
    shortcut_turns = []  # (task, its turns where the shortcut habit applies) for tasks with two or more
    for task in load_tasks("synth", "train", limit=300):
        habits = [mistaken_calls(calls, results) for calls, results in zip(task.ground_truth, ground_truth_results(task))]
        turns = [i for i, habit in enumerate(habits) if habit and habit[0] == "shortcut"]
        if len(turns) >= 2:
            shortcut_turns.append((task, turns))
    assert len(shortcut_turns) >= 20

    def played(per_task: bool) -> list[set]:
        mix, rng = CorpusMix(mistake_rate=(("shortcut", 0.5),), habits_per_task=per_task), random.Random(0)
        plays = [(played_turns(task, mix, rng), turns) for task, turns in shortcut_turns]
        return [{play[i][0] for i in turns} for play, turns in plays]

    per_task = played(True)
    assert {"shortcut"} in per_task and {"expert"} in per_task and all(len(kinds) == 1 for kinds in per_task)
    assert {"shortcut", "expert"} in played(False)


@pytest.mark.slow
def test_short_bootstrap_writes_a_loadable_model_whose_loss_falls(tmp_path):
    mix = CorpusMix((("hermes", 0.5), ("python", 0.5)), ood_share=0.2, mistake_rate=0.5, first_index=1000)
    out = bootstrap(tmp_path / "policy", steps=20, batch_size=4, copy_batch_size=4, eval_tasks=2, mix=mix)
    card = json.loads((out / CARD_NAME).read_text())
    assert card["recipe"]["steps"] == 20 and len(card["loss_curve"]) == 10
    assert card["loss_curve"][-1] < card["loss_curve"][0] - 1.0
    assert card["eval_tasks"] == 2 and set(card["targets"]) >= {"greedy_15_50", "format_ood_10"}
    corpus = card["corpus"]  # the mix is what was trained on: habits, both syntaxes, held-out templates
    assert corpus["turns/shortcut"] > 0 and corpus["turns/skip_setup"] > 0 and corpus["dialogs/train/python"] > 0
    assert corpus["dialogs/ood_content/hermes"] + corpus["dialogs/ood_content/python"] > 0
    snapshots = sorted(p.name for p in (tmp_path / "policy-snapshots").iterdir())
    assert snapshots == ["step_10", "step_15", "step_5"]
    model, _ = load_policy(out)
    assert not model.config.tie_word_embeddings
    with pytest.raises(ValueError, match="refusing to overwrite"):
        bootstrap(out, steps=1)
