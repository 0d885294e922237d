"""Token scores without the [B, T, V] logits: log-probs and entropy computed chunk by chunk at the positions
a loss reads.

At Qwen's 151,936-token vocabulary the full logits of one 4k-token sequence are 2.5 GB in fp32, and a
log-softmax and an entropy each add as much again. Here the output layer runs on the scored positions
only, ``chunk_tokens`` of them at a time, and the backward pass recomputes a chunk's logits instead of
keeping them, so the peak holds one or two chunks' logits, whatever the sequence length
(docs/gpu-clusters.md has the measurements).

The output layer stays inside the model's forward (``ScoringHead`` replaces ``lm_head``): under FSDP2 the
root unit's parameters are gathered, and their gradients reduced, only around the root module's call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from learner.prefix import PackedRows, pack_shared_prefixes


class _ChunkedScores(torch.autograd.Function):
    """Log-probs and entropies of targets under softmax(hidden · weightᵀ / T), chunk by chunk, with a
    hand-written backward that recomputes each chunk's logits: two [chunk, V] fp32 buffers at a time,
    used in place (autograd through the plain ops keeps four or five)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_tokens: int,
                with_entropy: bool) -> tuple[Tensor, Tensor]:
        logprobs = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
        entropy, normalisers = torch.zeros_like(logprobs), torch.zeros_like(logprobs)
        for part in _chunks(hidden.shape[0], chunk_tokens):
            logits = _logits(hidden[part], weight, temperature)
            top = logits.amax(-1, keepdim=True)
            unnormalised = torch.sub(logits, top).exp_()  # log-sum-exp by hand: this buffer becomes p below
            total = unnormalised.sum(-1)
            normaliser = top.squeeze(-1) + total.log()
            normalisers[part] = normaliser
            logprobs[part] = logits.gather(-1, targets[part, None]).squeeze(-1) - normaliser
            if with_entropy:  # H = log Z − Σ p·z
                entropy[part] = normaliser - unnormalised.div_(total[:, None]).mul_(logits).sum(-1)
            del logits, unnormalised
        ctx.save_for_backward(hidden, weight, targets, normalisers, entropy)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor):
        hidden, weight, targets, normalisers, entropy = ctx.saved_tensors
        grad_hidden, grad_weight = torch.zeros_like(hidden), torch.zeros_like(weight, dtype=torch.float32)
        entropy_grad = bool(grad_entropy.ne(0).any())
        for part in _chunks(hidden.shape[0], ctx.chunk_tokens):
            # ∂/∂z of g·log p_x + g_H·H: g·(1[k = x] − p_k) − g_H·p_k·(log p_k + H)
            grad = _logits(hidden[part], weight, ctx.temperature).sub_(normalisers[part, None])  # log p
            if entropy_grad:
                probs = grad.exp()
                grad.add_(entropy[part, None]).mul_(probs).mul_(-grad_entropy[part, None])
                grad.sub_(probs.mul_(grad_logprobs[part, None]))
                del probs
            else:  # one buffer: log p → p → −g·p
                grad.exp_().mul_(-grad_logprobs[part, None])
            rows = torch.arange(grad.shape[0], device=grad.device)
            grad[rows, targets[part]] += grad_logprobs[part]
            grad = grad.div_(ctx.temperature).to(weight.dtype)
            grad_hidden[part] = grad @ weight
            grad_weight += (grad.T @ hidden[part]).float()
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, count, size)]


def _logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    logits = torch.nn.functional.linear(hidden, weight).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def chunked_token_scores(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                         chunk_tokens: int = 1024, entropy: bool = False) -> tuple[Tensor, Tensor]:
    """``hidden`` [N, H] and the output layer's ``weight`` [V, H] → (log π_T(target) [N], entropy of π_T [N])
    with π_T = softmax(hidden · weightᵀ / T); the entropy is zeros unless ``entropy``.

    Equal to the full computation (``learner.losses.sequence_logprobs`` / ``token_entropy``) in values and
    gradients; only one chunk's [chunk_tokens, V] logits exist at a time, in the forward and the backward.
    """
    return _ChunkedScores.apply(hidden, weight, targets, temperature, chunk_tokens, entropy)


@dataclass
class ScoreRequest:
    """What ``ScoringHead`` computes in the next forward pass. Positions index tokens: token ``t`` is scored
    from the hidden state at ``t - 1`` (the convention of ``learner.losses``)."""

    targets: Tensor  # [B, T] token ids
    scored: Tensor  # [B, T] bool: the tokens to score (position 0 is never scored)
    temperature: float = 1.0
    entropy: bool = False  # also the entropy at the scored tokens
    entropy_grad: bool = False  # ... with a gradient (only when the loss has an entropy term)
    kept: Tensor | None = None  # [B, T] bool: tokens whose full logits the caller reads (no gradient)
    chunk_tokens: int = 1024
    # set: rows repeating a prompt compute it once (learner.prefix), packed by this pairs_per_position
    pairs_per_position: float | None = None

    def packed(self, packing: PackedRows) -> ScoreRequest:
        """This request over ``packing``'s rows."""
        kept = packing.pack(self.kept) if self.kept is not None else None
        return replace(self, targets=packing.ids, scored=packing.pack(self.scored.bool()), kept=kept)


