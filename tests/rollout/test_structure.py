"""Structural states of assistant messages: a hand-labelled fixture set per format, and the shares."""

from __future__ import annotations

import pytest

from rollout.chat import load_tokenizer
from rollout.config import RewardConfig
from rollout.envs import load_tasks
from rollout.formats import get_format
from rollout.structure import (
    STATES,
    classify_message,
    close_brackets,
    degenerate,
    message_states,
    structure_shares,
)
from rollout.worker import EpisodeRequest, TokenEpisode
from tests.scripted import CONFIG

CALL = '<tool_call>\n{"name": "ls", "arguments": {}}\n</tool_call>'
CD = '<tool_call>\n{"name": "cd", "arguments": {"folder": "docs"}}\n</tool_call>'

# (text, truncated) -> state, per format; every state has several members in hermes
FIXTURES = {
    "hermes": {
        "healthy_tool_call": [
            (CALL, False),
            (CALL + "\n" + CD, False),
            ('  <tool_call>{"name": "cd", "arguments": {"folder": "docs"}}</tool_call>\n', False),
            ('<tool_call>\n{"name": "echo", "arguments": {"content": "a </tool_call> b"}}\n</tool_call>', False),
        ],
        "healthy_response": [
            ("The file has 42 lines.", False),
            ("I could not find report.txt. Which folder should I look in?", False),
            ("Done: moved notes.md to archive/, and the total is 17.5 (tax included).", False),
        ],
        "polluted": [
            ("Sure! " + CALL, False),  # text + markup
            (CALL + "\nThe folder is empty.", False),
            ('<tool_call>\n{"name": "ls", "arguments": {}}\n', False),  # unbalanced: no closing tag
            ('{"name": "ls", "arguments": {}}\n</tool_call>', False),  # closing tag without an opening one
            ('<tool_call>\n{"name": "cd", "arguments": {"folder": "docs"}\n</tool_call>', False),  # missing brace
            (CALL + "\n<tool_call>", False),  # a second <tool_call> with nothing in it
            ('I will call {"name": "ls", "arguments": {}} now.', False),  # a call object without markup
            ("The answer is 4.<|im_start|>user", False),  # chat control markup in a reply
            ('<tool_call>\n{"name": "cd", "arguments": {"folder": "do', True),  # cut inside a call
            (CALL, True),  # a complete call, but the policy did not end the message
        ],
        "collapsed": [
            ("", False),  # immediate end
            ("  \n", False),
            ("<tool_call>\n<tool_call>\n<tool_call>", False),
            ("<tool_call>\nname ls arguments", False),
            ('<tool_call>\n{"name": 42}\n</tool_call>', False),  # no function name to recover
            ('<tool_call>\n{"na', True),
            ("the file " * 12, False),  # a 2-gram 12 times
            ((CALL + "\n") * 5, False),  # parses, but one call repeated 5 times
            ("!" * 24, False),
            ("The file report.txt contains the quarterly numbers and", True),  # cut, and no call in it
            ("folderK642wholetxt_nametweetechocc_Ltd380evelast", True),  # what a wrecked policy emits
        ],
    },
    "python": {
        "healthy_tool_call": [("[ls()]", False), ("[cd(folder='docs'), ls(a=True)]", False),
                              ("```python\n[ls()]\n```", False)],
        "healthy_response": [("The folder is empty.", False)],
        "polluted": [("Let me check: [ls()]", False), ("[cd(folder='docs')", False), ("[cd(folder='docs", True),
                     (CALL, False)],  # the trained hermes markup under the python syntax
        "collapsed": [("[[[[", False), ("", False), ("ls ls ls ls ls ls ls ls ls ls ls ls " * 2, False)],
    },
    "json": {
        "healthy_tool_call": [('[{"name": "ls", "arguments": {}}]', False), ('{"name": "ls", "arguments": {}}', False)],
        "healthy_response": [("No calls needed.", False)],
        "polluted": [('Calling: [{"name": "ls", "arguments": {}}]', False), ('[{"name": "ls", "arguments": {}}', False),
                     ('[{"name": "ls", "arguments": {},}]', False)],  # trailing comma
        "collapsed": [('[{"', False), ("[[[[[", False)],
    },
}
CASES = [(fmt, state, text, cut) for fmt, states in FIXTURES.items() for state, items in states.items()
         for text, cut in items]


