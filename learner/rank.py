"""Learner: one FSDP2 rank per Ray actor (gloo on CPU, NCCL on GPU); RL, SFT and combined updates.

Data parallelism: every rank receives the whole batch and takes its share of each mini-batch, in
micro-batches (``learner.layout``). Losses are normalised by the token or sequence count of the whole
mini-batch and multiplied by the world size, because FSDP averages gradients over ranks: the update is
then the same for any world size and any micro-batch size.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from learner.batch import RLMiniBatch, SequenceBatch
from learner.config import LearnerConfig, warmup_cosine
from learner.diagnostics import ControlTokens, control_metrics, control_values, decision_mask, decision_points
from learner.layout import forward_positions, micro_batches, split_even
from learner.lora import add_adapters, load_weights, merged_weights, save_weights
from learner.losses import entropy_loss, kl_loss, policy_loss, sft_loss
from learner.models import atomic_directory, load_policy
from learner.prefix import pairs_per_position
from learner.scoring import ScoreRequest, TokenScores, install_scoring_head, score
from learner.terms import behaviour_weight_metrics, difference_metrics, off_policy_terms, sampling_differences
from rollout.config import thread_counts

TRAINER_STATE = "trainer_state.pt"
RUN_STATE = "run_state.json"


def _shard(model: torch.nn.Module, mesh, config: LearnerConfig) -> torch.nn.Module:
    """FSDP2 units: each decoder layer, then the rest. The model arrives on the CPU; fully_shard moves each
    unit's shard to the mesh's device, so a rank never holds the whole model there."""
    policy = MixedPrecisionPolicy(param_dtype=getattr(torch, config.param_dtype),
                                  reduce_dtype=getattr(torch, config.reduce_dtype))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Learner:
    """One rank. Used as a Ray actor through ``LearnerGroup`` (or in-process with world_size 1)."""

    def __init__(self, model_path: str, config: LearnerConfig, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.model_path, self.config, self.rank, self.world_size, self.seed = model_path, config, rank, world_size, seed
        self.threads, self.shared_threads = thread_counts(config.threads, world_size, config.cpus_per_rank)
        torch.set_num_threads(self.threads)

    def share_cores(self, shared: bool) -> None:
        """Beside sampling (one_step_off), the rank's reserved CPUs: more OpenMP threads than free cores stall."""
        torch.set_num_threads(self.shared_threads if shared else self.threads)

    def endpoint(self) -> tuple[str, int]:
        """Where rank 0 can host the process group's rendezvous: this node's address and a free port."""
        import ray

        address = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return address, free_port()

    def connect(self, master_addr: str, master_port: int) -> None:
        """Join the process group, then start the first run."""
        on_gpu = torch.cuda.is_available() and self.config.gpus_per_rank > 0
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        if on_gpu:
            torch.cuda.set_device(self.device)  # NCCL binds each rank to its current device
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=self.rank, world_size=self.world_size)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        check = torch.ones(1, device=self.device)
        dist.all_reduce(check)  # a broken NCCL or gloo setup fails here, at connect, not at step 1
        if int(check.item()) != self.world_size:
            raise RuntimeError(f"process group check: all_reduce gave {int(check.item())}, expected {self.world_size}")
        self.start(self.config, self.seed)

    def start(self, config: LearnerConfig, seed: int) -> None:
        """A run from the model files: load and shard the policy (and the frozen reference for KL), a fresh
        optimizer. ``launch.py sweep`` calls it again to train its next run on the same actors; the process
        group, device and thread count stay (``cluster.sweep.actor_key`` says when that is allowed)."""
        self.config, self.seed = config, seed
        torch.manual_seed(seed)
        model, self.tokenizer = load_policy(self.model_path, "float32", config.attn_implementation)
        install_scoring_head(model)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()  # transformers checkpoints layers in training mode only (Qwen2 has no dropout)
        if config.lora is not None:
            model = add_adapters(model, config.lora)
        self.control_tokens = ControlTokens.from_tokenizer(self.tokenizer)
        self.pairs_per_position = pairs_per_position(model) if config.shared_prefix else None
        self.model = _shard(model, self.mesh, config)
        self.reference = None
        if config.kl_coef > 0:
            reference, _ = load_policy(self.model_path, "float32", config.attn_implementation)
            install_scoring_head(reference)
            self.reference = _shard(reference.eval().requires_grad_(False), self.mesh, config)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # learner.lora: the adapters only
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas,
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.optimizer_step = 0  # updates applied (a skipped non-finite step is not one): warmup counts these
        self.skipped_steps = 0

    # ---- data layout ------------------------------------------------------------------------------------
    def _local(self, batch: SequenceBatch, by_length: bool = True) -> list[SequenceBatch]:
        """This rank's share of ``batch`` in micro-batches (``learner.layout``)."""
        return micro_batches(batch, self.rank, self.world_size, self.config.micro_batch_size,
                             self.config.micro_batch_tokens, self.tokenizer.pad_token_id, by_length,
                             self.config.shared_prefix)

    def _tensors(self, part: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(t.to(self.device) for t in part.padded(self.tokenizer.pad_token_id))

    def _score(self, model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor, scored: torch.Tensor,
               temperature: float = 1.0, entropy: bool = False, kept: torch.Tensor | None = None) -> TokenScores:
        """Log-probs (and entropy) at the ``scored`` tokens under π_T, the distribution the batch's tokens
        were sampled from (logits / T), with the output layer in chunks (``learner.scoring``)."""
        request = ScoreRequest(ids, scored.bool(), temperature, entropy, entropy and self.config.entropy_coef > 0,
                               kept, self.config.logits_chunk_tokens, self.pairs_per_position)
        return score(model, ids, attention, request)

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, parts: list[SequenceBatch]) -> list[torch.Tensor]:
        """Per micro-batch, [B, T] log-probs at the loss tokens."""
        results = []
        for part in parts:
            ids, attention, mask = self._tensors(part)
            results.append(self._score(model, ids, attention, mask, part.temperature).logprobs)
        return results

    def _denominator(self, batch: SequenceBatch) -> float:
        count = batch.tokens() if self.config.aggregation == "token-mean" else len(batch)
        return max(count, 1) / self.world_size  # FSDP divides the summed gradients by world_size again

    def _lr(self, peak: float) -> float:
        """Linear warmup over the first updates actually applied; the caller's ``lr_scale`` does the rest."""
        return peak * warmup_cosine(self.optimizer_step, self.config.warmup_steps)

    # ---- one optimizer step -----------------------------------------------------------------------------
    def _optimizer_step(self, rl: RLMiniBatch | None, sft: list[SequenceBatch] | None, sft_weight: float, peak_lr: float,
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
        cfg, total = self.config, torch.zeros((), device=self.device)
        for index, part in enumerate(rl.batch):
            ids, attention, mask = self._tensors(part)
            advantages = torch.tensor(part.advantages, device=self.device)
            points = decision_points(ids, mask, self.control_tokens) if control is not None else None
            kept = decision_mask(points) if points is not None else None
            scores = self._score(self.model, ids, attention, mask, part.temperature, entropy=True, kept=kept)
            if rl.old_logprobs[index] is None:  # the weights are still those the batch was sampled with
                rl.old_logprobs[index] = scores.logprobs.detach()
                rl.differences += sampling_differences(part, rl.old_logprobs[index], mask)
            shaped, weights = off_policy_terms(part, rl.old_logprobs[index])
            record(behaviour_weight_metrics(part, rl.old_logprobs[index], mask))
            loss, metrics = policy_loss(scores.logprobs, rl.old_logprobs[index], advantages, mask, cfg.clip_low,
                                        cfg.clip_high, cfg.dual_clip, cfg.aggregation, rl.denominator,
                                        shaped, part.shaped_gamma or 0.0, weights)
            total += loss.detach()
            record(metrics)
            if control is not None:
                control.append(control_values(scores.kept_logits, ids, points, advantages, self.control_tokens))
            entropy, entropy_metrics = entropy_loss(scores.entropy, mask, cfg.aggregation, rl.denominator)
            record(entropy_metrics)
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * entropy
            if self.reference is not None:
                kl, kl_metrics = kl_loss(scores.logprobs, rl.ref_logprobs[index], mask, cfg.aggregation,
                                         rl.denominator)
                record(kl_metrics)
                loss = loss + cfg.kl_coef * kl
            loss.backward()
        return float(total)

    def _sft_backward(self, sft: list[SequenceBatch], weight: float, denominator: float,
                      record: Callable[[dict[str, float]], None]) -> float:
        """Gradients of ``weight`` × the SFT loss over the micro-batches ``sft``; returns this rank's summed loss."""
        total = torch.zeros((), device=self.device)
        for part in sft:
            ids, attention, mask = self._tensors(part)
            loss, metrics = sft_loss(self._score(self.model, ids, attention, mask).logprobs, mask,
                                     self.config.aggregation, denominator)
            total += loss.detach()
            record({"sft_nll": metrics["sft_nll"]})
            (weight * loss).backward()
        return float(total)

    def _mini_batches(self, batch: SequenceBatch, size: int) -> list[SequenceBatch]:
        size = size or len(batch) or 1
        return [batch.select(list(range(s, min(s + size, len(batch))))) for s in range(0, len(batch), size)]

    def _rl_parts(self, batch: SequenceBatch, group_size: int) -> list[RLMiniBatch]:
        """Mini-batches of whole groups, each with this rank's share and its old/reference logprobs.

        The first mini-batch is trained on before any step changes the weights, so its old logprobs come
        from its own first forward pass (without a pass of their own); the later ones' are computed now,
        under the weights the batch was sampled with.
        """
        prepared = []
        for index, mini in enumerate(self._mini_batches(batch, self.config.mini_batch_tasks * group_size)):
            local = self._local(mini)
            old = self._logprobs(self.model, local) if index else [None] * len(local)
            ref = self._logprobs(self.reference, local) if self.reference is not None else []
            differences = [value for part, logprobs in zip(local, old) if logprobs is not None
                           for value in sampling_differences(part, logprobs, self._tensors(part)[2])]
            prepared.append(RLMiniBatch(local, old, ref, self._denominator(mini), differences))
        return prepared

    def _control_metrics(self, control: list) -> dict[str, float]:
        """The step's control-token metrics over the positions of every rank (all ranks must call it)."""
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, control)
        return control_metrics([values for rank in gathered for values in rank], self.control_tokens)

    def _release_cache(self) -> None:
        """Hand the update's cached activation memory back to the GPU, where the engine may need it."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _mean(metrics: list[dict[str, float]]) -> dict[str, float]:
        return {key: sum(m[key] for m in metrics) / len(metrics) for key in metrics[0]} if metrics else {}

    # ---- public API -------------------------------------------------------------------------------------
    def rl_update(self, batch: SequenceBatch, group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        """GRPO steps over ``batch`` at ``lr_scale`` × learner.lr (the run's schedule; mode adaptive lowers it
        after alarms)."""
        prepared = self._rl_parts(batch, group_size)
        control: list = []  # control-token values of every micro-batch of the step
        metrics = [self._optimizer_step(rl, None, 0.0, self.config.lr * lr_scale, control=control)
                   for _ in range(self.config.ppo_epochs) for rl in prepared]
        self._release_cache()
        differences = [value for rl in prepared for value in rl.differences]
        return {**self._mean(metrics), **difference_metrics(differences), **self._control_metrics(control),
                **forward_positions([part for rl in prepared for part in rl.batch], self.pairs_per_position)}

    @torch.no_grad()
    def control_probe(self, batch: SequenceBatch) -> dict[str, float]:
        """The control-token metrics of ``batch`` under the current weights, from a forward pass alone.

        For steps whose samples no update saw: when every group is flat (after a collapse, every step),
        nothing trains, yet the control tokens are what should be watched then.
        """
        control = []
        for part in self._local(batch):
            ids, attention, mask = self._tensors(part)
            points = decision_points(ids, mask, self.control_tokens)
            where = decision_mask(points)
            kept = self._score(self.model, ids, attention, where, part.temperature, kept=where).kept_logits
            control.append(control_values(kept, ids, points, torch.tensor(part.advantages, device=self.device),
                                          self.control_tokens))
        return self._control_metrics(control)

    def sft_update(self, batch: SequenceBatch, lr: float | None = None, lr_scale: float = 1.0) -> dict[str, float]:
        """SFT steps over ``batch`` at ``lr_scale`` × ``lr`` (default: learner.sft_lr, else learner.lr)."""
        peak = (lr or self.config.sft_lr or self.config.lr) * lr_scale
        metrics = []
        for mini in self._mini_batches(batch, self.config.sft_mini_batch_size):
            metrics.append(self._optimizer_step(None, self._local(mini), 1.0, peak, self._denominator(mini)))
        self._release_cache()
        return self._mean(metrics)

    def combined_update(self, rl_batch: SequenceBatch, sft_batch: SequenceBatch, sft_weight: float,
                        group_size: int, lr_scale: float = 1.0) -> dict[str, float]:
        """Optimizer steps on ``L_rl + sft_weight · L_sft``: the SFT batch is split across the RL mini-batches."""
        prepared = self._rl_parts(rl_batch, group_size) or [None]  # None: the λ-weighted SFT term alone
        sft_parts, control = split_even(sft_batch, len(prepared)), []
        metrics = [self._optimizer_step(rl, self._local(sft), sft_weight, self.config.lr * lr_scale,
                                        self._denominator(sft), control)
                   for _ in range(self.config.ppo_epochs) for rl, sft in zip(prepared, sft_parts)]
        self._release_cache()
        differences = [value for rl in prepared if rl for value in rl.differences]
        return {**self._mean(metrics), **difference_metrics(differences), **self._control_metrics(control),
                **forward_positions([part for rl in prepared if rl for part in rl.batch], self.pairs_per_position)}

    @torch.no_grad()
    def logprobs(self, batch: SequenceBatch) -> list[list[float]]:
        """Per-token logprobs of every sequence under the current weights (on rank 0; others get [])."""
        local = self._local(batch, by_length=False)
        rows = []
        for part in local:  # every token's log-prob, not only the loss tokens'
            ids, attention, _ = self._tensors(part)
            rows += self._score(self.model, ids, attention, attention, part.temperature).logprobs.tolist()
        rows = [row[: len(ids)] for row, ids in zip(rows, [ids for part in local for ids in part.token_ids])]
        gathered = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(rows, gathered, dst=0)
        if self.rank != 0:
            return []
        return [gathered[i % self.world_size][i // self.world_size] for i in range(len(batch))]

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        """Full weights with HF names (LoRA merged in), gathered once on rank 0 (other ranks return {})."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return merged_weights(self.model, full) if self.rank == 0 else {}

    def rollout_weights(self, dtype: str) -> list | None:
        """The full weights gathered on rank 0 in the engines' ``dtype``, one object-store copy for all engines:
        ``[ref]`` on rank 0 (a list: the caller borrows the ref, not the tensors), None on the others."""
        import ray

        state = self.state_dict_for_rollout()
        if self.rank != 0:
            return None
        target = getattr(torch, dtype)
        return [ray.put({name: tensor.to(target) if tensor.is_floating_point() else tensor
                         for name, tensor in state.items()})]

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
                            "skipped_steps": self.skipped_steps, "rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                           staging / TRAINER_STATE)
                (staging / RUN_STATE).write_text(json.dumps(run_state, indent=1))
        dist.barrier()

    def load(self, directory: str) -> dict:
        """Restore weights (LoRA: the adapter), optimizer and counters from ``save``; returns the run state."""
        directory = Path(directory)
        self.model.reshard()  # after a forward without backward FSDP2 keeps the root's parameters unsharded
        load_weights(self.model, directory)
        options = StateDictOptions(full_state_dict=True)
        state = torch.load(directory / TRAINER_STATE, weights_only=False)
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        self.optimizer_step, self.skipped_steps = state["optimizer_step"], state["skipped_steps"]
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return json.loads((directory / RUN_STATE).read_text())

    def gpu_ids(self) -> list:
        import ray

        return ray.get_gpu_ids()

