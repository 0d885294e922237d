"""The comparison of a sweep's runs (``launch.py sweep``): a row per configuration, as JSON and markdown.

Per configuration (mean ± sample std over seeds): final eval success of the id, format-OOD and content-OOD
suites; collapse rate (share of runs with ``alarm`` = 1 at some step; 0 when no run logged the key); the
largest control-token spike (``control/call_open/{im_end,tool_call}/max`` over all steps and runs; n/a when
absent); wall time per run (seconds of the sweep's attempts at it, start-up included; building the shared
actors counts in the first run on them).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cluster.sweep plans and trains the runs, then calls write_comparison
    from cluster.sweep import PlannedRun

SUCCESS_KEYS = {"id": "eval/success", "format_ood": "eval/format_ood/success", "content_ood": "eval/content_ood/success"}
SPIKE_KEYS = ("control/call_open/im_end/max", "control/call_open/tool_call/max")
WALL_FILE = "sweep_wall.json"


def run_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def run_outcome(run: PlannedRun) -> dict:
    """What the comparison needs from one finished run's metrics.jsonl."""
    records = run_records(run.run_dir)
    final = next(r for r in reversed(records) if r["step"] == run.config.trainer.total_steps)
    spikes = [r[k] for r in records for k in SPIKE_KEYS if r.get(k) is not None]
    wall = run.run_dir / WALL_FILE
    return {
        "configuration": run.configuration, "seed": run.seed, "run_dir": str(run.run_dir),
        **{suite: final.get(key) for suite, key in SUCCESS_KEYS.items()},
        "collapsed": any(r.get("alarm") == 1.0 for r in records),
        "max_spike": max(spikes) if spikes else None,
        "wall_s": sum(json.loads(wall.read_text())["attempts"]) if wall.exists() else None,
    }


def _mean_std(values: list) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def compare(outcomes: list[dict], start: dict[str, float] | None = None) -> list[dict]:
    """One row per configuration (in order of first appearance), plus the starting policy's first."""
    rows = []
    if start is not None:
        rows.append({"configuration": "start (no training)", "runs": 0,
                     **{suite: {"mean": start.get(key), "std": None} for suite, key in SUCCESS_KEYS.items()},
                     "collapse_rate": None, "max_spike": None, "wall_s": None})
    for name in dict.fromkeys(o["configuration"] for o in outcomes):
        members = [o for o in outcomes if o["configuration"] == name]
        row: dict = {"configuration": name, "runs": len(members)}
        for suite in SUCCESS_KEYS:
            mean, std = _mean_std([o[suite] for o in members])
            row[suite] = {"mean": mean, "std": std}
        row["collapse_rate"] = sum(o["collapsed"] for o in members) / len(members)
        spikes = [o["max_spike"] for o in members if o["max_spike"] is not None]
        row["max_spike"] = max(spikes) if spikes else None
        row["wall_s"] = _mean_std([o["wall_s"] for o in members])[0]
        rows.append(row)
    return rows


COLUMNS = ("configuration", "runs", "ID success %", "format-OOD %", "content-OOD %", "collapse rate",
           "max spike", "wall s/run")


def table_cells(row: dict) -> list[str]:
    """The row as text: success in percent, mean ± std over seeds (no ± for one seed); n/a when absent."""
    def success(cell: dict) -> str:
        if cell["mean"] is None:
            return "n/a"
        return f"{100 * cell['mean']:.1f}" + (f" ± {100 * cell['std']:.1f}" if cell["std"] is not None else "")

    def number(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    return [row["configuration"], str(row["runs"]), *(success(row[s]) for s in SUCCESS_KEYS),
            number(row["collapse_rate"], ".2f"), number(row["max_spike"], ".3g"), number(row["wall_s"], ".0f")]


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_comparison(sweep_dir: Path, title: str, runs: list[PlannedRun], start: dict[str, float]) -> list[dict]:
    """comparison.{json,md} of the finished ``runs`` into ``sweep_dir``, below the starting policy's row."""
    outcomes = [run_outcome(run) for run in runs]
    rows = compare(outcomes, start)
    (sweep_dir / "comparison.json").write_text(json.dumps({"title": title, "rows": rows, "runs": outcomes}, indent=1) + "\n")
    (sweep_dir / "comparison.md").write_text(markdown(rows, title))
    return rows
