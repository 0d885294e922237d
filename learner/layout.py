"""How a batch is laid out over data-parallel ranks and micro-batches.

Every rank receives the whole batch and takes the sequences ``i % world_size == rank``. Its share is cut
into micro-batches of at most ``max_sequences`` sequences and at most ``max_tokens`` padded tokens
(longest sequence × count), so that a few long sequences do not share a forward pass with many others.
FSDP's collectives need the same number of forward passes on every rank: each rank computes every rank's
cut (the batch is the same everywhere, so no communication is needed) and appends empty micro-batches up
to the largest count.
"""

from __future__ import annotations

from learner.batch import SequenceBatch
from learner.prefix import pack_shared_prefixes


def prompt(batch: SequenceBatch, index: int) -> list[int]:
    """The tokens of sequence ``index`` before its first loss token."""
    mask = batch.loss_mask[index]
    return batch.token_ids[index][: mask.index(1) if 1 in mask else len(mask)]


def rank_share(batch: SequenceBatch, rank: int, world_size: int, by_length: bool = True,
               prompts_together: bool = False) -> SequenceBatch:
    """Rank ``rank``'s sequences, sorted by length unless the caller needs the original order: micro-batches
    of similar lengths waste little compute on padding, and a loss summed over sequences does not depend
    on their order. ``prompts_together`` sorts by prompt first, so that a group shares its micro-batches
    and computes its prompt once there (``learner.prefix``)."""
    mine = list(range(rank, len(batch), world_size))
    if by_length:
        mine.sort(key=lambda i: (prompt(batch, i) if prompts_together else [], len(batch.token_ids[i])))
    return batch.select(mine)


def cut(share: SequenceBatch, max_sequences: int, max_tokens: int | None) -> list[SequenceBatch]:
    """Consecutive micro-batches of ``share`` within both limits (a sequence longer than ``max_tokens``
    alone still makes one micro-batch)."""
    parts, start = [], 0
    while start < len(share):
        end, longest = start, 0
        while end < len(share) and end - start < max_sequences:
            longest_with = max(longest, len(share.token_ids[end]))
            if max_tokens is not None and end > start and longest_with * (end - start + 1) > max_tokens:
                break
            longest, end = longest_with, end + 1
        parts.append(share.select(list(range(start, end))))
        start = end
    return parts


def micro_batches(batch: SequenceBatch, rank: int, world_size: int, max_sequences: int, max_tokens: int | None,
                  pad_id: int, by_length: bool = True, prompts_together: bool = False) -> list[SequenceBatch]:
    """This rank's micro-batches of ``batch``, as many as on every other rank (empty ones appended)."""
    counts = [len(cut(rank_share(batch, r, world_size, by_length, prompts_together), max_sequences, max_tokens))
              for r in range(world_size)]
    mine = cut(rank_share(batch, rank, world_size, by_length, prompts_together), max_sequences, max_tokens)
    while len(mine) < max(counts):
        mine.append(batch.select([]).padded_to(1, pad_id, like=batch))
    return mine


def forward_positions(parts: list[SequenceBatch], pairs_per_position: float | None) -> dict[str, float]:
    """``padding_share``: the share of the positions the forward passes of ``parts`` compute that are
    padding; ``shared_prefix_saving``: the share of the unpacked passes' positions that sharing prompts
    (``learner.prefix`` with ``pairs_per_position``, None: off) leaves out."""
    unpacked = computed = real = 0
    for part in filter(len, parts):
        ids, attention, mask = part.padded(0)
        packing = None if pairs_per_position is None else pack_shared_prefixes(ids, attention, mask.bool(),
                                                                                pairs_per_position)
        unpacked += ids.numel()
        computed += (packing.ids if packing else ids).numel()
        real += int((packing.segments >= 0).sum()) if packing else int(attention.sum())
    return {"padding_share": 1 - real / max(computed, 1), "shared_prefix_saving": 1 - computed / max(unpacked, 1)}


def split_even(batch: SequenceBatch, parts: int) -> list[SequenceBatch]:
    """``parts`` consecutive slices whose sizes differ by at most one (some may be empty)."""
    bounds = [round(i * len(batch) / parts) for i in range(parts + 1)]
    return [batch.select(list(range(bounds[i], bounds[i + 1]))) for i in range(parts)]
