"""``launch.py bootstrap``: the embedded default policy, trained ahead of time by SFT on expert dialogs.

A from-scratch model learns the tool-call format and the tool choice quickly; copying argument values out
of the request takes many more optimizer steps. The recipe therefore spends its whole budget on many
small steps over an unlimited stream of synth train tasks (new tasks, never a repeat), with untied
input/output embeddings, and writes the result with a card that records the recipe and the greedy
success measured through the real rollout path (vLLM). ``make train`` starts RL from the committed copy.

Its start is toolrl's own default built from nothing: a byte-level BPE tokenizer trained on the task corpus
(Qwen2.5 markup tokens and chat layout) and a randomly initialised Qwen2-architecture model, saved as an
ordinary HF directory so transformers and vLLM load it like any downloaded checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from learner.batch import SequenceBatch, dialog_sequence
from learner.card import measure_card
from learner.config import BOOTSTRAP_STEPS, warmup_cosine
from learner.losses import sequence_logprobs, sft_loss
from learner.models import CARD_NAME, atomic_directory, load_policy
from rollout.chat import CHAT_TEMPLATE, IM_END, PAD, SPECIAL_TOKENS, render_dialog
from rollout.dialogs import expert_messages, ground_truth_results
from rollout.envs import load_tasks
from rollout.envs.synth import content_key, generate_task
from rollout.formats import FORMATS, get_format
from rollout.variants import mistaken_calls

MAX_POSITIONS = 2048


def _split_at_special_tokens(text: str) -> list[str]:
    pieces = [text]
    for token in SPECIAL_TOKENS:
        pieces = [part for piece in pieces for part in piece.split(token)]
    return pieces


# Every digit chunk of one to three digits, leading zeros included, often enough for BPE to merge it whole.
NUMBER_CHUNKS = [" ".join(f"{n:0{width}d}" for width in (1, 2, 3) for n in range(10**width))] * 8


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``corpus``, with the chat markup as single, never-split special tokens."""
    tokenizer = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word has one id whether it follows a space (in a request) or a
    # quote (as a JSON argument): copying a value is then copying ids, which a small model learns quickly;
    # with GPT-2 style " word" tokens it must also learn a mapping from " word" to "word" for every value.
    # Digit runs are cut into chunks of at most three digits, and the corpus below holds every such chunk,
    # so any number up to 999 (and "003" in "USR003") is one id: a tiny model copies one id far more
    # reliably than a run of single-digit ids (measured: multi-digit values were most of its errors).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", "isolated"),
        pre_tokenizers.Split(Regex(r"\d{1,3}"), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The trainer does not extract added tokens, so the markup is cut out first: otherwise merges like
    # "<tool_" would be learnt from it and spend vocabulary on strings that always encode as one id.
    texts = itertools.chain((piece for text in corpus for piece in _split_at_special_tokens(text)), NUMBER_CHUNKS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,  # Qwen prepends nothing; every dialog starts with <|im_start|>
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def default_corpus(n_tasks: int, seed: int) -> list[str]:
    """Expert dialogs of synth train tasks in every format, plus every BFCL train tool spec once."""
    tasks = load_tasks("synth", "train", seed=seed, limit=n_tasks)
    dialogs = [render_dialog(expert_messages(task, fmt)) for fmt in FORMATS.values() for task in tasks]
    specs = {
        json.dumps(spec, ensure_ascii=False, separators=(",", ":"))
        for task in load_tasks("bfcl", "train", seed=seed)
        for spec in [*task.tools, *(s for revealed in task.revealed_tools.values() for s in revealed)]
    }
    return dialogs + sorted(specs)


SIZE_PRESETS: dict[str, dict] = {
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 768},
    "small": {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4,
              "intermediate_size": 1536},
}


def preset_config(size: str, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    if size not in SIZE_PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZE_PRESETS)}")
    return Qwen2Config(
        **SIZE_PRESETS[size],
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def build_default_model(
    out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, vocab_size: int = 4096, n_tasks: int = 300
) -> Path:
    """Tokenizer + randomly initialised Qwen2 written atomically to ``out_dir``; same arguments, same bytes."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; refusing to overwrite a model")
    tokenizer = build_tokenizer(default_corpus(n_tasks, seed), vocab_size)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(preset_config(size, tokenizer))
    card = {
        "size": size,
        "seed": seed,
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_n_tasks": n_tasks,
    }
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    return out_dir


@dataclass(frozen=True)
class CorpusMix:
    """What the bootstrap dialogs are made of. The defaults are the committed default's recipe: expert
    dialogs of synth train tasks in hermes, from task 0 on.

    A mix that plays the role of a pretrained model sees every syntax and the held-out templates, and has
    generic habits (rollout/variants.py) that this environment's checker rejects, at ``mistake_rate``: one
    share for every kind, or a share per kind (``(("shortcut", 0.7), ("skip_setup", 0.2))``, others 0). A
    share above one half makes the habit the policy's most likely action on the turns it applies to. With
    ``habits_per_task`` a dialog's first turn of a kind decides that kind for all its turns, so a task is
    played with the habit throughout or not at all and its success rests on one decision, not one per turn.
    """

    formats: tuple[tuple[str, float], ...] = (("hermes", 1.0),)
    ood_share: float = 0.0  # dialogs of the held-out templates (the content-OOD suite's kind, other tasks)
    mistake_rate: float | tuple[tuple[str, float], ...] = 0.0  # of the turns a habit applies to, the share played with it
    first_index: int = 0  # 1000: task indices below it are RL's train split, the bootstrap then uses none
    copy_max_number: int = 999  # the copy drill's largest number; tasks also use 4-5 digit ids and amounts
    habits_per_task: bool = False

    def habit_rate(self, kind: str) -> float:
        if isinstance(self.mistake_rate, (int, float)):
            return float(self.mistake_rate)
        return dict(self.mistake_rate).get(kind, 0.0)


def mixed_stream(tokenizer, seed: int, mix: CorpusMix, counts: Counter | None = None):
    """Dialogs of synth tasks from index ``mix.first_index`` on (never a content-OOD eval task), in the mix's
    syntaxes, some turns played with a habit; ``counts`` tallies formats, splits and habits for the card."""
    rng, counts = random.Random(seed + 2), counts if counts is not None else Counter()
    formats = {name: get_format(name, descriptions=False) for name, _ in mix.formats}  # as the rollout default
    held_out = {content_key(task) for task in load_tasks("synth", "ood_content", seed=seed)}
    index = {"train": mix.first_index, "ood_content": mix.first_index}
    while True:
        split = "ood_content" if rng.random() < mix.ood_share else "train"
        task = generate_task(split, index[split], seed)
        index[split] += 1
        if split == "ood_content" and content_key(task) in held_out:
            continue
        fmt = rng.choices([name for name, _ in mix.formats], weights=[w for _, w in mix.formats])[0]
        turns = played_turns(task, mix, rng)
        counts.update(f"turns/{kind}" for kind, _ in turns)
        counts[f"dialogs/{split}/{fmt}"] += 1
        yield dialog_sequence(expert_messages(task, formats[fmt], [calls for _, calls in turns]), tokenizer)


def played_turns(task, mix: CorpusMix, rng: random.Random) -> list[tuple[str, list]]:
    """(habit kind or "expert", calls) per turn of ``task``: one draw per turn, so that a recipe reproduces
    whether habits are drawn per turn or per task (then a kind's first draw decides its later turns)."""
    turns, task_draws = [], {}
    for calls, results in zip(task.ground_truth, ground_truth_results(task)):
        draw, mistake = rng.random(), mistaken_calls(calls, results)
        if mistake and mix.habits_per_task:
            draw = task_draws.setdefault(mistake[0], draw)
        turns.append(mistake if mistake and draw < mix.habit_rate(mistake[0]) else ("expert", calls))
    return turns


def copy_values(max_number: int = 999) -> list:
    """Every kind of argument value the synth tasks use: names, files, places, companies, numbers (every one
    below 1000, one id each, and as many again drawn up to ``max_number``, which take two or more ids)."""
    from rollout.envs import synth_scene as t

    words = [*t.WORDS, *t.FILE_NAMES, *t.DIRS, *t.NAMES, *t.HANDLES, *t.TOPICS, *t.COMPANIES, *t.CITIES,
             *t.CURRENCIES, *t.DOORS]
    large = random.Random(max_number).sample(range(1000, max_number + 1), 1000) if max_number >= 2000 else []
    return [*words, *range(1000), *large]


FILLER = ("please", "use", "the", "then", "with", "for", "and", "on", "my", "to", "of", "it", "now")


def copy_stream(tokenizer, seed: int, max_number: int = 999):
    """Auxiliary copy task: values inside a sentence of filler words, the same values as JSON arguments.

    It drills the one skill SFT on dialogs does not teach a from-scratch model in minutes: taking a value
    out of the request (found by what it is, not by a key) instead of emitting the most frequent one.
    """
    values, rng = copy_values(max_number), random.Random(seed + 1)
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


def _new_model(size: str, seed: int, vocab_size: int):
    tokenizer = build_tokenizer(default_corpus(300, seed), vocab_size)
    config = preset_config(size, tokenizer)
    config.tie_word_embeddings = False
    return Qwen2ForCausalLM._from_config(config, attn_implementation="eager"), tokenizer


# The fixed part of the recipe: the training loop reads these, and the card records them from here.
BETAS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.95), 0.0, 1.0
LR_FLOOR = 0.1  # the cosine after the warmup ends at 10 % of the peak (the card's "cosine to 10%")


def bootstrap(out_dir: Path, steps: int = BOOTSTRAP_STEPS, seed: int = 0, size: str = "tiny", lr: float = 1e-3,
              batch_size: int = 8, copy_batch_size: int = 16, vocab_size: int = 4096, eval_tasks: int = 200,
              threads: int | None = None, init: Path | None = None, mix: CorpusMix = CorpusMix(),
              warmup: int = 100, snapshots: int = 4) -> Path:
    """Train the default policy by SFT and write it (HF directory + card) atomically to ``out_dir``.

    ``init``: continue from that model directory (its tokenizer and weights) instead of a new model, e.g. a
    second stage over the first stage's output. ``snapshots`` intermediate models are kept beside
    ``out_dir`` (``<out_dir>-snapshots/step_N``) so that a stage can be chosen by its headroom.
    """
    recipe = {"steps": steps, "seed": seed, "size": size, "lr": lr, "batch_size": batch_size,
              "copy_batch_size": copy_batch_size, "vocab_size": vocab_size, "tied_embeddings": False,
              "warmup": warmup, "betas": list(BETAS), "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP,
              "schedule": f"cosine to {LR_FLOOR:.0%}", "init": str(init) if init else None, "mix": asdict(mix),
              "loss": "NLL of assistant tokens (token-mean)"}
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already exists and is not empty; refusing to overwrite a model")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    if init is not None:
        model, tokenizer = load_policy(init)
        recipe |= {"size": "from init", "vocab_size": len(tokenizer)}
        if (Path(init) / CARD_NAME).is_file():  # the stages before this one, so the card holds the whole chain
            recipe["init_recipe"] = json.loads((Path(init) / CARD_NAME).read_text())["recipe"]
    else:
        model, tokenizer = _new_model(size, seed, vocab_size)
    counts: Counter = Counter()
    batches = length_sorted_batches(mixed_stream(tokenizer, seed, mix, counts), batch_size, pool=8,
                                    rng=random.Random(seed))
    copies = length_sorted_batches(copy_stream(tokenizer, seed, mix.copy_max_number), copy_batch_size, pool=1,
                                   rng=random.Random(seed))
    started = time.perf_counter()
    sources = (batches, copies) if copy_batch_size else (batches,)
    tokens, losses = _train(model, tokenizer, sources, recipe, out_dir, snapshots)
    tenth = max(1, steps // 10)
    card = {
        "recipe": recipe,
        "recipe_hash": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_minutes": round((time.perf_counter() - started) / 60, 1),
        "train_tokens": tokens,
        "corpus": dict(sorted(counts.items())),
        "loss_curve": [round(sum(losses[i : i + tenth]) / len(losses[i : i + tenth]), 4)
                       for i in range(0, steps, tenth)],  # mean loss per tenth of training
    }
    _write(out_dir, model, tokenizer, card)
    measure_card(out_dir, eval_tasks, ood_tasks=min(eval_tasks, 100))
    return out_dir


def _write(out_dir: Path, model, tokenizer, card: dict) -> None:
    """The model and its card, atomically: the weights are safe before the (long) measurement starts."""
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")


def _train(model, tokenizer, sources: tuple, recipe: dict, out_dir: Path, snapshots: int) -> tuple[int, list[float]]:
    """``recipe["steps"]`` AdamW steps, each on one batch of every source (the dialogs, then the copy drill),
    with progress, keeping ``snapshots`` models beside ``out_dir``; returns the tokens trained on and the
    dialogs' loss of each step."""
    steps, lr, warmup = recipe["steps"], recipe["lr"], recipe["warmup"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    started, tokens, losses = time.perf_counter(), 0, []
    tenth, every = max(1, steps // 10), max(1, steps // snapshots) if snapshots else 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        bar = progress.add_task("bootstrap SFT", total=steps)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            step_losses = []
            for source in sources:
                ids, attention, mask = next(source).padded(tokenizer.pad_token_id)
                logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
                loss, _ = sft_loss(sequence_logprobs(logits, ids), mask)
                loss.backward()
                tokens += int(attention.sum())
                step_losses.append(loss.item())
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(step, warmup, steps, floor=LR_FLOOR)
            optimizer.step()
            losses.append(step_losses[0])  # the dialogs' loss (the copy task's is not part of the curve)
            recent = sum(losses[-tenth:]) / len(losses[-tenth:])
            progress.update(bar, advance=1, description=f"bootstrap SFT (loss {recent:.3f})")
            if (step + 1) % tenth == 0:  # also a plain line, for logs that are not a terminal
                progress.console.print(f"step {step + 1}/{steps}: loss {recent:.4f}, "
                                       f"{(time.perf_counter() - started) / 60:.1f} min", highlight=False)
            if every and (step + 1) % every == 0 and step + 1 < steps:
                with atomic_directory(out_dir.with_name(out_dir.name + "-snapshots") / f"step_{step + 1}") as staging:
                    model.save_pretrained(staging, safe_serialization=True)
                    tokenizer.save_pretrained(staging)
    return tokens, losses
