"""launch.py report: PNGs and one HTML page that embeds and names every figure; absent metrics are skipped."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.report import collapse_figure, load_run, reward_figure, run_labels, run_summary, write_report

ROOT = Path(__file__).resolve().parents[2]
STATES = ("healthy_tool_call", "healthy_response", "polluted", "collapsed")
CONTROL = {"call_open": ("healthy", "im_end", "tool_call"), "call_close": ("im_end", "text"), "turn_end": ("im_end",)}


def synthetic_run(run_dir: Path, steps: int = 30, collapse_at: int | None = 18, diagnostics: bool = True,
                  sft_every: int | None = 10, binary: bool = False, skipped: tuple[int, ...] = ()) -> Path:
    """A metrics.jsonl with every key a full run logs: a collapse (control-token spike, collapsed share up,
    success down, an alarm) from ``collapse_at`` on; SFT steps every ``sft_every``-th step; ``binary``:
    reward = success; ``skipped``: RL steps without an update (sampled, no learner metrics)."""
    run_dir.mkdir(parents=True)
    tasks = {"eval/tasks": 100.0, "eval/format_ood/tasks": 50.0, "eval/content_ood/tasks": 50.0}
    records = [{"step": 0, "wall_s": 1.0, "eval/success": 0.2, "eval/format_ood/success": 0.05,
                "eval/content_ood/success": 0.1, **tasks}]
    for step in range(1, steps + 1):
        broken = collapse_at is not None and step >= collapse_at
        sft = bool(sft_every) and step % sft_every == 0
        record = {"step": step, "wall_s": 10.0 * step, "update/rl": float(not sft), "update/sft": float(sft),
                  "update/combined": 0.0, "update/skipped": float(step in skipped), "time/step_s": 10.0}
        if not sft:
            success = 0.05 if broken else 0.2
            record |= {"reward": success if binary else 0.1 if broken else 0.2 + 0.01 * step, "success": success,
                       "reward_std": 0.3}
        if not sft and step not in skipped:
            record |= {"entropy": 0.8 + 0.02 * step, "approx_kl_old": 1e-3, "grad_norm": 5.0 if broken else 1.0,
                       "clip_fraction": 0.01}
            collapsed = 0.6 if broken else 0.02
            shares = (0.9 - collapsed, 0.08, 0.02, collapsed)
            record |= {f"structure/{s}": share for s, share in zip(STATES, shares)}
            if diagnostics:
                spike = 0.7 if broken else 1e-4 * (1 + math.sin(step))
                for point, tokens in CONTROL.items():
                    for token in tokens:
                        value = (1 - spike) if token == "healthy" else spike
                        record |= {f"control/{point}/{token}/mean": value / 2, f"control/{point}/{token}/p99": value,
                                   f"control/{point}/{token}/max": value}
        if collapse_at is not None:
            record["alarm"] = float(step == collapse_at)
        if step % 10 == 0 or step == steps:
            record |= {"eval/success": 0.05 if broken else 0.25, "eval/format_ood/success": 0.02,
                       "eval/content_ood/success": 0.08, "eval/turn_accuracy": 0.4, **tasks}
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _check_page(page: Path, expected: set[str]) -> None:
    pngs = {p.name for p in page.parent.glob("*.png")}
    assert pngs == expected
    text = page.read_text()
    for name in pngs:
        assert f'href="{name}"' in text, name
        assert base64.b64encode((page.parent / name).read_bytes()).decode() in text, name  # self-contained
    assert len(re.findall(r"<img ", text)) == len(pngs)


def test_full_metrics_give_every_figure(tmp_path):
    run = synthetic_run(tmp_path / "run")
    page = write_report([run])
    assert page == run / "report" / "report.html"
    _check_page(page, {"reward.png", "collapse.png", "control_tokens.png", "structure.png", "optimization.png"})
    for png in page.parent.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_absent_keys_are_skipped_and_stale_figures_removed(tmp_path):
    run = synthetic_run(tmp_path / "run", diagnostics=False, collapse_at=None, sft_every=None)
    (run / "report").mkdir()
    (run / "report" / "control_tokens.png").write_bytes(b"old")  # from an older run with diagnostics
    page = write_report([run])
    _check_page(page, {"reward.png", "collapse.png", "structure.png", "optimization.png"})
    # only step-0 eval: just the reward figure
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 0, "wall_s": 1.0, "eval/success": 0.2}) + "\n")
    _check_page(write_report([bare], tmp_path / "bare-report"), {"reward.png"})


def test_several_runs_overlay_into_one_report_via_the_cli(tmp_path):
    first = synthetic_run(tmp_path / "sweep" / "rl" / "seed0")
    second = synthetic_run(tmp_path / "sweep" / "interleaved" / "seed0", collapse_at=None)
    out = tmp_path / "combined"
    result = subprocess.run([sys.executable, "launch.py", "report", str(first), str(second), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    _check_page(out / "report.html", {"reward.png", "collapse.png", "control_tokens.png", "structure.png", "optimization.png"})
    text = (out / "report.html").read_text()
    assert "rl/seed0" in text and "interleaved/seed0" in text  # the labels tell the runs apart
    rows = [run_summary(load_run(p, label)) for p, label in zip((first, second), run_labels([first, second]))]
    assert [r["alarm steps"] for r in rows] == [1, 0] and rows[0]["SFT steps"] == 3
    assert rows[0]["final id success"] == "5.0% ± 2.2%" and rows[1]["final id success"] == "25.0% ± 4.3%"


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]


def test_eval_points_carry_their_standard_error(tmp_path):
    run = load_run(synthetic_run(tmp_path / "run"), "run")
    successes = [0.2, 0.25, 0.05, 0.05]  # steps 0, 10, 20, 30
    assert run.eval_errors("eval/success") == pytest.approx([math.sqrt(p * (1 - p) / 100) for p in successes])
    fig = reward_figure([run])
    eval_ax = next(ax for ax in fig.axes if ax.get_title().startswith("eval success"))
    assert len(eval_ax.containers) == 3 and all(bars.has_yerr for bars in eval_ax.containers)  # one per suite
    # a run from before eval/tasks was logged: points without bars, and the title does not promise them
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if not k.endswith("/tasks")})
                                               + "\n" for r in records))
    assert load_run(old, "old").eval_errors("eval/success") is None
    assert "eval success (greedy)" in _titles(reward_figure([load_run(old, "old")]))


def test_lines_break_at_steps_that_did_not_measure_and_equal_panels_are_drawn_once(tmp_path):
    run = load_run(synthetic_run(tmp_path / "run", steps=12, collapse_at=None, binary=True, skipped=(3, 4)), "run")
    steps, values = run.gapped("entropy")
    assert steps == list(range(1, 13))
    assert [s for s, v in zip(steps, values) if math.isnan(v)] == [3, 4, 10]  # no update, no update, SFT
    assert [s for s, v in zip(*run.gapped("success")) if math.isnan(v)] == [10]  # sampled at 3 and 4
    # binary reward: sampled reward = success, one panel
    assert _titles(reward_figure([run])) == ["sampled success = reward (train)", "eval success (greedy, ± standard error)"]
    shaped = load_run(synthetic_run(tmp_path / "shaped", steps=12, collapse_at=None), "shaped")
    assert _titles(reward_figure([run, shaped]))[:2] == ["sampled reward (train)", "sampled success (train)"]


def test_the_collapse_overlay_puts_every_run_on_success_and_the_probe(tmp_path):
    broken = load_run(synthetic_run(tmp_path / "rl"), "rl")
    healthy = load_run(synthetic_run(tmp_path / "interleaved", collapse_at=None), "interleaved")
    # collapsed + polluted: 0.02 + 0.02 before the collapse at step 18, 0.6 + 0.02 from it; none at SFT steps
    steps, shares = broken.gapped("broken")
    assert shares[steps.index(17)] == pytest.approx(0.04) and shares[steps.index(18)] == pytest.approx(0.62)
    assert math.isnan(shares[steps.index(20)])
    fig = collapse_figure([broken, healthy])
    assert _titles(fig) == ["sampled success (train)", "broken: collapsed + polluted messages"]  # no grammar keys logged
    curves = [[line for line in ax.lines if line.get_marker() == "o"] for ax in fig.axes if ax.get_title()]
    assert [len(c) for c in curves] == [2, 2]  # both runs on each panel (the alarm's dotted line is no curve)


@pytest.mark.parametrize(("runs", "message"), [(["nowhere"], "not a run directory"), (["a", "b"], "--out")])
def test_bad_input_is_one_line(tmp_path, runs, message):
    result = subprocess.run([sys.executable, "launch.py", "report", *(str(tmp_path / r) for r in runs)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1