def test_every_state_is_reached_in_every_format():
    for fmt, states in FIXTURES.items():
        reached = {classify_message(text, get_format(fmt), cut) for items in states.values() for text, cut in items}
        assert reached == set(STATES), fmt


@pytest.mark.parametrize(("fmt", "state", "text", "cut"), CASES)
def test_fixture_messages_get_their_state(fmt, state, text, cut):
    assert classify_message(text, get_format(fmt), cut) == state


def test_repetition_needs_four_copies_over_24_units():
    assert degenerate("a " * 24) and not degenerate("a " * 23)
    phrase = "call the tool now "  # 4 units: 6 copies make 24
    assert degenerate(phrase * 6) and not degenerate(phrase * 5)
    assert not degenerate(" ".join(f"word{i}" for i in range(200)))
    assert not degenerate(f"{CALL}\n{CD}\n{CALL}")  # a call repeated once is not degenerate


def test_close_brackets_fixes():
    assert close_brackets('{"a": [1, {"b": "x') == '{"a": [1, {"b": "x"}]}'
    assert close_brackets('{"a": 1}} trailing') == '{"a": 1}'
    assert close_brackets('{"a": 1,') == '{"a": 1}'
    assert close_brackets('{"a":') == '{"a": null}'
    assert close_brackets('{"a": "}"') == '{"a": "}"}'  # brackets inside strings do not count
    assert close_brackets("[f(x='a", quotes="\"'") == "[f(x='a')]"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _played(task, tokenizer, replies: list[tuple[str, bool]]):
    """A real TokenEpisode fed ``replies`` as (text, policy ended it) in order: it must be done after them."""
    episode = TokenEpisode(EpisodeRequest(task, "g", 0, seed=0), tokenizer, CONFIG, RewardConfig())
    for text, ended in replies:
        tokens = tokenizer.encode(text, add_special_tokens=False) + ([episode.end_id] if ended else [])
        episode.receive(tokens, [-0.1] * len(tokens), finished=ended)
    assert episode.done
    return episode.trajectory()


def test_shares_over_trajectories_count_every_assistant_message(tokenizer):
    single_turn = [t for t in load_tasks("synth", "train", limit=20) if len(t.turns) == 1]
    first = _played(single_turn[0], tokenizer, [(CALL, True), ("All done <tool_response>", True)])
    second = _played(single_turn[1], tokenizer, [(CD + "\nmore text", True), ("", True)])
    third = _played(single_turn[2], tokenizer, [("The numbers are", False)])
    assert first.message_truncated == [False, False] and third.message_truncated == [True]
    assert message_states(first) == ["healthy_tool_call", "polluted"]
    assert message_states(second) == ["polluted", "collapsed"]
    assert message_states(third) == ["collapsed"]
    shares = structure_shares([first, second, third])
    assert shares == {"healthy_tool_call": 0.2, "healthy_response": 0.0, "polluted": 0.4, "collapsed": 0.4}
    assert structure_shares([]) == dict.fromkeys(STATES, 0.0)


def test_an_episode_in_another_format_is_read_in_its_own_syntax(tokenizer):
    task = next(t for t in load_tasks("synth", "train", limit=20) if len(t.turns) == 1)
    episode = TokenEpisode(EpisodeRequest(task, "g", 0, seed=0, format="python"), tokenizer, CONFIG, RewardConfig())
    for text in ("[ls()]", "Here it is."):
        tokens = tokenizer.encode(text, add_special_tokens=False) + [episode.end_id]
        episode.receive(tokens, [-0.1] * len(tokens), finished=True)
    trajectory = episode.trajectory()
    assert trajectory.format == "python"
    assert message_states(trajectory) == ["healthy_tool_call", "healthy_response"]
