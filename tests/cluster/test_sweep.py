"""launch.py sweep: the preset's plan, resumability, the comparison's numbers, and --quick end to end."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import pytest

from cluster.comparison import compare, markdown, run_outcome, t_quantile, table_cells
from cluster.config import dump_config
from cluster.sweep import is_finished, load_preset, plan, prepare

PRESETS = ("rl", "sft_then_rl", "sync_expert", "interleaved_expert", "sync_off_policy", "sync_hint",
           "interleaved_erroneous", "interleaved_reflection")


def test_paper_tiny_plans_every_preset_and_an_lr_sweep(tmp_path):
    preset = load_preset("paper-tiny")
    runs = plan(preset, tmp_path, seeds=3)
    assert len(runs) == 30 and len({r.run_dir for r in runs}) == 30
    assert {Path(c.config).stem for c in preset.configurations} == set(PRESETS)
    rl_lrs = sorted(r.config.learner.lr for r in runs if r.config.supervision.mode == "none" and r.seed == 0)
    assert rl_lrs == [1e-4, 3e-4, 1e-3]
    assert {r.config.trainer.seed for r in runs} == {0, 1, 2}
    for run in runs:
        trainer = run.config.trainer
        assert (trainer.total_steps, trainer.eval_every) == (preset.steps, preset.steps)  # the final eval
        assert run.run_dir == tmp_path.resolve() / run.configuration / f"seed{run.seed}"
    quick = plan(preset, tmp_path, quick=True)
    assert [(r.configuration, r.config.trainer.total_steps) for r in quick] == [("rl", 2), ("sft_then_rl", 2)]
    assert quick[0].config.trainer.model == str(tmp_path.resolve() / "test-policy")


def test_supervision_table_samples_as_many_episodes_per_row(tmp_path):
    from supervision.config import step_kind

    table = {r.configuration: r for r in plan(load_preset("supervision-table"), tmp_path, seeds=1)}
    sampling_steps = {name: sum(step_kind(run.config.supervision, step) != "sft"
                                for step in range(1, run.config.trainer.total_steps + 1))
                      for name, run in table.items()}
    assert sampling_steps == dict.fromkeys(table, 6)
    assert [table[n].config.trainer.total_steps for n in table] == [6, 6, 7, 7]


def test_the_paper_preset_gives_the_scattered_rows_more_seeds(tmp_path):
    runs = plan(load_preset("paper"), tmp_path)
    seeds = {name: sorted(r.seed for r in runs if r.configuration == name) for name in {r.configuration for r in runs}}
    counts = {"rl": 7, "interleaved_expert": 7, "interleaved_erroneous": 7, "interleaved_reflection": 7, "adaptive": 10}
    assert seeds == {name: list(range(counts.get(name, 3))) for name in seeds} and len(seeds) == 10
    assert [(r.configuration, r.seed) for r in runs[-8:]] == [(name, 6) for name in (  # seed-major
        "rl", "interleaved_expert", "interleaved_erroneous", "interleaved_reflection", "adaptive")] + [("adaptive", s) for s in (7, 8, 9)]
    assert len(plan(load_preset("paper"), tmp_path, seeds=2)) == 4 * 7 + 10 + 5 * 2  # --seeds: the other rows' count


def test_collapse_repair_runs_every_rl_at_the_collapsing_lr_and_sft_gently(tmp_path):
    runs = {r.configuration: r.config for r in plan(load_preset("collapse-repair"), tmp_path, seeds=1)}
    assert set(runs) == {"rl", "sft_then_rl", "sync_expert", "interleaved_expert", "adaptive"}
    assert {(c.learner.lr, c.learner.sft_lr) for c in runs.values()} == {(1e-3, 1e-4)}
    adaptive = runs["adaptive"]
    assert adaptive.supervision.adaptive.rollback and adaptive.trainer.save_every == 1
    assert adaptive.trainer.keep_checkpoints >= 2  # the one before the alarm's weights must still be there


def _fake_run(run, steps_done: int, final_eval: bool, checkpoint: bool) -> None:
    run_dir = run.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(run.config))
    records = [{"step": s, "reward": 0.1} for s in range(1, steps_done + 1)]
    if final_eval:
        records[-1]["eval/success"] = 0.5
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if checkpoint:
        (run_dir / "checkpoints" / "step_000001").mkdir(parents=True)
        (run_dir / "checkpoints" / "latest").write_text("step_000001\n")


def test_finished_runs_are_kept_unfinished_ones_resume_or_start_over(tmp_path):
    runs = plan(load_preset("paper-tiny"), tmp_path, quick=True)
    finished, unfinished = runs
    _fake_run(finished, 2, final_eval=True, checkpoint=True)
    assert is_finished(finished) and not is_finished(unfinished)
    _fake_run(unfinished, 1, final_eval=False, checkpoint=True)
    assert prepare(unfinished).trainer.resume is True
    (unfinished.run_dir / "checkpoints" / "latest").write_text("step_000002\n")  # the last step, its metrics lost
    assert prepare(unfinished).trainer.resume is False and not unfinished.run_dir.exists()
    _fake_run(unfinished, 1, final_eval=False, checkpoint=True)
    (unfinished.run_dir / "checkpoints" / "latest").unlink()  # died before its first checkpoint
    assert prepare(unfinished).trainer.resume is False and not unfinished.run_dir.exists()
    _fake_run(unfinished, 1, final_eval=False, checkpoint=True)
    changed = unfinished.config.model_copy(update={"learner": unfinished.config.learner.model_copy(update={"lr": 0.5})})
    (unfinished.run_dir / "config.yaml").write_text(dump_config(changed))
    with pytest.raises(ValueError, match="another config"):
        prepare(unfinished)


def test_t_quantiles_match_the_tables():
    assert [round(t_quantile(df), 3) for df in (1, 2, 3, 4, 10, 30)] == [12.706, 4.303, 3.182, 2.776, 2.228, 2.042]


def test_comparison_numbers(tmp_path):
    def outcome(name, seed, success, alarm, spike, wall, grammar=None):
        return {"configuration": name, "seed": seed, "id": success, "format_ood": success / 2,
                "content_ood": None, "collapsed": alarm is not None, "first_collapse": alarm, "max_spike": spike,
                "max_grammar_spike": grammar, "min_call_start": 0.7 - seed / 10, "wall_s": wall}

    outcomes = [outcome("rl", 0, 0.2, 3, 0.9, 100.0, 0.5), outcome("rl", 1, 0.3, None, 0.1, 110.0),
                outcome("rl", 2, 0.4, None, None, 120.0), outcome("mixed", 0, 0.25, None, None, 90.0),
                outcome("sup", 0, 0.5, 5, None, 80.0, 0.25), outcome("sup", 1, 0.6, 2, None, 80.0),
                outcome("sup", 2, 0.55, None, None, 80.0)]
    rows = compare(outcomes, start={"eval/success": 0.215, "eval/format_ood/success": 0.01})
    start, rl, mixed, sup = rows
    assert start["configuration"] == "start (no training)" and start["id"]["mean"] == 0.215
    assert rl["id"]["mean"] == pytest.approx(0.3) and rl["id"]["std"] == pytest.approx(statistics.stdev([0.2, 0.3, 0.4]))
    # 95 % t-interval of 3 values: t(0.975, 2) = 4.3027 times 0.1 / √3
    assert rl["id"]["ci"] == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
    assert rl["collapse_rate"] == pytest.approx(1 / 3) and rl["max_spike"] == 0.9 and rl["wall_s"] == 110.0
    assert rl["first_collapse"] == 3 and rl["max_grammar_spike"] == 0.5 and rl["vs_rl"] == {}
    # Welch: variances 0.01 and 0.0025 over 3 each → se² = 0.004167, df = se⁴ / Σ (v/n)²/(n-1) = 2.941
    se2 = 0.01 / 3 + 0.0025 / 3
    df = se2 ** 2 / ((0.01 / 3) ** 2 / 2 + (0.0025 / 3) ** 2 / 2)
    assert df == pytest.approx(2.941, abs=1e-3)
    assert sup["vs_rl"]["id"]["diff"] == pytest.approx(0.25)
    assert sup["vs_rl"]["id"]["ci"] == pytest.approx(t_quantile(df) * math.sqrt(se2), rel=1e-9)
    assert t_quantile(3) < t_quantile(df) < t_quantile(2.9)
    assert sup["first_collapse"] == 2 and sup["collapse_rate"] == pytest.approx(2 / 3)
    assert table_cells(rl) == ["rl", "3", "30.0 ± 24.8", "", "15.0 ± 12.4", "", "n/a", "", "0.33", "3", "0.9", "0.5",
                               "0.5", "110"]
    assert table_cells(mixed) == ["mixed", "1", "25.0", "-5.0", "12.5", "-2.5", "n/a", "n/a", "0.00", "n/a", "n/a",
                                  "n/a", "0.7", "90"]
    assert table_cells(sup)[2:4] == ["55.0 ± 12.4", f"+25.0 ± {100 * sup['vs_rl']['id']['ci']:.1f}"]
    assert table_cells(start)[2:4] == ["21.5", ""]
    lines = markdown(rows, "t").splitlines()
    assert lines[0] == "# t" and lines[4:] == ["| " + " | ".join(table_cells(row)) + " |" for row in rows]


def test_outcome_reads_the_final_eval_alarms_and_spikes(tmp_path):
    run = plan(load_preset("paper-tiny"), tmp_path, quick=True)[0]
    run.run_dir.mkdir(parents=True)
    records = [{"step": 0, "eval/success": 0.9},
               {"step": 1, "alarm": 0.0, "control/call_open/im_end/max": 0.2, "structure/polluted": 0.1,
                "control/message_start/tool_call/mean": 0.6},
               {"step": 2, "alarm": 1.0, "structure/polluted": 0.3, "structure/collapsed": 0.2, "control/call_open/tool_call/max": 0.7, "control/turn_end/im_end/max": 1.0,
                "control/call_key/argument_key/mean": 0.4, "control/call_key/argument_key/max": 0.9,
                "control/message_start/tool_call/mean": 0.01,
                "eval/success": 0.1, "eval/format_ood/success": 0.05, "eval/content_ood/success": 0.0}]
    (run.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run.run_dir / "sweep_wall.json").write_text(json.dumps({"attempts": [10.0, 5.5]}))
    got = run_outcome(run)
    assert (got["id"], got["format_ood"], got["content_ood"]) == (0.1, 0.05, 0.0)
    assert got["collapsed"] is True and got["max_spike"] == 0.7 and got["wall_s"] == 15.5
    assert got["first_collapse"] == 2 and got["first_alarm"] == 2 and got["max_grammar_spike"] == 0.4
    assert got["min_call_start"] == 0.01


@pytest.mark.slow
def test_quick_sweep_completes_and_a_second_invocation_redoes_nothing(ray_local, tmp_path, capsys):
    """Both invocations in this process, the first on the session's Ray (a subprocess costs ~15 s of startup)."""
    import launch as cli

    out = tmp_path / "sweep"
    capsys.readouterr()
    assert cli.main(["sweep", "--quick", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "rl seed 0: new" in first and "sft_then_rl seed 0: new" in first
    table = (out / "comparison.md").read_text()
    assert table.startswith("# sweep paper-tiny (quick): 2 runs, 2 at a time")  # the preset's parallel: 2
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:]] == ["start (no training)", "rl", "sft_then_rl"]
    report = json.loads((out / "comparison.json").read_text())
    assert [(r["configuration"], r["seed"]) for r in report["runs"]] == [("rl", 0), ("sft_then_rl", 0)]
    for run in report["runs"]:
        logged = (out / run["configuration"] / f"seed{run['seed']}" / "metrics.jsonl").read_text().splitlines()
        final = json.loads(logged[-1])  # the comparison's numbers are the run's last logged evals
        assert [run[suite] for suite in ("id", "format_ood", "content_ood")] == [
            final["eval/success"], final["eval/format_ood/success"], final["eval/content_ood/success"]]
        assert run["wall_s"] > 0 and run["collapsed"] in (True, False)
    sft = [json.loads(line) for line in (out / "sft_then_rl" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update/sft"] for r in sft] == [1.0, 0.0] and "eval/content_ood/success" in sft[-1]
    metrics_files = sorted(out.glob("*/seed0/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in metrics_files]

    started = time.perf_counter()
    capsys.readouterr()
    assert cli.main(["sweep", "--quick", "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert time.perf_counter() - started < 30  # no Ray, no engine: it only reads the run directories
    assert "new" not in second and "resume" not in second and second.count(": finished") == 2
    assert (out / "comparison.md").read_text() == table
    assert [p.stat().st_mtime_ns for p in metrics_files] == stamps

    # a report of the real runs: every figure present and referenced
    assert cli.main(["report", *map(str, (p.parent for p in metrics_files)), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert {"reward.png", "optimization.png"} <= set(pngs) and all(f'href="{name}"' in page for name in pngs)