@dataclass
class TokenScores:
    logprobs: Tensor  # [B, T]; 0 where not scored
    entropy: Tensor | None  # [B, T] (request.entropy); 0 where not scored
    kept_logits: KeptLogits | None


class KeptLogits:
    """The logits of the requested tokens, indexed like a [B, T, V] tensor of the logits that predict each
    token: ``kept[rows, columns - 1]`` for tokens at (rows, columns) (all of them must have been kept)."""

    def __init__(self, kept: Tensor, values: Tensor):
        self.lookup = torch.full(kept.shape, -1, dtype=torch.long, device=kept.device)
        rows, columns = kept.nonzero(as_tuple=True)
        self.lookup[rows, columns - 1] = torch.arange(len(rows), device=kept.device)
        self.values = values

    def __getitem__(self, index: tuple[Tensor, Tensor]) -> Tensor:
        return self.values[self.lookup[index]]


class ScoringHead(torch.nn.Linear):
    """``lm_head`` that returns token scores instead of logits while ``request`` is set (``score``); plain
    logits otherwise. Same parameter, same name: checkpoints, LoRA and the weight sync do not see it."""

    request: ScoreRequest | None = None
    kept_logits: KeptLogits | None = None

    def forward(self, hidden: Tensor) -> Tensor:
        request = self.request
        if request is None:
            return super().forward(hidden)
        scored = request.scored.clone()
        scored[:, 0] = False
        rows, columns = scored.nonzero(as_tuple=True)
        logprobs, entropy = chunked_token_scores(hidden[rows, columns - 1], self.weight, request.targets[rows, columns],
                                                 request.temperature, request.chunk_tokens, request.entropy)
        if not request.entropy_grad:
            entropy = entropy.detach()
        self.kept_logits = None
        if request.kept is not None:
            with torch.no_grad():
                keep_rows, keep_columns = request.kept.nonzero(as_tuple=True)
                values = torch.nn.functional.linear(hidden[keep_rows, keep_columns - 1], self.weight).float()
            self.kept_logits = KeptLogits(request.kept, values / request.temperature)
        # Everything with a gradient leaves through the module's output, where FSDP2's backward hooks are
        out = hidden.new_zeros(*scored.shape, 2, dtype=torch.float32)
        if not len(rows):  # nothing to score (an empty micro-batch): its backward must still reach every
            return out + 0.0 * super().forward(hidden[:, :1]).sum()  # parameter, as FSDP's collectives need
        return out.index_put((rows, columns), torch.stack([logprobs, entropy], dim=-1))


def install_scoring_head(model: torch.nn.Module) -> None:
    """Make ``model``'s output layer a ``ScoringHead`` (in place; the weight and its tying are untouched)."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        raise ValueError(f"the model's output layer is a {type(head).__name__}, not a Linear: cannot score chunked")
    head.__class__ = ScoringHead


def score(model: torch.nn.Module, ids: Tensor, attention: Tensor, request: ScoreRequest) -> TokenScores:
    """One forward pass of ``model`` (its head installed by ``install_scoring_head``) that scores ``request``."""
    head = model.get_output_embeddings()
    packing = None
    if request.pairs_per_position is not None:
        needed = request.scored.bool() if request.kept is None else request.scored.bool() | request.kept
        packing = pack_shared_prefixes(ids, attention, needed, request.pairs_per_position)
    if packing is None:
        inputs = {"input_ids": ids, "attention_mask": attention}
    else:
        inputs = {"input_ids": packing.ids, "position_ids": packing.positions,
                  "attention_mask": packing.attention_mask(model.config._attn_implementation, model.dtype)}
    head.request = request if packing is None else request.packed(packing)
    try:
        out = model(**inputs, use_cache=False).logits
    finally:
        head.request = None
    kept, head.kept_logits = head.kept_logits, None
    if packing is not None:
        out = packing.unpack(out)
        if kept is not None:
            rows, columns = request.kept.nonzero(as_tuple=True)
            order = kept.lookup[packing.row[rows, columns], packing.column[rows, columns] - 1]
            kept = KeptLogits(request.kept, kept.values[order])
    return TokenScores(out[..., 0], out[..., 1] if request.entropy else None, kept)
