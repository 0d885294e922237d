"""JSON-grammar decision points: hand-labelled positions in hermes and json renderings, and their token sets."""

from __future__ import annotations

import pytest
import torch

from learner.diagnostics import ControlTokens, decision_points
from learner.models import DEFAULT_POLICY
from rollout.chat import load_tokenizer
from rollout.formats import HermesFormat, JsonListFormat
from rollout.types import ToolCall

CALLS = [ToolCall("cd", {"folder": "docs"}),
         ToolCall("mv", {"source": "a.txt", "destination": "b", "n": [1, "x"]})]
PROMPT = '<|im_start|>system\n<tool_call>\n{"name": "cd", "arguments": {}}\n</tool_call><|im_end|>\n<|im_start|>assistant\n'
TOOL_TURN = '<|im_end|>\n<|im_start|>user\n<tool_response>\n{"result": "ok"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'

# Hand-labelled on the embedded default's tokenizer, index: token of each rendering.
# hermes: 0 <tool_call> 1 \n 2 {" 3 name 4 ": 5 ␠ 6 " 7 cd 8 ", 9 ␠ 10 " 11 arguments 12 ": 13 ␠ 14 {" 15 folder
#   16 ": 17 ␠ 18 " 19 docs 20 "}} 21 \n 22 </tool_call> 23 \n 24 <tool_call> 25 \n 26 {" 27 name ... 31 mv 32 ",
#   ... 38 {" 39 source ... 43 a 44 . 45 txt 46 ", ... 53 b 54 ", ... 60 [ 61 1 62 , 63 ␠ 64 " 65 x 66 "]}}
HERMES = {"message_start": [0], "call_open": [2, 26], "call_close": [23], "call_key": [3, 27], "tool_name": [7, 31],
          "arguments_open": [14, 38], "value_end": [8, 20, 32, 46, 54]}
# json: 0 [{" 1 name 2 ": 3 ␠ 4 " 5 cd 6 ", ... 12 {" 13 folder ... 17 docs 18 "}} 19 , 20 ␠ 21 {" 22 name ... 26 mv
#   27 ", ... 33 {" 34 source ... 38 a 39 . 40 txt 41 ", ... 48 b 49 ", ... 55 [ 56 1 ... 60 x 61 "]}}]
JSON = {"message_start": [0], "call_key": [1, 22], "tool_name": [5, 26], "arguments_open": [12, 33], "value_end": [6, 18, 27, 41, 49]}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_POLICY)


@pytest.fixture(scope="module")
def tokens(tokenizer) -> ControlTokens:
    return ControlTokens.from_tokenizer(tokenizer)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_points_are_the_hand_labelled_positions_of_hermes_and_json_messages(tokenizer, tokens):
    """One row: a prompt whose example call is not the policy's, a hermes message, a tool turn (not
    generated), a json message; every point of both messages and nothing else."""
    prompt, hermes = encode(tokenizer, PROMPT), encode(tokenizer, HermesFormat().render(CALLS))
    tool_turn, json_list = encode(tokenizer, TOOL_TURN), encode(tokenizer, JsonListFormat().render(CALLS))
    assert len(hermes) == 69 and len(json_list) == 62
    row = prompt + hermes + tool_turn + json_list
    mask = [0] * len(prompt) + [1] * len(hermes) + [0] * len(tool_turn) + [1] * len(json_list)
    found = decision_points(torch.tensor([row]), torch.tensor([mask]), tokens)
    json_start = len(prompt) + len(hermes) + len(tool_turn)
    expected = {point: [len(prompt) + i for i in HERMES.get(point, [])] + [json_start + i for i in JSON.get(point, [])]
                for point in found}
    assert {point: where[0].nonzero().flatten().tolist() for point, where in found.items()} == expected
    assert set(found) == {"call_open", "call_close", "turn_end", *JSON}  # every point


def test_token_sets_come_from_rendering_calls(tokenizer, tokens):
    sets = {point: {name: {tokenizer.decode([i]) for i in s.ids} for name, s in named.items()}
            for point, named in tokens.points().items()}
    assert sets["call_key"]["name"] == {"name"}
    assert {"folder", "source", "destination"} <= sets["call_key"]["argument_key"]
    assert "name" not in sets["call_key"]["argument_key"]
    assert {"cd", "mv", "ls", "send"} <= sets["tool_name"]["tool"]
    assert '",' not in sets["tool_name"]["tool"] and "{" not in sets["tool_name"]["tool"]
    assert {"{", '{"', "{}"} <= sets["arguments_open"]["object"] and '"' not in sets["arguments_open"]["object"]
    assert {'",', '"}}', '"]}}', '"'} <= sets["value_end"]["end"] and '":' not in sets["value_end"]["end"]
    assert '":' in sets["value_end"]["colon"] and '",' not in sets["value_end"]["colon"]
