"""Episodes driven without an engine: replies are fed to a TokenEpisode as if the engine had generated them."""

from __future__ import annotations

from rollout.config import RewardConfig, RolloutConfig
from rollout.dialogs import expert_messages
from rollout.formats import get_format
from rollout.worker import EpisodeRequest, TokenEpisode

CONFIG = RolloutConfig(max_new_tokens=48, max_total_tokens=8192)


def scripted_episode(task, tokenizer, fmt="hermes", replies=None, hint=None, hint_position="user", **config):
    """Play ``replies`` (default: the expert's assistant messages) in order; returns (trajectory, generated),
    ``generated`` being (start index, tokens) per reply. Stops when the episode is done."""
    if replies is None:
        replies = [m["content"] for m in expert_messages(task, get_format(fmt)) if m["role"] == "assistant"]
    rollout = CONFIG.model_copy(update={"format": fmt, "tool_descriptions": True, **config})
    request = EpisodeRequest(task, "g0", 0, seed=0, hint=hint, hint_position=hint_position)
    episode = TokenEpisode(request, tokenizer, rollout, RewardConfig())
    generated = []
    for reply in replies:
        if episode.done:
            break
        tokens = tokenizer.encode(reply, add_special_tokens=False) + [episode.end_id]
        start = len(episode.token_ids)
        episode.receive(tokens, [-0.5] * len(tokens), finished=True)
        generated.append((start, tokens))
    return episode.trajectory(), generated
