"""Models and tokenizers: loading any local HF causal LM, and building toolrl's own default from nothing.

No model hub is ever contacted. The embedded default is a byte-level BPE tokenizer trained on the task
corpus (Qwen2.5 markup tokens and chat layout) and a randomly initialised Qwen2-architecture model, saved
as an ordinary HF directory so transformers and vLLM load it like any downloaded checkpoint.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils.chat_template_utils import render_jinja_template

from rollout.envs import load_tasks
from rollout.expert import expert_messages
from rollout.formats import FORMATS, get_format

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
MAX_POSITIONS = 2048
CARD_NAME = "toolrl_model.json"


def _hermes_system_template() -> str:
    """Jinja for the hermes tool prompt, cut from the format itself so the two can never drift apart."""
    head, closing, tail = get_format("hermes").render_tools([]).partition("\n</tools>")
    # json.dumps yields valid Jinja string literals (same escapes), so the text is copied verbatim.
    tool_lines = "(tools | map('tojson', separators=(',', ':')) | join('\\n'))"
    return f"{json.dumps(head)} + {tool_lines} + {json.dumps(closing + tail)}"


# Qwen2.5's layout. ``tools`` only matters without a system message: toolrl's formats write the tool text
# into the system message themselves, so an explicit one always wins. Newlines are '\n' inside expressions
# because trim_blocks/lstrip_blocks (which transformers enables) would otherwise eat literal ones.
CHAT_TEMPLATE = (
    "{%- if tools and messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\\n' + " + _hermes_system_template() + " + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A staging directory beside ``target`` that becomes ``target`` in one rename once the block succeeds.

    A crash or kill mid-write leaves at most a hidden ``.<name>.*`` directory, never a partial ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.replace(staging, target)  # refuses a non-empty target, e.g. one a concurrent writer filled
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_policy(
    path: str | os.PathLike, dtype: str = "float32", attn_implementation: str = "eager"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local HF causal LM directory as (model, tokenizer)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        problem = "does not exist" if not path.exists() else "is not a model directory (no config.json)"
        raise ValueError(f"model path {str(path)!r} {problem}")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation, local_files_only=True
    )
    return model, load_tokenizer(path)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer exactly as its ``tokenizer.json`` defines it (AutoTokenizer when there is none).

    transformers 5 maps a Qwen2 config to ``Qwen2Tokenizer``, which puts Qwen's own pre-tokenizer (digits
    one by one) over the one in the file: the embedded default would then be fed other ids than it was
    trained on. A real Qwen checkpoint's file holds Qwen's pre-tokenizer, so reading the file is right for both.
    """
    if (Path(path) / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


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


def render_dialog(messages: list[dict]) -> str:
    """A full dialog as CHAT_TEMPLATE lays it out, without needing a tokenizer."""
    return render_jinja_template([messages], chat_template=CHAT_TEMPLATE)[0][0]


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


DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "assets" / "default-policy"


def default_policy() -> Path:
    """The committed embedded default policy (trained ahead of time by ``launch.py bootstrap``)."""
    if not (DEFAULT_POLICY / "config.json").is_file():
        raise ValueError(f"the embedded default policy is missing at {DEFAULT_POLICY}; "
                         "restore it from git or run `python launch.py bootstrap`")
    return DEFAULT_POLICY
