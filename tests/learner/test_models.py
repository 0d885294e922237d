"""The embedded default: tokenizer markup, Qwen chat layout, lossless byte-level round trips, deterministic builds."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import Qwen2ForCausalLM

from learner.bootstrap import SIZE_PRESETS, build_default_model, preset_config
from learner.models import CARD_NAME, load_policy
from rollout.chat import SPECIAL_TOKENS
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from rollout.formats import FORMATS, get_format


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_default_model(tmp_path_factory.mktemp("models") / "seed0", seed=0)


@pytest.fixture(scope="module")
def policy(built):
    return load_policy(built)


@pytest.fixture(scope="module")
def tokenizer(policy):
    return policy[1]


@pytest.fixture(scope="module")
def tasks():
    return load_tasks("synth", "test", seed=0, limit=20)


def qwen_layout(messages: list[dict], generation_prompt: bool) -> str:
    """Qwen2.5's layout written out directly: one block per message, runs of tool results in one user block."""
    blocks = []
    for is_tool, run in itertools.groupby(messages, key=lambda m: m["role"] == "tool"):
        if is_tool:
            responses = "".join(f"\n<tool_response>\n{m['content']}\n</tool_response>" for m in run)
            blocks.append(f"<|im_start|>user{responses}<|im_end|>\n")
        else:
            blocks.extend(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in run)
    return "".join(blocks) + ("<|im_start|>assistant\n" if generation_prompt else "")


def test_special_tokens_are_single_ids(tokenizer):
    ids = [tokenizer.encode(token) for token in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(SPECIAL_TOKENS)
    assert [tokenizer.decode(i) for i in ids] == list(SPECIAL_TOKENS)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.encode('<tool_call>\n{"name"')[0] == tokenizer.convert_tokens_to_ids("<tool_call>")
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("x<|im_end|>y</tool_call><tool_response>z"))
    assert pieces == ["x", "<|im_end|>", "y", "</tool_call>", "<tool_response>", "z"]


def test_markup_is_not_learnt_as_ordinary_merges(tokenizer):
    ordinary = set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS)
    fragments = ("im_start", "im_end", "endoftext", "tool_call>", "tool_response>", "|>")
    assert not [token for token in ordinary if any(f in token for f in fragments)]


def test_chat_template_is_qwen_layout(tokenizer, tasks):
    messages = expert_messages(tasks[0], get_format("hermes"))
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == qwen_layout(messages, generation_prompt=True)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == qwen_layout(messages, generation_prompt=False)


def test_chat_template_groups_consecutive_tool_results(tokenizer):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
        {"role": "assistant", "content": "c"},
        {"role": "tool", "content": "r3"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nc<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr3\n</tool_response><|im_end|>\n"
    )


def test_tools_argument_renders_the_hermes_system_message(tokenizer, tasks):
    for task in tasks[:5]:
        messages = expert_messages(task, get_format("hermes"))
        assert messages[0]["content"] == get_format("hermes").render_tools(task.tools)
        from_tools = tokenizer.apply_chat_template(messages[1:], tools=task.tools, tokenize=False)
        assert from_tools == tokenizer.apply_chat_template(messages, tokenize=False)
        # An explicit system message wins: formats own the tool text.
        explicit = tokenizer.apply_chat_template(messages, tools=[{"name": "unused"}], tokenize=False)
        assert explicit == tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_dialogs_round_trip(tokenizer, tasks, fmt):
    for task in tasks:
        text = tokenizer.apply_chat_template(expert_messages(task, FORMATS[fmt]), tokenize=False)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unseen_text_round_trips(tokenizer):
    for text in ("naïve café — 東京 🚀 Ünïcødé", "  two spaces\n\n\ttab\r\n", "\x00\x7f", "<tool_call >x</ tool_call>"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_numbers_are_cut_into_one_id_per_three_digits(tokenizer):
    assert all(len(tokenizer.encode(str(n))) == 1 for n in range(1000))
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode('{"price": 263.56, "id": "USR003", "n": 1234567}')]
    assert pieces[pieces.index("263") : pieces.index("263") + 3] == ["263", ".", "56"]
    assert "003" in pieces and pieces[-4:-1] == ["123", "456", "7"]


def test_preset_parameter_counts(tokenizer):
    counts = {}
    for size in SIZE_PRESETS:
        with torch.device("meta"):
            counts[size] = sum(p.numel() for p in Qwen2ForCausalLM(preset_config(size, tokenizer)).parameters())
    assert 3e6 < counts["tiny"] < 7e6
    assert 15e6 < counts["small"] < 25e6
    with pytest.raises(ValueError, match="unknown model size"):
        preset_config("huge", tokenizer)


def test_saved_model_loads_and_runs(built, policy):
    model, tokenizer = policy
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "float32"
    card = json.loads((built / CARD_NAME).read_text())
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["vocab_size"] == len(tokenizer) == model.config.vocab_size
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_build_is_deterministic(built, tmp_path):
    again = build_default_model(tmp_path / "again")  # the same defaults
    other = build_default_model(tmp_path / "seed1", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json", CARD_NAME):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dirs left behind


def test_existing_models_are_kept(built):
    before = (built / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(FileExistsError):
        build_default_model(built)
    assert (built / "model.safetensors").stat().st_mtime_ns == before


def test_load_policy_rejects_non_model_paths(tmp_path):
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(ValueError) as error:
            load_policy(path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)
