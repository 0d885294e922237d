"""Control-token diagnostics: decision points, probabilities and the logit-gradient decomposition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from learner.batch import SequenceBatch, dialog_sequence
from learner.config import LearnerConfig
from learner.diagnostics import ControlTokens, control_metrics, control_values, decision_points
from learner.models import DEFAULT_POLICY
from learner.rank import Learner, free_port
from rollout.chat import load_tokenizer

# The prompt shows markup too (a system prompt's example call): it is not the policy's decision
PROMPT = '<|im_start|>system\n<tool_call>\n{"name"</tool_call><|im_end|>\n<|im_start|>assistant\n'
# A call, then a broken second one: <tool_call>, newline, <tool_call>, <|im_end|>
REPLY_0 = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>\n<tool_call><|im_end|>'
REPLY_1 = '</tool_call><|im_end|>ok<tool_call>\n'  # a close, an end, then text cut after "<tool_call>\n"
TAIL_1 = '{"'  # not generated (mask 0): no call_open point here


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_POLICY)


@pytest.fixture(scope="module")
def tokens(tokenizer) -> ControlTokens:
    return ControlTokens.from_tokenizer(tokenizer)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def batch(tokenizer):
    """[2, L] ids and loss mask (row 1 right-padded), the prompt length and the two replies' ids."""
    prompt, reply_0 = encode(tokenizer, PROMPT), encode(tokenizer, REPLY_0)
    reply_1, tail_1 = encode(tokenizer, REPLY_1), encode(tokenizer, TAIL_1)
    rows = [(prompt + reply_0, [0] * len(prompt) + [1] * len(reply_0)),
            (prompt + reply_1 + tail_1, [0] * len(prompt) + [1] * len(reply_1) + [0] * len(tail_1))]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros((2, width))
    for row, (row_ids, row_mask) in enumerate(rows):
        ids[row, : len(row_ids)] = torch.tensor(row_ids)
        mask[row, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.float32)
    return ids, mask, len(prompt), reply_0, reply_1


def test_control_tokens_come_from_the_tokenizer(tokenizer, tokens):
    assert tokens.call_open == tokenizer.convert_tokens_to_ids("<tool_call>")
    assert tokens.call_close == tokenizer.convert_tokens_to_ids("</tool_call>")
    assert tokens.im_end == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert encode(tokenizer, "\n") == [tokens.newlines[0]]
    assert all(set(tokenizer.decode([i])) == {"\n"} for i in tokens.newlines)
    assert encode(tokenizer, '<tool_call>\n{"name"')[:3] == [tokens.call_open, tokens.newlines[0], tokens.healthy]
    assert tokenizer.decode([tokens.healthy]) == '{"'


def test_decision_points_are_the_hand_listed_generated_positions(tokenizer, tokens, batch):
    ids, mask, prompt, reply_0, reply_1 = batch
    # REPLY_0 pieces: <tool_call> \n {" name ... }} \n </tool_call> \n <tool_call> \n <tool_call> <|im_end|>
    first_close = reply_0.index(tokens.call_close)
    assert reply_0[first_close:] == [tokens.call_close, tokens.newlines[0], tokens.call_open, tokens.newlines[0],
                                     tokens.call_open, tokens.im_end]
    # and its call: <tool_call> \n {" name ": ␠ " f ", ␠ " arguments ": ␠ { }} (indices 0-15)
    assert [tokenizer.decode([i]) for i in reply_0[3:16:4]] == ["name", "f", "arguments", "}}"]
    expected = {
        "call_open": {(0, prompt + 2), (0, prompt + first_close + 4)},
        "call_close": {(0, prompt + first_close + 1), (1, prompt + 1)},
        "turn_end": {(0, prompt + len(reply_0) - 1), (1, prompt + 1)},
        "message_start": {(0, prompt), (1, prompt)}, "call_key": {(0, prompt + 3)}, "tool_name": {(0, prompt + 7)}, "value_end": {(0, prompt + 8)},
        "arguments_open": {(0, prompt + 14)},
    }
    assert reply_1[:2] == [tokens.call_close, tokens.im_end]
    found = decision_points(ids, mask, tokens)
    assert {point: {tuple(p) for p in where.nonzero().tolist()} for point, where in found.items()} == expected


def test_a_run_of_tool_call_repeats_is_one_call_open(tokenizer, tokens):
    """Only the first ``<tool_call>\n`` of a loop is a decision; a new run after other text is another."""
    loop = "<tool_call>\n" * 4 + '{"name"'
    reply = encode(tokenizer, loop + "</tool_call>\n" + loop)
    ids, mask = torch.tensor([[0, *reply]]), torch.tensor([[0] + [1] * len(reply)])
    positions = decision_points(ids, mask, tokens)["call_open"][0].nonzero().flatten().tolist()
    second = 1 + reply.index(tokens.call_close) + 2  # the second loop's first <tool_call>
    assert positions == [1 + 2, second + 2]  # the tokens after each loop's first "<tool_call>\n"
    assert [reply[p - 1] for p in positions] == [tokens.call_open] * 2  # each of them sampled a repeat


