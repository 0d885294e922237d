"""What the learner consumes: token sequences with their loss masks and (for RL) one advantage each."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from learner.losses import grpo_advantages


@dataclass
class SequenceBatch:
    token_ids: list[list[int]]
    loss_mask: list[list[int]]  # 1 on tokens the loss sees (the policy's own tokens, or the expert's for SFT)
    advantages: list[float] = field(default_factory=list)  # one per sequence; empty for SFT batches
    sampling_logprobs: list[list[float]] = field(default_factory=list)  # the engine's, to check weight sync

    def __len__(self) -> int:
        return len(self.token_ids)

    def select(self, indices: list[int]) -> SequenceBatch:
        return SequenceBatch(
            [self.token_ids[i] for i in indices],
            [self.loss_mask[i] for i in indices],
            [self.advantages[i] for i in indices] if self.advantages else [],
            [self.sampling_logprobs[i] for i in indices] if self.sampling_logprobs else [],
        )

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


def rl_batch(trajectories: list, scale_by_std: bool = True) -> SequenceBatch:
    """Trajectories (in group order) → sequences with GRPO advantages from their rewards."""
    group_index = {gid: i for i, gid in enumerate(dict.fromkeys(t.group_id for t in trajectories))}
    advantages = grpo_advantages(
        torch.tensor([t.reward for t in trajectories], dtype=torch.float32),
        torch.tensor([group_index[t.group_id] for t in trajectories]),
        scale_by_std=scale_by_std,
    )
    return SequenceBatch([t.token_ids for t in trajectories], [t.loss_mask for t in trajectories], advantages.tolist(),
                         [t.logprobs for t in trajectories])
