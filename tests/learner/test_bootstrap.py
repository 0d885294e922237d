"""The embedded default policy: the committed asset matches its card; the recipe runs and learns."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from learner.bootstrap import CorpusMix, bootstrap, mixed_stream
from learner.card import EVAL_SAMPLE, greedy_rate
from learner.models import CARD_NAME, default_policy, load_policy
from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import load_tasks


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


@pytest.mark.slow
def test_short_bootstrap_writes_a_loadable_model_whose_loss_falls(tmp_path):
    mix = CorpusMix((("hermes", 0.5), ("python", 0.5)), ood_share=0.2, mistake_rate=0.5, first_index=1000)
    out = bootstrap(tmp_path / "policy", steps=20, batch_size=4, copy_batch_size=4, eval_tasks=4, mix=mix)
    card = json.loads((out / CARD_NAME).read_text())
    assert card["recipe"]["steps"] == 20 and len(card["loss_curve"]) == 10
    assert card["loss_curve"][-1] < card["loss_curve"][0] - 1.0
    assert card["eval_tasks"] == 4 and set(card["targets"]) >= {"greedy_15_50", "format_ood_10"}
    corpus = card["corpus"]  # the mix is what was trained on: habits, both syntaxes, held-out templates
    assert corpus["turns/shortcut"] > 0 and corpus["turns/skip_setup"] > 0 and corpus["dialogs/train/python"] > 0
    assert corpus["dialogs/ood_content/hermes"] + corpus["dialogs/ood_content/python"] > 0
    snapshots = sorted(p.name for p in (tmp_path / "policy-snapshots").iterdir())
    assert snapshots == ["step_10", "step_15", "step_5"]
    model, _ = load_policy(out)
    assert not model.config.tie_word_embeddings
    with pytest.raises(ValueError, match="refusing to overwrite"):
        bootstrap(out, steps=1)