def _hand_logits(ids: torch.Tensor, tokens: ControlTokens, vocab: int, prompt: int, first_close: int):
    """Zeros, except at the positions that score row 0's first call_open and its call_close."""
    logits = torch.zeros(ids.shape[0], ids.shape[1], vocab)
    newline = prompt + 1  # the newline after the first <tool_call>: its logits score the token after it
    logits[0, newline, tokens.healthy], logits[0, newline, tokens.im_end] = 2.0, 1.0
    logits[0, newline, tokens.call_open] = 0.5
    logits[0, newline + 1, tokens.healthy] = -3.0  # the logits at the position itself must not be read
    close = prompt + first_close
    logits[0, close, tokens.im_end], logits[0, close, tokens.newlines[0]] = 1.5, 0.75
    logits[0, close, tokens.call_open], logits[0, close, 100] = -1.0, 2.5
    return logits


def test_probabilities_equal_softmax_of_the_logits_before_the_position(tokenizer, tokens, batch):
    ids, mask, prompt, reply_0, _ = batch
    vocab = len(tokenizer)
    first_close = reply_0.index(tokens.call_close)
    logits = _hand_logits(ids, tokens, vocab, prompt, first_close)
    values = control_values(logits, ids, decision_points(ids, mask, tokens), torch.tensor([1.5, -0.5]), tokens)
    # call_open, first position (row 0, after "<tool_call>\n"): logits 2, 1, 0.5 and vocab - 3 zeros
    total = math.exp(2.0) + math.exp(1.0) + math.exp(0.5) + (vocab - 3)
    healthy, im_end, tool_call = values["call_open"][0, :, 0].tolist()
    assert healthy == pytest.approx(math.exp(2.0) / total, rel=1e-12)
    assert im_end == pytest.approx(math.exp(1.0) / total, rel=1e-12)
    assert tool_call == pytest.approx(math.exp(0.5) / total, rel=1e-12)
    # the second call_open position reads all-zero logits: uniform
    assert values["call_open"][1, :, 0].tolist() == pytest.approx([1 / vocab] * 3, rel=1e-12)
    # call_close in row 0: text = everything but <|im_end|>, newline and <tool_call>
    total = math.exp(1.5) + math.exp(0.75) + math.exp(-1.0) + math.exp(2.5) + (vocab - 4)
    close_im_end, text = values["call_close"][0, :, 0].tolist()
    assert close_im_end == pytest.approx(math.exp(1.5) / total, rel=1e-12)
    assert text == pytest.approx((math.exp(2.5) + vocab - 4) / total, rel=1e-12)
    # the other call_close (row 1) and every turn end read zero logits
    assert values["call_close"][1, :, 0].tolist() == pytest.approx([1 / vocab, (vocab - 3) / vocab], rel=1e-12)
    assert values["turn_end"][:, 0, 0].tolist() == pytest.approx([1 / vocab] * 2, rel=1e-12)


def _autograd_decomposition(logits, ids, where, advantages, token_set, vocab):
    """Σ over the positions of ∂(-A·log_softmax(z)[x])/∂z_k, summed over k in the set: (self, other)."""
    members = torch.zeros(vocab, dtype=torch.bool)
    members[list(token_set.ids)] = True
    if token_set.complement:
        members = ~members
    parts = {"self": 0.0, "other": 0.0}
    for row, column in where.nonzero().tolist():
        z = logits[row, column - 1].detach().double().requires_grad_(True)
        sampled = ids[row, column].item()
        (-advantages[row] * torch.log_softmax(z, -1)[sampled]).backward()
        parts["self" if members[sampled] else "other"] += z.grad[members].sum().item()
    return parts


def test_gradient_decomposition_equals_autograd(tokenizer, tokens, batch):
    ids, mask, *_ = batch
    vocab = len(tokenizer)
    logits = torch.randn(ids.shape[0], ids.shape[1], vocab, generator=torch.Generator().manual_seed(0)) * 3
    advantages = torch.tensor([1.5, -0.5])
    found = decision_points(ids, mask, tokens)
    metrics = control_metrics([control_values(logits, ids, found, advantages, tokens)], tokens)
    checked = 0
    for point, sets in tokens.points().items():
        for name, token_set in sets.items():
            expected = _autograd_decomposition(logits, ids, found[point], advantages, token_set, vocab)
            for part in ("self", "other"):
                assert metrics[f"control_grad/{point}/{name}/{part}"] == pytest.approx(expected[part], abs=1e-9)
            assert metrics[f"control_grad/{point}/{name}/total"] == pytest.approx(
                expected["self"] + expected["other"], abs=1e-9)
            checked += 1
    assert checked == 14  # 8 control-token sets, 6 JSON-grammar sets
    # at a turn end the sampled token is <|im_end|> itself: all of its gradient is "self"
    assert metrics["control_grad/turn_end/im_end/other"] == 0.0
    assert metrics["control_grad/turn_end/im_end/self"] != 0.0


