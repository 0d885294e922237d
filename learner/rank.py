"""Learner: one FSDP2 rank per Ray actor (gloo on CPU, NCCL on GPU); RL, SFT and combined updates.

Data parallelism: every rank receives the whole batch and takes the sequences ``i % world_size == rank``
of each mini-batch (padded with empty sequences so all ranks run the same number of forward passes, which
FSDP's collectives require). Losses are normalised by the token or sequence count of the whole
mini-batch and multiplied by the world size, because FSDP averages gradients over ranks: the update is
then the same for any world size and any micro-batch size.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from learner.batch import Origin, SequenceBatch
from learner.config import LearnerConfig, warmup_cosine
from learner.diagnostics import ControlTokens, control_metrics, control_values
from learner.lora import add_adapters, load_weights, merged_weights, save_weights
from learner.losses import entropy_loss, kl_loss, policy_loss, sequence_logprobs, sft_loss, token_entropy
from learner.models import atomic_directory, load_policy

TRAINER_STATE = "trainer_state.pt"
RUN_STATE = "run_state.json"


@dataclass
class RLMiniBatch:
    """One RL optimizer step's data on this rank: its share of the mini-batch, the old and reference
    logprobs of each of its micro-batches, and the loss denominator of the whole mini-batch."""

    batch: SequenceBatch
    old_logprobs: list[torch.Tensor]
    ref_logprobs: list[torch.Tensor]
    denominator: float


def _shard(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Learner:
    """One rank. Used as a Ray actor through ``LearnerGroup`` (or in-process with world_size 1)."""

    def __init__(self, model_path: str, config: LearnerConfig, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.model_path, self.config, self.rank, self.world_size, self.seed = model_path, config, rank, world_size, seed
        torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world_size))

    def endpoint(self) -> tuple[str, int]:
        """Where rank 0 can host the process group's rendezvous: this node's address and a free port."""
        import ray

        address = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return address, free_port()

    def connect(self, master_addr: str, master_port: int) -> None:
        """Join the process group, then start the first run."""
        on_gpu = torch.cuda.is_available() and self.config.gpus_per_rank > 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=self.rank, world_size=self.world_size)
        self.start(self.config, self.seed)

    def start(self, config: LearnerConfig, seed: int) -> None:
        """A run from the model files: load and shard the policy (and the frozen reference for KL), a fresh
        optimizer. ``launch.py sweep`` calls it again to train its next run on the same actors; the process
        group, device and thread count stay (``cluster.sweep.actor_key`` says when that is allowed)."""
        self.config, self.seed = config, seed
        torch.manual_seed(seed)
        model, self.tokenizer = load_policy(self.model_path, "float32", config.attn_implementation)
        if config.lora is not None:
            model = add_adapters(model, config.lora)
        self.control_tokens = ControlTokens.from_tokenizer(self.tokenizer)
        self.model = _shard(model.to(self.device))
        self.reference = None
        if config.kl_coef > 0:
            reference, _ = load_policy(self.model_path, "float32", config.attn_implementation)
            self.reference = _shard(reference.to(self.device).eval().requires_grad_(False))
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # learner.lora: the adapters only
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.optimizer_step = 0  # updates applied (a skipped non-finite step is not one): warmup counts these
        self.skipped_steps = 0

    # ---- data layout ------------------------------------------------------------------------------------
    def _local(self, batch: SequenceBatch, by_length: bool = True) -> SequenceBatch:
        """This rank's share, padded to the same length on every rank with empty (all-masked) sequences.

        Sorted by length unless the caller needs the original order: micro-batches of similar lengths
        waste little compute on padding, and a loss summed over sequences does not depend on their order.
        """
        mine = list(range(self.rank, len(batch), self.world_size))
        if by_length:
            mine.sort(key=lambda i: len(batch.token_ids[i]))
        return batch.select(mine).padded_to(math.ceil(len(batch) / self.world_size), self.tokenizer.pad_token_id,
                                            like=batch)

    def _micro_batches(self, batch: SequenceBatch):
        size = self.config.micro_batch_size
        for start in range(0, len(batch), size):
            part = batch.select(list(range(start, min(start + size, len(batch)))))
            ids, attention, mask = (t.to(self.device) for t in part.padded(self.tokenizer.pad_token_id))
            yield part, ids, attention, mask

    def _logits(self, model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
        """Logits of the distribution the batch's tokens were sampled from: π_T has logits / T."""
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
        return logits / temperature if temperature != 1.0 else logits

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, batch: SequenceBatch) -> list[torch.Tensor]:
        return [sequence_logprobs(self._logits(model, ids, attention, batch.temperature), ids)
                for _, ids, attention, _ in self._micro_batches(batch)]

    def _denominator(self, batch: SequenceBatch) -> float:
        count = batch.tokens() if self.config.aggregation == "token-mean" else len(batch)
        return max(count, 1) / self.world_size  # FSDP divides the summed gradients by world_size again

    def _lr(self, peak: float) -> float:
        """Linear warmup over the first updates actually applied; the caller's ``lr_scale`` does the rest."""
        return peak * warmup_cosine(self.optimizer_step, self.config.warmup_steps)

    # ---- one optimizer step -----------------------------------------------------------------------------
    def _optimizer_step(self, rl: RLMiniBatch | None, sft: SequenceBatch | None, sft_weight: float, peak_lr: float,
                        sft_denominator: float = 1.0, control: list | None = None) -> dict[str, float]:
        """Accumulate gradients of ``L_rl + sft_weight · L_sft`` over micro-batches, clip, step (or skip).

        ``control`` collects each RL micro-batch's control-token values (learner.diagnostics).
        """
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def record(metrics: dict[str, float]) -> None:
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1

        self.optimizer.zero_grad(set_to_none=True)
        losses = {"pg_loss": 0.0, "sft_loss": 0.0}  # this rank's share of each loss, summed over micro-batches
        if rl is not None:
            losses["pg_loss"] = self._rl_backward(rl, record, control)
        if sft is not None:
            losses["sft_loss"] = self._sft_backward(sft, sft_weight, sft_denominator, record)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        lr = self._lr(peak_lr)
        if math.isfinite(grad_norm):  # every rank sees the same global norm, so all skip together
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.optimizer_step += 1
        else:
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
        totals = torch.tensor(list(losses.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)  # each rank's share was scaled by world_size (see _denominator)
        losses = {key: float(total) / self.world_size for key, total in zip(losses, totals.cpu())}
        present = {"pg_loss": rl is not None, "sft_loss": sft is not None}
        averaged = {key: sums[key] / counts[key] for key in sums}
        return {**averaged, **{k: v for k, v in losses.items() if present[k]}, "grad_norm": grad_norm, "lr": lr, "skipped_steps": float(self.skipped_steps)}

    def _rl_backward(self, rl: RLMiniBatch, record: Callable[[dict[str, float]], None],
                     control: list | None) -> float:
        """Gradients of the policy loss (with the entropy and KL terms) over ``rl``'s micro-batches; returns
        this rank's summed policy loss."""
        cfg, batch, total = self.config, rl.batch, 0.0
        for index, (part, ids, attention, mask) in enumerate(self._micro_batches(batch)):
            logits = self._logits(self.model, ids, attention, batch.temperature)
            logprobs = sequence_logprobs(logits, ids)
            advantages = torch.tensor(part.advantages, device=self.device)
            shaped, weights = self._off_policy_terms(part, rl.old_logprobs[index])
            loss, metrics = policy_loss(logprobs, rl.old_logprobs[index], advantages, mask, cfg.clip_low,
                                        cfg.clip_high, cfg.dual_clip, cfg.aggregation, rl.denominator,
                                        shaped, part.shaped_gamma or 0.0, weights)
            total += loss.item()
            record(metrics)
            if control is not None:
                control.append(control_values(logits, ids, mask, advantages, self.control_tokens))
            entropy, entropy_metrics = entropy_loss(token_entropy(logits), mask, cfg.aggregation, rl.denominator)
            record(entropy_metrics)
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * entropy
            if self.reference is not None:
                kl, kl_metrics = kl_loss(logprobs, rl.ref_logprobs[index], mask, cfg.aggregation, rl.denominator)
                record(kl_metrics)
                loss = loss + cfg.kl_coef * kl
            loss.backward()
        return total

    def _sft_backward(self, sft: SequenceBatch, weight: float, denominator: float,
                      record: Callable[[dict[str, float]], None]) -> float:
        """Gradients of ``weight`` × the SFT loss over ``sft``'s micro-batches; returns this rank's summed loss."""
        total = 0.0
        for _, ids, attention, mask in self._micro_batches(sft):
            logprobs = sequence_logprobs(self._logits(self.model, ids, attention), ids)
            loss, metrics = sft_loss(logprobs, mask, self.config.aggregation, denominator)
            total += loss.item()
            record({"sft_nll": metrics["sft_nll"]})
            (weight * loss).backward()
        return total

    def _off_policy_terms(self, part: SequenceBatch, old: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Which rows take the shaped objective, and the hint rows' truncated importance weights."""
        rows = range(len(part))
        shaped = None
        if part.shaped_gamma is not None and any(part.origin(i) == Origin.EXPERT for i in rows):
            shaped = torch.tensor([part.origin(i) == Origin.EXPERT for i in rows], device=self.device)
        weights = None
        if part.hint_importance_cap is not None and any(part.origin(i) == Origin.HINT for i in rows):
            weights = torch.ones_like(old)
            for i in rows:
                if part.origin(i) == Origin.HINT:
                    sampled = torch.tensor(part.sampling_logprobs[i], device=self.device)
                    # π(y | no hint) / π(y | hint): the learner's recomputed old logprobs over the engine's
                    ratio = torch.exp(old[i, : len(sampled)] - sampled)
                    weights[i, : len(sampled)] = torch.clamp(ratio, max=part.hint_importance_cap)
        return shaped, weights

    def _mini_batches(self, batch: SequenceBatch, size: int) -> list[SequenceBatch]:
        size = size or len(batch) or 1
        return [batch.select(list(range(s, min(s + size, len(batch))))) for s in range(0, len(batch), size)]

    def _rl_parts(self, batch: SequenceBatch, group_size: int) -> tuple[list[RLMiniBatch], list[float]]:
        """Mini-batches of whole groups, each with this rank's share and its old/reference logprobs.

        Also returns how far the engine's sampling logprobs are from the learner's: near zero when the
        rollout weights are the learner's (fp32 on both sides), large when a weight sync went wrong.
        """
        prepared, differences = [], []
        for mini in self._mini_batches(batch, self.config.mini_batch_tasks * group_size):
            local = self._local(mini)
            old = self._logprobs(self.model, local)  # recomputed under the current weights, as verl does
            ref = self._logprobs(self.reference, local) if self.reference is not None else []
            prepared.append(RLMiniBatch(local, old, ref, self._denominator(mini)))
            if local.sampling_logprobs:
                rows = [row for part in old for row in part]
                for i, (row, sampled, mask) in enumerate(zip(rows, local.sampling_logprobs, local.loss_mask)):
                    if local.origin(i) == Origin.POLICY:
                        differences += [abs(row[t].item() - sampled[t]) for t in range(len(mask)) if mask[t]]
        return prepared, differences

    def _control_metrics(self, control: list) -> dict[str, float]:
        """The step's control-token metrics over the positions of every rank (all ranks must call it)."""
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, control)
        return control_metrics([values for rank in gathered for values in rank], self.control_tokens)

    @staticmethod
    def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
        return {key: sum(m[key] for m in metrics) / len(metrics) for key in metrics[0]} if metrics else {}

    # ---- public API -------------------------------------------------------------------------------------
    def rl_update(self, batch: SequenceBatch, group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        """GRPO steps over ``batch`` at ``lr_scale`` × learner.lr (the run's schedule; mode adaptive lowers it
        after alarms)."""
        prepared, differences = self._rl_parts(batch, group_size)
        control: list = []  # control-token values of every micro-batch of the step
        metrics = [self._optimizer_step(rl, None, 0.0, self.config.lr * lr_scale, control=control)
                   for _ in range(self.config.ppo_epochs) for rl in prepared]
        return {**self._mean(metrics), **_difference_metrics(differences), **self._control_metrics(control)}

    @torch.no_grad()
    def control_probe(self, batch: SequenceBatch) -> dict[str, float]:
        """The control-token metrics of ``batch`` under the current weights, from a forward pass alone.

        For steps whose samples no update saw: when every group is flat (after a collapse, every step),
        nothing trains, yet the control tokens are what should be watched then.
        """
        control = [control_values(self._logits(self.model, ids, attention, batch.temperature), ids, mask,
                                  torch.tensor(part.advantages, device=self.device), self.control_tokens)
                   for part, ids, attention, mask in self._micro_batches(self._local(batch))]
        return self._control_metrics(control)

    def sft_update(self, batch: SequenceBatch, lr: float | None = None, lr_scale: float = 1.0) -> dict[str, float]:
        """SFT steps over ``batch`` at ``lr_scale`` × ``lr`` (default: learner.sft_lr, else learner.lr)."""
        peak = (lr or self.config.sft_lr or self.config.lr) * lr_scale
        metrics = []
        for mini in self._mini_batches(batch, self.config.sft_mini_batch_size):
            metrics.append(self._optimizer_step(None, self._local(mini), 1.0, peak, self._denominator(mini)))
        return self._mean(metrics)

    def combined_update(self, rl_batch: SequenceBatch, sft_batch: SequenceBatch, sft_weight: float,
                        group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        """Optimizer steps on ``L_rl + sft_weight · L_sft``: the SFT batch is split across the RL mini-batches."""
        prepared, differences = self._rl_parts(rl_batch, group_size)
        if not prepared:  # no group carried an RL signal: the λ-weighted SFT term alone
            prepared = [None]
        sft_parts, control = _split_even(sft_batch, len(prepared)), []
        metrics = [self._optimizer_step(rl, self._local(sft), sft_weight, self.config.lr * lr_scale,
                                        self._denominator(sft), control)
                   for _ in range(self.config.ppo_epochs) for rl, sft in zip(prepared, sft_parts)]
        return {**self._mean(metrics), **_difference_metrics(differences), **self._control_metrics(control)}

    def logprobs(self, batch: SequenceBatch) -> list[list[float]]:
        """Per-token logprobs of every sequence under the current weights (on rank 0; others get [])."""
        local = self._local(batch, by_length=False)
        rows = [row.tolist() for part in self._logprobs(self.model, local) for row in part]
        rows = [row[: len(ids)] for row, ids in zip(rows, local.token_ids)]
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if self.rank != 0:
            return []
        return [gathered[i % self.world_size][i // self.world_size] for i in range(len(batch))]

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        """Full weights with HF names (LoRA merged in), gathered once on rank 0 (other ranks return {})."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return merged_weights(self.model, full) if self.rank == 0 else {}

    def save(self, directory: str, run_state: dict) -> None:
        """HF model (LoRA: merged, and the adapter) + tokenizer + optimizer/step/RNG + run state, atomically."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=options)
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        if self.rank == 0:
            with atomic_directory(directory) as staging:
                save_weights(self.model, weights, staging, self.model_path)
                self.tokenizer.save_pretrained(staging)
                torch.save({"optimizer": optimizer, "optimizer_step": self.optimizer_step,
                            "skipped_steps": self.skipped_steps, "rng": torch.get_rng_state()}, staging / TRAINER_STATE)
                (staging / RUN_STATE).write_text(json.dumps(run_state, indent=1))
        dist.barrier()

    def load(self, directory: str) -> dict:
        """Restore weights (LoRA: the adapter), optimizer and counters from ``save``; returns the run state."""
        directory = Path(directory)
        load_weights(self.model, directory)
        options = StateDictOptions(full_state_dict=True)
        state = torch.load(directory / TRAINER_STATE, weights_only=False)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        self.optimizer_step, self.skipped_steps = state["optimizer_step"], state["skipped_steps"]
        torch.set_rng_state(state["rng"])
        return json.loads((directory / RUN_STATE).read_text())

    def ready(self) -> bool:
        return True


def _difference_metrics(differences: list[float]) -> dict[str, float]:
    if not differences:
        return {}
    return {"rollout_logprob_diff": sum(differences) / len(differences), "rollout_logprob_diff_max": max(differences)}


def _split_even(batch: SequenceBatch, parts: int) -> list[SequenceBatch]:
    """``parts`` consecutive slices whose sizes differ by at most one (some may be empty)."""
    bounds = [round(i * len(batch) / parts) for i in range(parts + 1)]
    return [batch.select(list(range(bounds[i], bounds[i + 1]))) for i in range(parts)]
