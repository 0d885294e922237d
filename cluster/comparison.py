"""The comparison of a sweep's runs (``launch.py sweep``): a row per configuration, as JSON and markdown.

Per configuration: final eval success of the id, format-OOD and content-OOD suites as the mean over seeds
± the half-width of its 95 % Student-t interval, and the difference to the ``rl`` row's mean ± its 95 %
Welch interval; collapse rate (share of runs with a broken step: at least ``BROKEN_SHARE`` of its sampled
messages ``collapsed`` or ``polluted``, rollout/structure.py; the alarm is the detector, this the outcome it
should detect) and the earliest broken step of any run; the largest control-token spike
(``control/call_open/{im_end,tool_call}/max``) and the largest JSON-grammar spike (the step mean of p(an
argument key where a call's ``name`` belongs) or of p(a colon after a value): ``GRAMMAR_SPIKE_KEYS``) over
all steps and runs, n/a when absent; the lowest step mean of p(``<tool_call>``) at a message's start
(``CALL_START_KEY``: the probability that fell when the headroom default collapsed into calls in python
syntax); wall time per run (seconds of the sweep's attempts at it, start-up included; building the shared
actors counts in the first run on them).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from mpmath import betainc

if TYPE_CHECKING:  # cluster.sweep plans and trains the runs, then calls write_comparison
    from cluster.sweep import PlannedRun

SUCCESS_KEYS = {"id": "eval/success", "format_ood": "eval/format_ood/success", "content_ood": "eval/content_ood/success"}
SPIKE_KEYS = ("control/call_open/im_end/max", "control/call_open/tool_call/max")
# step means: one broken call in a healthy step already puts the max (and at times the p99) near 1
GRAMMAR_SPIKE_KEYS = ("control/call_key/argument_key/mean", "control/value_end/colon/mean")
# the structural probability that fell in the headroom default's collapse (messages became python-syntax calls)
CALL_START_KEY = "control/message_start/tool_call/mean"
BASELINE = "rl"  # the row every other configuration's difference is taken to
BROKEN_SHARE = 0.5
WALL_FILE = "sweep_wall.json"


def broken_share(record: dict) -> float | None:
    """The share of a step's sampled messages that were collapsed or polluted (None: the step sampled none);
    from the two shares where a step's metrics predate ``broken_share`` (the committed sweep logs)."""
    if "broken_share" in record:
        return record["broken_share"]
    shares = [record[key] for key in ("structure/collapsed", "structure/polluted") if key in record]
    return sum(shares) if shares else None


def first_broken_step(records: list[dict]) -> int | None:
    """The first step at which at least BROKEN_SHARE of the sampled messages were collapsed or polluted."""
    return next((r["step"] for r in records if (broken_share(r) or 0.0) >= BROKEN_SHARE), None)


def run_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def run_outcome(run: PlannedRun) -> dict:
    """What the comparison needs from one finished run's metrics.jsonl."""
    records = run_records(run.run_dir)
    final = next(r for r in reversed(records) if r["step"] == run.config.trainer.total_steps)
    def logged(keys: tuple[str, ...]) -> list[float]:
        return [r[k] for r in records for k in keys if r.get(k) is not None]

    wall = run.run_dir / WALL_FILE
    return {
        "configuration": run.configuration, "seed": run.seed, "run_dir": str(run.run_dir),
        **{suite: final.get(key) for suite, key in SUCCESS_KEYS.items()},
        "collapsed": (broken := first_broken_step(records)) is not None, "first_collapse": broken,
        "first_alarm": next((r["step"] for r in records if r.get("alarm") == 1.0), None),
        "max_spike": max(logged(SPIKE_KEYS), default=None),
        "max_grammar_spike": max(logged(GRAMMAR_SPIKE_KEYS), default=None),
        "min_call_start": min(logged((CALL_START_KEY,)), default=None),
        "wall_s": sum(json.loads(wall.read_text())["attempts"]) if wall.exists() else None,
    }


def t_quantile(df: float, level: float = 0.975) -> float:
    """The Student-t quantile (bisection on the CDF through the regularised incomplete beta function)."""
    def cdf(t: float) -> float:
        return 1 - 0.5 * float(betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True))

    low, high = 0.0, 1e3
    for _ in range(60):
        low, high = ((low + high) / 2, high) if cdf((low + high) / 2) < level else (low, (low + high) / 2)
    return (low + high) / 2