def test_step_statistics_pool_every_micro_batch():
    tokens = ControlTokens(im_end=2, newlines=(5,), call_open=None, call_close=None, healthy=None)
    ids = torch.tensor([[1, 2]])
    mask = torch.tensor([[0, 1]])
    micro_batches = []
    for k in range(101):  # p(<|im_end|>) = k / 100 at the one turn end of each micro-batch
        p = k / 100
        logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        logits[0, 0, 2] = math.log(p / (1 - p)) + math.log(2) if 0 < p < 1 else (-50.0 if p == 0 else 50.0)
        micro_batches.append(control_values(logits, ids, decision_points(ids, mask, tokens), torch.tensor([1.0]),
                                            tokens))
    metrics = control_metrics(micro_batches, tokens)  # float32 logits: p to ~1e-7
    # the one generated token is a message's first and a turn end: both points read it
    assert set(metrics) == {f"control/{point}/im_end/{s}" for point in ("message_start", "turn_end")
                            for s in ("mean", "p99", "max")} | {
        f"control_grad/{point}/im_end/{s}" for point in ("message_start", "turn_end") for s in ("total", "self", "other")}
    assert all(metrics[key] == metrics[key.replace("message_start", "turn_end")] for key in metrics)
    assert metrics["control/turn_end/im_end/mean"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["control/turn_end/im_end/p99"] == pytest.approx(0.99, abs=1e-6)
    assert metrics["control/turn_end/im_end/max"] == pytest.approx(1.0, abs=1e-6)
    # Σ -A·(1 - p) over p = 0, 0.01, ..., 1
    assert metrics["control_grad/turn_end/im_end/total"] == pytest.approx(-50.5, abs=1e-6)
    assert control_metrics([], tokens) == {}


def test_rl_update_and_the_probe_report_the_control_tokens_of_the_forward_pass(tiny_model_dir):
    """The wired-in metrics, and the probe's of steps without an update, equal the diagnostics of the
    policy's logits before the step."""
    config = LearnerConfig(lr=1e-3, micro_batch_size=2, mini_batch_tasks=0, threads=2, warmup_steps=0)
    learner = Learner(tiny_model_dir, config)
    learner.connect("127.0.0.1", free_port())
    try:
        tokenizer = learner.tokenizer
        call = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
        messages = [{"role": "user", "content": "add 2 and 3"}, {"role": "assistant", "content": call},
                    {"role": "tool", "content": "5"}, {"role": "assistant", "content": "5"}]
        sequences = [dialog_sequence(messages, tokenizer) for _ in range(3)]
        batch = SequenceBatch([s[0] for s in sequences], [s[1] for s in sequences], [1.0, -0.5, -0.5])
        ids, attention, mask = batch.padded(tokenizer.pad_token_id)
        with torch.no_grad():
            logits = learner.model(input_ids=ids, attention_mask=attention, use_cache=False).logits
        points = decision_points(ids, mask, learner.control_tokens)
        expected = control_metrics([control_values(logits, ids, points, torch.tensor(batch.advantages),
                                                   learner.control_tokens)], learner.control_tokens)
        probed = learner.control_probe(batch)  # a forward pass alone: it must not move the weights
        metrics = learner.rl_update(batch, group_size=3)
        assert len(expected) == (2 + 3 + 2 + 1 + 2 + 1 + 1 + 2) * 6  # the points' token sets, 6 statistics each
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            assert probed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert "control/call_open/healthy/mean" not in learner.sft_update(batch)
    finally:
        dist.destroy_process_group()



def test_rows_shorter_than_the_context_have_no_points(tokens):
    """Rows of four and three tokens (one a prompt token): the loop rule's look-back (t - 4) falls off."""
    ids = torch.tensor([[tokens.im_end, tokens.call_open, tokens.newlines[0], tokens.healthy]])
    found = decision_points(ids, torch.tensor([[0, 1, 1, 1]]), tokens)
    assert {point: where.tolist() for point, where in found.items()} == {
        point: [[False, point == "message_start", False, point == "call_open"]] for point in tokens.points()}
    short = decision_points(ids[:, :3], torch.tensor([[0, 1, 1]]), tokens)  # shorter than the look-back
    assert [point for point, where in short.items() if where.any()] == ["message_start"]
