"""The supervision config and its schedule: which update each step runs."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, load_config
from supervision.config import step_kind


def _kinds(*overrides: str, steps: int = 12) -> str:
    config = load_config(None, list(overrides)).supervision
    return "".join({"rl": "R", "sft": "S", "combined": "C"}[step_kind(config, s)] for s in range(1, steps + 1))


def test_schedules():
    assert _kinds() == "R" * 12
    assert _kinds("supervision.mode=sft_then_rl", "supervision.signals=[expert]",
                  "supervision.sft_then_rl.sft_steps=3") == "SSS" + "R" * 9
    assert _kinds("supervision.mode=sync", "supervision.signals=[expert, off_policy]") == "C" * 12
    assert _kinds("supervision.mode=sync", "supervision.signals=[off_policy]") == "R" * 12
    assert _kinds("supervision.mode=interleaved", "supervision.signals=[erroneous]",
                  "supervision.interleaved.rl_steps=3", "supervision.interleaved.sft_steps=2") == "RRRSSRRRSSRR"
    phases = "supervision.interleaved.phases=[{kind: rl, steps: 4}, {kind: sft, steps: 1}, {kind: rl, steps: 1}]"
    assert _kinds("supervision.mode=interleaved", "supervision.signals=[expert]", phases) == "RRRRSRRRRRSR"


@pytest.mark.parametrize("overrides, message", [
    (["supervision.mode=interleaved", "supervision.signals=[hint]"], "has SFT steps"),
    (["supervision.signals=[expert]"], "mode 'none' has no SFT updates"),
    (["supervision.mode=sft_then_rl", "supervision.signals=[erroneous]"], "only the expert signal"),
    (["supervision.mode=sync", "supervision.signals=[expert, expert]"], "at most once"),
    (["supervision.signals=[judge]"], "supervision.signals.0"),
    (["supervision.reflection.judge=llm"], "needs endpoint.base_url and endpoint.model"),
    (["supervision.hint.writer=llm", "supervision.hint.endpoint.model=m"], "needs endpoint.base_url"),
])
def test_inconsistent_supervision_is_one_line_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)
