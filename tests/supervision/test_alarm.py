"""The collapse alarm on synthetic metric series, its JSON state, and the adaptive schedule's state."""

from __future__ import annotations

import json
import random

import pytest

from cluster.config import ConfigError, load_config
from supervision.alarm import AdaptiveState, Alarm, alarm_metrics
from supervision.config import AlarmConfig, step_kind

IM_END = "control/call_open/im_end/max"
TOOL_CALL = "control/call_open/tool_call/max"
COLLAPSED = "structure/collapsed"


def _healthy_step(rng: random.Random) -> dict[str, float]:
    """One RL step of a stable run: small noisy control-token maxima, few collapsed messages, noisy success."""
    return {IM_END: abs(rng.gauss(0.03, 0.01)), TOOL_CALL: abs(rng.gauss(0.02, 0.01)),
            COLLAPSED: max(0.0, rng.gauss(0.02, 0.015)), "success": min(1.0, max(0.0, rng.gauss(0.4, 0.06)))}


def _fired(alarm: Alarm, series: list[dict[str, float]]) -> list[tuple[int, list[str]]]:
    return [(step, reasons) for step, metrics in enumerate(series, 1) if (reasons := alarm.observe(metrics))]


def test_running_stats_are_the_plain_mean_and_variance_before_the_ema_takes_over():
    alarm = Alarm(AlarmConfig(ema_weight=0.1))
    for value in (1.0, 2.0, 3.0):
        alarm.observe({IM_END: value})
    assert alarm.stats[IM_END]["mean"] == pytest.approx(2.0)
    assert alarm.stats[IM_END]["var"] == pytest.approx(2 / 3)  # population variance of 1, 2, 3


def test_a_spike_fires_once_with_its_metric_as_the_reason():
    rng = random.Random(0)
    series = [_healthy_step(rng) for _ in range(40)]
    series[30][IM_END] = 0.35  # below the 0.5 threshold: only the k-sigma jump can catch it
    assert _fired(Alarm(AlarmConfig()), series) == [(31, [IM_END])]
    assert alarm_metrics([IM_END]) == {"alarm": 1.0, f"alarm/{IM_END}": 1.0}
    assert alarm_metrics([]) == {"alarm": 0.0}


def test_a_threshold_fires_from_the_first_step_and_while_the_value_stays_above_it():
    alarm = Alarm(AlarmConfig())
    assert alarm.observe({IM_END: 0.9}) == [IM_END]  # no warm-up for an absolute limit
    assert alarm.observe({IM_END: 0.8, COLLAPSED: 0.7}) == [IM_END, COLLAPSED]
    assert alarm.observe({IM_END: 0.1}) == []
    assert alarm.observe({TOOL_CALL: 1.0}) == []  # not watched by default (see supervision.config)


def test_a_jump_waits_for_the_warmup():
    config = AlarmConfig(warmup_steps=5, watch={COLLAPSED: {"min_jump": 0.05}})
    early = Alarm(config)
    assert _fired(early, [{COLLAPSED: 0.01}] * 3 + [{COLLAPSED: 0.3}]) == []
    late = Alarm(config)
    assert _fired(late, [{COLLAPSED: 0.01}] * 5 + [{COLLAPSED: 0.3}]) == [(6, [COLLAPSED])]


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_flat_series_never_fires(seed):
    rng = random.Random(seed)
    series = [_healthy_step(rng) for _ in range(300)]
    assert _fired(Alarm(AlarmConfig()), series) == []


def test_the_min_jump_floor_keeps_a_metric_that_sat_at_zero_quiet():
    series = [{COLLAPSED: 0.0}] * 10 + [{COLLAPSED: 1 / 64}]  # one collapsed message in 64 after none
    assert _fired(Alarm(AlarmConfig()), series) == []
    without_floor = AlarmConfig(watch={COLLAPSED: {"min_jump": 0.0}})
    assert _fired(Alarm(without_floor), series) == [(11, [COLLAPSED])]


def test_a_success_drop_fires():
    rng = random.Random(1)
    series = [_healthy_step(rng) for _ in range(20)] + [{"success": 0.1}]
    assert _fired(Alarm(AlarmConfig()), series) == [(21, ["success_drop"])]
    assert _fired(Alarm(AlarmConfig(success_drop=None)), series) == []


def test_a_success_swing_of_a_small_batch_is_no_drop():
    # sampled success of a healthy paper-tiny run (2 tasks x 8 a step, lr 1e-4, final eval 22 %)
    swings = [{"success": s} for s in (0.5, 0.0, 0.0, 0.5, 0.5, 0.0)]
    assert _fired(Alarm(AlarmConfig()), swings) == []
    assert _fired(Alarm(AlarmConfig(k_sigma=1e-9)), swings) == [(6, ["success_drop"])]  # the drop alone fires


def test_missing_and_non_finite_metrics_are_skipped():
    alarm = Alarm(AlarmConfig())
    assert alarm.observe({"sft_loss": 2.0}) == []  # an SFT step: no control, structure or success keys
    assert alarm.observe({IM_END: float("nan")}) == []
    assert alarm.stats == {} and alarm.success["n"] == 0


def test_state_round_trips_through_json_and_the_restored_alarm_fires_where_the_original_does():
    rng = random.Random(2)
    series = [_healthy_step(rng) for _ in range(30)]
    series[25][COLLAPSED] = 0.3
    original = Alarm(AlarmConfig())
    for metrics in series[:20]:
        original.observe(metrics)
    restored = Alarm(AlarmConfig())
    restored.restore(json.loads(json.dumps(original.state())))
    assert restored.state() == original.state()
    assert _fired(restored, series[20:]) == _fired(original, series[20:]) == [(6, [COLLAPSED])]


def test_adaptive_state_owes_sft_steps_after_an_alarm_and_scales_the_lr():
    config = load_config(None, ["supervision.mode=adaptive", "supervision.signals=[expert]",
                                "supervision.adaptive.sft_steps=2", "supervision.adaptive.lr_scale=0.5"]).supervision
    state, kinds = AdaptiveState(), []
    alarms = {3, 8}  # the steps whose metrics fire (an RL step each)
    for step in range(1, 11):
        kind = step_kind(config, step, state.sft_steps_left)
        kinds.append(kind)
        state.advance(kind, step in alarms, config.adaptive)
    assert "".join(k[0] for k in kinds) == "rrrssrrrss"
    assert state.lr_factor == 0.25 and state.sft_steps_left == 0
    copy = AdaptiveState()
    copy.restore(json.loads(json.dumps(state.state())))
    assert copy == state


@pytest.mark.parametrize(("overrides", "message"), [
    (["supervision.mode=adaptive"], "has SFT steps"),
    (["supervision.mode=adaptive", "supervision.signals=[expert]", "supervision.alarm.enabled=false"],
     "reacts to the alarm"),
    (["supervision.alarm.watch.structure/collapsed.threshhold=0.2"], "unknown field"),
])
def test_inconsistent_alarm_config_is_a_one_line_error(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


def test_watch_can_be_set_from_the_command_line():
    config = load_config(None, ["supervision.alarm.watch.structure/collapsed.threshold=0.2"]).supervision.alarm
    assert list(config.watch) == [COLLAPSED] and config.watch[COLLAPSED].threshold == 0.2
