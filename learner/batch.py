"""What the learner consumes: token sequences with their loss masks and (for RL) one advantage each."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

from learner.losses import grpo_advantages
from rollout.worker import by_group


class Origin(StrEnum):
    """Where an RL sequence came from (a str: the values are the names the config and metrics use)."""

    POLICY = "policy"  # sampled exactly as trained
    EXPERT = "expert"  # a ground-truth trajectory put into the group
    HINT = "hint"  # sampled with a hint the trained tokens no longer contain


@dataclass
class SftSample:
    """One SFT sequence and where it came from: the signal, what kind of sequence, the task and error turn
    (None where there is none). Checkpoints hold these as dicts of exactly these fields."""

    signal: str
    kind: str
    task_id: str | None
    turn: int | None
    ids: list[int]
    mask: list[int]


@dataclass
class SequenceBatch:
    token_ids: list[list[int]]
    loss_mask: list[list[int]]  # 1 on tokens the loss sees (the policy's own tokens, or the expert's for SFT)
    advantages: list[float] = field(default_factory=list)  # one per sequence; empty for SFT batches
    sampling_logprobs: list[list[float]] = field(default_factory=list)  # the engine's, to check weight sync
    # Per sequence, where it came from. Empty: all Origin.POLICY. Only POLICY sequences take part in the
    # weight-sync check.
    origins: list[Origin] = field(default_factory=list)
    shaped_gamma: float | None = None  # set: EXPERT sequences use LUFFY's π/(π+γ) objective with this γ
    hint_importance_cap: float | None = None  # set: HINT tokens weighted by min(π/π_sampled, cap)
    # set: a stale batch (sampled by older weights than the learner's, trainer.pipeline one_step_off): POLICY
    # tokens weighted by min(π_old/π_sampled, cap) (learner.terms.behaviour_weights)
    behaviour_importance_cap: float | None = None
    # RL losses score tokens under the distribution they were drawn from, π_T (logits / T), as the engine
    # reports them; SFT batches keep 1.0
    temperature: float = 1.0

    def __len__(self) -> int:
        return len(self.token_ids)

    def origin(self, index: int) -> Origin:
        return self.origins[index] if self.origins else Origin.POLICY

    def select(self, indices: list[int]) -> SequenceBatch:
        def pick(values: list) -> list:
            return [values[i] for i in indices] if values else []

        return SequenceBatch(pick(self.token_ids), pick(self.loss_mask), pick(self.advantages),
                             pick(self.sampling_logprobs), pick(self.origins), self.shaped_gamma,
                             self.hint_importance_cap, self.behaviour_importance_cap, self.temperature)

    def padded_to(self, size: int, pad_id: int, like: SequenceBatch) -> SequenceBatch:
        """This batch with empty (all-masked) sequences appended up to ``size``; the optional fields get rows
        where ``like`` has them (``like``, not this batch: this one may be empty)."""
        while len(self) < size:
            self.token_ids.append([pad_id] * 2)
            self.loss_mask.append([0, 0])
            if like.advantages:
                self.advantages.append(0.0)
            if like.sampling_logprobs:
                self.sampling_logprobs.append([0.0, 0.0])
            if like.origins:
                self.origins.append(Origin.POLICY)
        return self

    def tokens(self) -> int:
        return sum(sum(mask) for mask in self.loss_mask)

    def padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (token_ids, attention_mask, loss_mask), each [B, max length]."""
        width = max(len(ids) for ids in self.token_ids)
        ids = torch.full((len(self), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(self), width), dtype=torch.long)
        mask = torch.zeros((len(self), width), dtype=torch.float32)
        for row, (tokens, loss) in enumerate(zip(self.token_ids, self.loss_mask)):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
            mask[row, : len(loss)] = torch.tensor(loss, dtype=torch.float32)
        return ids, attention, mask


def dialog_sequence(messages: list[dict], tokenizer, train_from: int = 0) -> tuple[list[int], list[int]]:
    """A chat (e.g. an expert dialog) as (token_ids, loss_mask) in exactly a rollout's layout.

    The mask is 1 on each assistant message's content and its ``<|im_end|>`` — what the policy would have
    generated — and 0 on the template around them, tokenised as RolloutWorker tokenises it (the text
    between two assistant messages on its own, starting after an ``<|im_end|>``). Assistant messages before
    index ``train_from`` are context only (mask 0).
    """
    end_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        context = tokenizer.encode(prompt[len(rendered):], add_special_tokens=False)
        reply = tokenizer.encode(message["content"], add_special_tokens=False) + [end_id]
        ids += context + reply
        mask += [0] * len(context) + [int(index >= train_from)] * len(reply)
        rendered = prompt + message["content"] + tokenizer.eos_token
    return ids, mask


def rl_batch(trajectories: list, scale_by_std: bool = True, skip_flat_groups: bool = False,
             origins: list[Origin] | None = None, temperature: float = 1.0) -> SequenceBatch:
    """Trajectories (in group order), sampled at ``temperature`` → sequences with GRPO advantages.

    ``skip_flat_groups`` leaves out whole groups whose rewards are all equal (their advantages are 0).
    ``origins`` (one per trajectory, see ``SequenceBatch.origins``) default to all Origin.POLICY.
    """
    groups = by_group(trajectories)
    group_index = {gid: i for i, gid in enumerate(groups)}
    advantages = grpo_advantages(
        torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        torch.tensor([group_index[t.group_id] for t in trajectories]),
        scale_by_std=scale_by_std,
    ).tolist()
    flat = {gid for gid, members in groups.items() if len({trajectories[i].reward for i in members}) == 1}
    keep = [i for i, t in enumerate(trajectories) if not (skip_flat_groups and t.group_id in flat)]
    return SequenceBatch([trajectories[i].token_ids for i in keep], [trajectories[i].loss_mask for i in keep],
                         [advantages[i] for i in keep], [trajectories[i].logprobs for i in keep],
                         [origins[i] for i in keep] if origins else [], temperature=temperature)


@dataclass
class RLMiniBatch:
    """One RL optimizer step's data on this rank: its share of the mini-batch, the old and reference
    logprobs of each of its micro-batches, the loss denominator of the whole mini-batch, and how far the
    engine's sampling logprobs are from the learner's old ones (``learner.terms.sampling_differences``)."""

    batch: list[SequenceBatch]  # micro-batches
    old_logprobs: list[torch.Tensor | None]  # None: on-policy, taken from the update's own forward pass
    ref_logprobs: list[torch.Tensor]
    denominator: float
    differences: list[float]
