"""``launch.py bootstrap``: the embedded default policy, trained ahead of time by SFT on expert dialogs.

A from-scratch model learns the tool-call format and the tool choice quickly; copying argument values out
of the request takes many more optimizer steps. The recipe therefore spends its whole budget on many
small steps over an unlimited stream of synth train tasks (new tasks, never a repeat), with untied
input/output embeddings, and writes the result with a card that records the recipe and the greedy
success measured through the real rollout path (vLLM). ``make train`` starts RL from the committed copy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import Qwen2ForCausalLM

from learner.batch import SequenceBatch, dialog_sequence
from learner.losses import sequence_logprobs, sft_loss
from learner.models import CARD_NAME, atomic_directory, build_tokenizer, default_corpus, preset_config
from rollout.config import RewardConfig, RolloutConfig
from rollout.envs import load_tasks
from rollout.envs.synth import generate_task
from rollout.expert import expert_messages
from rollout.formats import get_format

EVAL_SAMPLE = 50  # the card's fixed sample: the first 50 tasks of synth/test (seed 0)


def expert_stream(tokenizer, seed: int, fmt: str = "hermes"):
    """Expert dialogs of synth train tasks, index after index (the generator never repeats a task)."""
    form = get_format(fmt, descriptions=False)  # as RolloutConfig.tool_descriptions defaults
    index = 0
    while True:
        task = generate_task("train", index, seed)
        yield dialog_sequence(expert_messages(task, form), tokenizer)
        index += 1


def copy_values() -> list:
    """Every kind of argument value the synth tasks use: names, files, places, companies, numbers."""
    from rollout.envs import synth_templates as t

    words = [*t.WORDS, *t.FILE_NAMES, *t.DIRS, *t.NAMES, *t.HANDLES, *t.TOPICS, *t.COMPANIES, *t.CITIES,
             *t.CURRENCIES, *t.DOORS]
    return [*words, *range(1000)]


FILLER = ("please", "use", "the", "then", "with", "for", "and", "on", "my", "to", "of", "it", "now")


def copy_stream(tokenizer, seed: int):
    """Auxiliary copy task: values inside a sentence of filler words, the same values as JSON arguments.

    It drills the one skill SFT on dialogs does not teach a from-scratch model in minutes: taking a value
    out of the request (found by what it is, not by a key) instead of emitting the most frequent one.
    """
    values, rng = copy_values(), random.Random(seed + 1)
    while True:
        picked = [rng.choice(values) for _ in range(rng.randint(1, 3))]
        words = []
        for value in picked:
            words += [rng.choice(FILLER) for _ in range(rng.randint(0, 3))] + [str(value)]
        request = "copy: " + " ".join(words + [rng.choice(FILLER) for _ in range(rng.randint(0, 2))])
        reply = json.dumps({"arguments": dict(zip(("a", "b", "c"), picked))})
        yield dialog_sequence([{"role": "user", "content": request}, {"role": "assistant", "content": reply}],
                              tokenizer)


def length_sorted_batches(stream, batch_size: int, pool: int, rng: random.Random):
    """Batches of similar length (less padding), drawn ``pool`` batches at a time, in shuffled order."""
    while True:
        sequences = sorted((next(stream) for _ in range(batch_size * pool)), key=lambda s: len(s[0]))
        batches = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield SequenceBatch([ids for ids, _ in batch], [mask for _, mask in batch])


def greedy_successes(model_dir: Path, limit: int) -> list[bool]:
    """Greedy success on each of the first ``limit`` synth/test tasks, through a RolloutWorker (vLLM)."""
    from rollout.worker import RolloutWorker, group_requests

    tasks = load_tasks("synth", "test", seed=0, limit=limit)
    worker = RolloutWorker(str(model_dir), RolloutConfig(), RewardConfig())
    requests = [r for group in group_requests(tasks, 1, seed=0, tag="eval") for r in group]
    return [t.result.success for t in worker.run(requests, temperature=0.0)]


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine to 10 % of the peak


def bootstrap(out_dir: Path, steps: int = 2000, seed: int = 0, size: str = "tiny", lr: float = 1e-3,
              batch_size: int = 8, copy_batch_size: int = 16, vocab_size: int = 4096, eval_tasks: int = 200,
              threads: int | None = None) -> Path:
    """Train the default policy and write it (HF directory + card) atomically to ``out_dir``.

    The card reports greedy success on the first ``eval_tasks`` synth/test tasks and on the first 50 of
    them alone (the fixed sample the tests re-measure).
    """
    recipe = {"steps": steps, "seed": seed, "size": size, "lr": lr, "batch_size": batch_size,
              "copy_batch_size": copy_batch_size,
              "vocab_size": vocab_size, "tied_embeddings": False, "warmup": 100, "betas": [0.9, 0.95],
              "weight_decay": 0.0, "grad_clip": 1.0, "schedule": "cosine to 10%", "data": "synth train, hermes, no tool descriptions",
              "loss": "NLL of assistant tokens (token-mean)"}
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already exists and is not empty; refusing to overwrite a model")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(default_corpus(300, seed), vocab_size)
    config = preset_config(size, tokenizer)
    config.tie_word_embeddings = False
    model = Qwen2ForCausalLM._from_config(config, attn_implementation="eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    batches = length_sorted_batches(expert_stream(tokenizer, seed), batch_size, pool=8, rng=random.Random(seed))
    copies = length_sorted_batches(copy_stream(tokenizer, seed), copy_batch_size, pool=1, rng=random.Random(seed))
    started, tokens, losses = time.perf_counter(), 0, []
    tenth = max(1, steps // 10)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("bootstrap SFT", total=steps)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            step_losses = []
            for source in (batches, copies) if copy_batch_size else (batches,):
                ids, attention, mask = next(source).padded(tokenizer.pad_token_id)
                logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
                loss, _ = sft_loss(sequence_logprobs(logits, ids), mask)
                loss.backward()
                tokens += int(attention.sum())
                step_losses.append(loss.item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, steps, lr, warmup=100)
            optimizer.step()
            losses.append(step_losses[0])  # the dialogs' loss (the copy task's is not part of the curve)
            recent = sum(losses[-tenth:]) / len(losses[-tenth:])
            progress.update(bar, advance=1, description=f"bootstrap SFT (loss {recent:.3f})")
            if (step + 1) % tenth == 0:  # also a plain line, for logs that are not a terminal
                progress.console.print(f"step {step + 1}/{steps}: loss {recent:.4f}, "
                                       f"{(time.perf_counter() - started) / 60:.1f} min", highlight=False)
    minutes = (time.perf_counter() - started) / 60
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        successes = greedy_successes(staging, eval_tasks)
        sample = successes[:EVAL_SAMPLE]
        card = {
            "recipe": recipe,
            "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_minutes": round(minutes, 1),
            "train_tokens": tokens,
            "loss_curve": [round(sum(losses[i : i + tenth]) / len(losses[i : i + tenth]), 4)
                           for i in range(0, steps, tenth)],  # mean loss per tenth of training
            f"success_synth_test_first{EVAL_SAMPLE}": sum(sample) / len(sample),
            "success_synth_test": sum(successes[:eval_tasks]) / eval_tasks,
            "eval_tasks": eval_tasks,
        }
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    return out_dir
