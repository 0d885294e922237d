"""Control-token diagnostics: probabilities at structural decision points and their logit gradients.

Multi-turn tool RL collapses through probability spikes on a few control tokens (``<|im_end|>`` or a
second ``<tool_call>`` where the call's JSON should start). These functions find the decision points in
the tokens the policy generated (``loss_mask == 1``) and report, per point and control token, the
probability the policy gives it and the gradient the policy-gradient loss puts on its logit.

Points (position ``t`` is the token being predicted, scored from the logits at ``t - 1``, as in
``learner.losses.sequence_logprobs``):

- ``message_start``: the first token of an assistant message: ``tool_call`` (``<tool_call>``: a hermes call
  rather than text, or a call in another syntax) and ``im_end`` (an empty message);
- ``call_open``: right after ``<tool_call>`` + a newline: ``healthy`` (the first token of the call's JSON,
  ``{"`` for the hermes format), ``im_end``, ``tool_call`` (another ``<tool_call>``); only the first of a
  run of ``<tool_call>`` repeats (a message looping ``<tool_call>\n<tool_call>\n…`` is one decision);
- ``call_close``: right after ``</tool_call>``: ``im_end`` and ``text`` (anything that is not ``<|im_end|>``,
  a newline or ``<tool_call>``);
- ``turn_end``: where the policy generated ``<|im_end|>``: ``im_end``;
- the JSON-grammar points inside a call (``learner.grammar``): ``call_key``, ``tool_name``,
  ``arguments_open``, ``value_end``.

The control-token masks are built over [B, L] at once, the grammar points by regular expressions over each
message's text; the softmax is taken only at the (few) selected positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.grammar import GrammarTokens, grammar_points
from learner.scoring import KeptLogits
from rollout.chat import IM_END
from rollout.envs.bfcl import api_names
from rollout.formats import HermesFormat
from rollout.types import ToolCall

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
STATISTICS = ("mean", "p99", "max")


@dataclass(frozen=True)
class TokenSet:
    """A control "token": a set of ids, or everything outside it (``complement``), e.g. ``text``."""

    ids: tuple[int, ...]
    complement: bool = False


@dataclass(frozen=True)
class ControlTokens:
    """The control token ids of one tokenizer, and the token sets reported at each decision point."""

    im_end: int
    newlines: tuple[int, ...]  # every token that decodes to newlines only ("\n", "\n\n", ...)
    call_open: int | None  # None: the vocabulary has no single <tool_call> token
    call_close: int | None
    # The first token after "<tool_call>" + newline in a rendered hermes call; None (no call_open point)
    # when the tokenizer does not render a call as <tool_call>, newline, ...
    healthy: int | None
    grammar: GrammarTokens | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ControlTokens:
        def single(text: str) -> int | None:
            ids = tokenizer.encode(text, add_special_tokens=False)
            return ids[0] if len(ids) == 1 else None

        im_end = single(IM_END)
        if im_end is None:
            raise ValueError(f"the tokenizer has no single {IM_END} token (toolrl needs the chat markup as one id)")
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        newlines = tuple(i for i, text in enumerate(texts) if text and not text.strip("\n"))
        call_open, call_close = single(CALL_OPEN), single(CALL_CLOSE)
        rendered = tokenizer.encode(HermesFormat().render([ToolCall("f", {})]), add_special_tokens=False)
        layout_ok = call_open is not None and rendered[0] == call_open and rendered[1] in newlines
        healthy = rendered[2] if layout_ok else None
        grammar = GrammarTokens.from_tokenizer(tokenizer, texts, *api_names())
        return cls(im_end, newlines, call_open, call_close, healthy, grammar)

    def points(self) -> dict[str, dict[str, TokenSet]]:
        """Per decision point this tokenizer can show, its reported token sets."""
        end = TokenSet((self.im_end,))
        points = {"message_start": {**({"tool_call": TokenSet((self.call_open,))} if self.call_open is not None
                                       else {}), "im_end": end}}
        if self.healthy is not None:
            points["call_open"] = {"healthy": TokenSet((self.healthy,)), "im_end": end,
                                   "tool_call": TokenSet((self.call_open,))}
        if self.call_close is not None:
            structure = (self.im_end, *self.newlines, *((self.call_open,) if self.call_open is not None else ()))
            points["call_close"] = {"im_end": end, "text": TokenSet(structure, complement=True)}
        points["turn_end"] = {"im_end": end}
        for point, sets in (self.grammar.sets if self.grammar else {}).items():
            points[point] = {name: TokenSet(ids) for name, ids in sets.items()}
        return points


def _previous(values: Tensor, steps: int, fill) -> Tensor:
    """[B, L] → [B, L] with ``[:, t] = values[:, t - steps]`` (``fill`` where ``t < steps``)."""
    shift = min(steps, values.shape[1])
    return torch.nn.functional.pad(values[:, : values.shape[1] - shift], (shift, 0), value=fill)


def decision_points(token_ids: Tensor, loss_mask: Tensor, tokens: ControlTokens) -> dict[str, Tensor]:
    """Per point, a [B, L] bool mask of the generated positions ``t`` that are that decision.

    A point's context tokens must be generated too (markup in the prompt, e.g. the system prompt's
    example call, is not the policy's decision).
    """
    tokens_before = {steps: _previous(token_ids, steps, -1) for steps in (1, 2, 4)}  # the tokens at t - steps
    generated = loss_mask.bool() & (torch.arange(loss_mask.shape[1], device=loss_mask.device) > 0)  # t - 1 exists
    generated_before = generated & _previous(generated, 1, False)
    found = {"message_start": generated & ~_previous(generated, 1, False)}
    if tokens.healthy is not None:
        newline = torch.isin(token_ids, torch.tensor(tokens.newlines, device=token_ids.device))
        call_open = _previous(generated, 2, False) & (tokens_before[2] == tokens.call_open)
        repeat = _previous(newline, 3, False) & (tokens_before[4] == tokens.call_open)  # its <tool_call> looped
        found["call_open"] = generated_before & call_open & _previous(newline, 1, False) & ~repeat
    if tokens.call_close is not None:
        found["call_close"] = generated_before & (tokens_before[1] == tokens.call_close)
    found["turn_end"] = generated & (token_ids == tokens.im_end)
    if tokens.grammar is not None:
        found.update(grammar_points(token_ids, loss_mask, tokens.grammar))
    return found


def decision_mask(points: dict[str, Tensor]) -> Tensor:
    """[B, L] bool: the positions of every decision point (the logits ``control_values`` reads)."""
    return torch.stack(list(points.values())).any(0)


@torch.no_grad()
def control_values(logits: Tensor | KeptLogits, token_ids: Tensor, points: dict[str, Tensor], advantages: Tensor,
                   tokens: ControlTokens) -> dict[str, Tensor]:
    """Per point, a float64 CPU tensor [N, K, 3] over its N positions (``points``, from ``decision_points``)
    and K token sets (``tokens.points()`` order): (probability p_S, "self" gradient, "other" gradient) of
    the set S. ``logits`` are [B, L, V], or the learner's ``KeptLogits`` of the decision points.

    The gradient is that of the unclipped, unnormalised policy-gradient loss ``-A · log p_x`` at each
    position (A the sequence's advantage, x the sampled token) with respect to the logits:
    ``∂L/∂z_k = -A · (1[k = x] - p_k)``. Summed over the ids of a set S it is ``-A · (1[x ∈ S] - p_S)``,
    which is the "self" part ``-A · (1 - p_S)`` where x ∈ S and the "other" part ``A · p_S`` where not.
    PPO clipping, importance weights, the loss's token-count normalisation and the KL/entropy terms are
    left out: this shows the direction RL pushes each control token, not the exact update.
    """
    values = {}
    for point, where in points.items():
        rows, columns = where.nonzero(as_tuple=True)
        probabilities = torch.softmax(logits[rows, columns - 1].double(), dim=-1)  # [N, V]
        sampled, advantage = token_ids[rows, columns], advantages[rows].double()
        per_set = []
        for token_set in tokens.points()[point].values():
            ids = torch.tensor(token_set.ids, device=token_ids.device)
            p = probabilities[:, ids].sum(-1)
            inside = torch.isin(sampled, ids)
            if token_set.complement:
                p, inside = 1.0 - p, ~inside
            zero = torch.zeros_like(p)
            per_set.append(torch.stack([p, torch.where(inside, -advantage * (1.0 - p), zero),
                                        torch.where(inside, zero, advantage * p)], dim=-1))
        values[point] = torch.stack(per_set, dim=1).cpu()
    return values


def control_metrics(values: list[dict[str, Tensor]], tokens: ControlTokens) -> dict[str, float]:
    """A step's metrics from all its ``control_values`` (every micro-batch, mini-batch, epoch and rank).

    ``control/<point>/<token>/{mean,p99,max}`` of the probability over the step's positions, and
    ``control_grad/<point>/<token>/{total,self,other}`` summed over them; a point without positions in
    the step has no metrics.
    """
    metrics = {}
    for point, names in tokens.points().items():
        parts = [v[point] for v in values if point in v and len(v[point])]
        if not parts:
            continue
        stacked = torch.cat(parts)
        for index, name in enumerate(names):
            p, self_part, other_part = stacked[:, index].unbind(-1)
            metrics[f"control/{point}/{name}/mean"] = float(p.mean())
            metrics[f"control/{point}/{name}/p99"] = float(torch.quantile(p, 0.99))
            metrics[f"control/{point}/{name}/max"] = float(p.max())
            metrics[f"control_grad/{point}/{name}/total"] = float(self_part.sum() + other_part.sum())
            metrics[f"control_grad/{point}/{name}/self"] = float(self_part.sum())
            metrics[f"control_grad/{point}/{name}/other"] = float(other_part.sum())
    return metrics
