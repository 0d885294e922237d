"""Shared-prefix packing: the rows of a forward pass that repeat one prompt compute it once.

GRPO samples G answers to one prompt, so a micro-batch repeats each prompt up to G times, and the prompt is
most of a row (the synth default: ~290 prompt tokens for ~30 generated; BFCL: ~3k for a few hundred). Rows
whose tokens agree up to the last position before their first scored token are packed into one row: that
shared prefix once, then each row's remainder (from that position on), its rotary positions continuing
the prefix's as in the unpacked row. A 4D mask lets a remainder see the prefix and itself, causally, and
never another remainder. Every scored token is predicted from a position inside its own remainder, and
the prefix's keys and values reach each remainder through attention, so log-probs, entropies and
gradients are those of the unpacked rows (tests/learner/test_prefix.py checks them to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Eager attention on CPU spends ~2.3x as long per FLOP as the linear maps (its softmax and mask run over every
# pair in fp32); measured as docs/training.md "Shared prefixes" tells.
ATTENTION_SLOWDOWN = 2.3


def pairs_per_position(model: torch.nn.Module) -> float:
    """What one position costs in the decoder layers' linear maps (2 FLOPs per parameter) in attention pairs
    (4 FLOPs per hidden unit and layer: the scores and the weighted values), at ``ATTENTION_SLOWDOWN``."""
    parameters = sum(p.numel() for p in model.get_decoder().layers.parameters())
    return parameters / (2 * model.config.hidden_size * model.config.num_hidden_layers) / ATTENTION_SLOWDOWN


@dataclass
class PackedRows:
    """A batch's rows packed by shared prefix, and where each of its tokens went."""

    ids: Tensor  # [R, L] packed token ids (0 after a row's last segment: masked, any id would do)
    positions: Tensor  # [R, L] rotary position of each packed token: its column in the unpacked row
    segments: Tensor  # [R, L] 0: the shared prefix, k > 0: the k-th remainder, -1: padding
    row: Tensor  # [B, T] packed row of each unpacked token (padding: the row of its group)
    column: Tensor  # [B, T] packed column of each unpacked token (padding: column 0, never scored)

    def attention_mask(self, attn_implementation: str, dtype: torch.dtype) -> Tensor:
        """[R, 1, L, L]: query q sees key k ≤ q of the prefix or of its own segment. Boolean for sdpa, an
        additive float mask for eager attention (what transformers passes each)."""
        query, key = self.segments[:, :, None], self.segments[:, None, :]
        columns = torch.arange(self.ids.shape[1], device=self.ids.device)
        allowed = (columns[:, None] >= columns[None, :]) & (key >= 0) & ((key == 0) | (key == query))
        allowed[:, :, 0] |= query[:, :, 0] < 0  # padding queries see one key: a softmax over none is NaN
        allowed = allowed[:, None]
        if attn_implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                           torch.finfo(dtype).min)

    def pack(self, values: Tensor) -> Tensor:
        """A [B, T] bool mask of unpacked tokens as the same tokens' [R, L] mask."""
        packed = torch.zeros(self.ids.shape, dtype=torch.bool, device=values.device)
        packed[self.row[values], self.column[values]] = True
        return packed

    def unpack(self, values: Tensor) -> Tensor:
        """[R, L, ...] values of packed tokens as [B, T, ...] values of the unpacked ones (differentiable)."""
        return values[self.row, self.column]


def pack_shared_prefixes(ids: Tensor, attention: Tensor, needed: Tensor, pairs_per_position: float) -> PackedRows | None:
    """``ids`` [B, T] right-padded (``attention`` marks real tokens) packed so that rows whose tokens agree
    before the position that predicts their first ``needed`` token share them; None when no layout beats
    the unpacked one.

    Attention computes every pair of the padded rows' positions, masked ones too, so R rows of width W cost
    R · (W · k + W²) in attention pairs, k = ``pairs_per_position`` (see ``pairs_per_position``). A group's
    rows fill packed rows first-fit, longest first, under a width cap (1 to 8 times T, or none: one row per
    group), and the cheapest of these layouts is taken if it is cheaper than the unpacked rows. Rows with
    nothing needed keep all their tokens in the prefix (their remainder is empty).
    """
    lengths = attention.sum(-1).tolist()
    needed = needed.clone()
    needed[:, 0] = False
    firsts = [int(row.nonzero()[0]) - 1 if row.any() else length for row, length in zip(needed, lengths)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (row, first) in enumerate(zip(ids.tolist(), firsts)):
        groups.setdefault(tuple(row[:first]) if first else (-1 - index,), []).append(index)  # nothing to share

    def cost(count: int, width: int) -> float:
        return count * (width * pairs_per_position + width**2)

    best, rows = cost(*ids.shape), None
    for cap in [ids.shape[1] * factor for factor in (1, 1.5, 2, 3, 4, 8)] + [float("inf")]:
        layout = _first_fit(groups, firsts, lengths, cap)
        price = cost(len(layout), max(width for _, width in layout))
        if len(layout) < len(ids) and price < best:  # some rows share
            best, rows = price, [members for members, _ in layout]
    if rows is None:
        return None
    packed_rows, positions, segments = [], [], []
    row_of, column_of = torch.zeros_like(ids), torch.zeros_like(ids)
    for packed, members in enumerate(rows):
        start = firsts[members[0]]
        tokens, where, segment = ids[members[0], :start].tolist(), list(range(start)), [0] * start
        for number, member in enumerate(members, start=1):
            end = lengths[member]
            row_of[member] = packed
            column_of[member, :start] = torch.arange(start)
            column_of[member, start:end] = torch.arange(len(tokens), len(tokens) + end - start)
            tokens += ids[member, start:end].tolist()
            where += range(start, end)
            segment += [number] * (end - start)
        packed_rows.append(tokens), positions.append(where), segments.append(segment)
    width = max(map(len, packed_rows))

    def padded(values: list[list[int]], fill: int) -> Tensor:
        return torch.tensor([row + [fill] * (width - len(row)) for row in values], dtype=torch.long, device=ids.device)

    return PackedRows(padded(packed_rows, 0), padded(positions, 0), padded(segments, -1), row_of, column_of)


def _first_fit(groups: dict, firsts: list[int], lengths: list[int], cap: float) -> list[tuple[list[int], int]]:
    """Each group's rows (longest first) into the first packed row of the group they fit in under ``cap``
    positions, else a new one: (members, width) per packed row."""
    layout = []
    for members in groups.values():
        start, rows = firsts[members[0]], []
        for member in sorted(members, key=lambda m: -lengths[m]):
            remainder = lengths[member] - start
            for row in rows:
                if row[1] + remainder <= cap:
                    row[0].append(member)
                    row[1] += remainder
                    break
            else:
                rows.append([[member], start + remainder])
        layout += [(row_members, width) for row_members, width in rows]
    return layout
