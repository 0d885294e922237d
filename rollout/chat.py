"""The chat layout every toolrl tokenizer speaks: Qwen2.5's markup tokens, its chat template, and loading a
tokenizer exactly as its files define it. No model hub is ever contacted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rollout.formats import get_format

if TYPE_CHECKING:  # transformers takes seconds to import: a CLI that only checks its arguments never needs it
    from transformers import PreTrainedTokenizerBase

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END, "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def _hermes_system_template() -> str:
    """Jinja for the hermes tool prompt, cut from the format itself so the two can never drift apart."""
    head, closing, tail = get_format("hermes").render_tools([]).partition("\n</tools>")
    # json.dumps yields valid Jinja string literals (same escapes), so the text is copied verbatim.
    tool_lines = "(tools | map('tojson', separators=(',', ':')) | join('\\n'))"
    return f"{json.dumps(head)} + {tool_lines} + {json.dumps(closing + tail)}"


# A template's body after its ``message.role == 'tool'`` test, in Qwen2.5's layout: consecutive tool messages
# share one user message of <tool_response> blocks, any other message is plain, then the generation prompt.
TOOL_RESPONSES_THEN_MESSAGES = (
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# Qwen2.5's layout. ``tools`` only matters without a system message: toolrl's formats write the tool text
# into the system message themselves, so an explicit one always wins. Newlines are '\n' inside expressions
# because trim_blocks/lstrip_blocks (which transformers enables) would otherwise eat literal ones.
CHAT_TEMPLATE = (
    "{%- if tools and messages[0].role != 'system' %}"
    "{{- '<|im_start|>system\\n' + " + _hermes_system_template() + " + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}" + TOOL_RESPONSES_THEN_MESSAGES
)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer exactly as its ``tokenizer.json`` defines it (AutoTokenizer when there is none).

    transformers 5 maps a Qwen2 config to ``Qwen2Tokenizer``, which puts Qwen's own pre-tokenizer (digits
    one by one) over the one in the file: the embedded default would then be fed other ids than it was
    trained on. A real Qwen checkpoint's file holds Qwen's pre-tokenizer, so reading the file is right for both.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (Path(path) / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def render_dialog(messages: list[dict]) -> str:
    """A full dialog as CHAT_TEMPLATE lays it out, without needing a tokenizer."""
    from transformers.utils.chat_template_utils import render_jinja_template

    return render_jinja_template([messages], chat_template=CHAT_TEMPLATE)[0][0]