def _present(values: list) -> list[float]:
    return [v for v in values if v is not None]


def summary(values: list) -> dict:
    """Mean, sample std and the half-width of the mean's 95 % t-interval (None with fewer than 2 values)."""
    present = _present(values)
    if not present:
        return {"mean": None, "std": None, "ci": None}
    if len(present) < 2:
        return {"mean": present[0], "std": None, "ci": None}
    std = statistics.stdev(present)
    return {"mean": statistics.fmean(present), "std": std,
            "ci": t_quantile(len(present) - 1) * std / math.sqrt(len(present))}


def difference(values: list, baseline: list) -> dict:
    """mean(values) − mean(baseline) and the half-width of its 95 % Welch interval (None below 2 + 2 values)."""
    a, b = _present(values), _present(baseline)
    if not a or not b:
        return {"diff": None, "ci": None}
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "ci": None}
    parts = [statistics.variance(a) / len(a), statistics.variance(b) / len(b)]
    if sum(parts) == 0:
        return {"diff": diff, "ci": 0.0}
    df = sum(parts) ** 2 / (parts[0] ** 2 / (len(a) - 1) + parts[1] ** 2 / (len(b) - 1))
    return {"diff": diff, "ci": t_quantile(df) * math.sqrt(sum(parts))}


def compare(outcomes: list[dict], start: dict[str, float] | None = None) -> list[dict]:
    """One row per configuration (in order of first appearance), plus the starting policy's first."""
    rows = []
    if start is not None:
        rows.append({"configuration": "start (no training)", "runs": 0,
                     **{suite: summary([start.get(key)]) for suite, key in SUCCESS_KEYS.items()},
                     "vs_rl": {}, "collapse_rate": None, "first_collapse": None, "max_spike": None,
                     "max_grammar_spike": None, "min_call_start": None, "wall_s": None})
    baseline = [o for o in outcomes if o["configuration"] == BASELINE]
    for name in dict.fromkeys(o["configuration"] for o in outcomes):
        members = [o for o in outcomes if o["configuration"] == name]
        row: dict = {"configuration": name, "runs": len(members)}
        for suite in SUCCESS_KEYS:
            row[suite] = summary([o[suite] for o in members])
        row["vs_rl"] = {suite: difference([o[suite] for o in members], [o[suite] for o in baseline])
                        for suite in SUCCESS_KEYS} if baseline and name != BASELINE else {}
        row["collapse_rate"] = sum(o["collapsed"] for o in members) / len(members)
        row["first_collapse"] = min(_present([o.get("first_collapse") for o in members]), default=None)
        for key in ("max_spike", "max_grammar_spike"):
            row[key] = max(_present([o.get(key) for o in members]), default=None)
        row["min_call_start"] = min(_present([o.get("min_call_start") for o in members]), default=None)
        row["wall_s"] = summary([o["wall_s"] for o in members])["mean"]
        rows.append(row)
    return rows


COLUMNS = ("configuration", "runs", "ID success %", "Δ ID vs rl", "format-OOD %", "Δ format-OOD", "content-OOD %",
           "Δ content-OOD", "collapse rate", "first collapse step", "max control spike", "max grammar spike",
           "min p(`<tool_call>`) at message start", "wall s/run")


def table_cells(row: dict) -> list[str]:
    """The row as text, in percentage points: mean ± 95 % half-width (no ± below two seeds); n/a when absent."""
    def interval(value, ci, signed: bool = False) -> str:
        if value is None:
            return "n/a"
        return format(100 * value, "+.1f" if signed else ".1f") + (f" ± {100 * ci:.1f}" if ci is not None else "")

    def number(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    cells = [row["configuration"], str(row["runs"])]
    for suite in SUCCESS_KEYS:
        versus = row["vs_rl"].get(suite)
        cells += [interval(row[suite]["mean"], row[suite]["ci"]),
                  "" if versus is None else interval(versus["diff"], versus["ci"], signed=True)]
    return [*cells, number(row["collapse_rate"], ".2f"), number(row["first_collapse"], "d"),
            number(row["max_spike"], ".3g"), number(row["max_grammar_spike"], ".3g"), number(row["min_call_start"], ".3g"),
            number(row["wall_s"], ".0f")]


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
