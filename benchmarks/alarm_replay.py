"""Replay the collapse alarm over logged runs: which watch list fires in collapsing runs, and only there.

Reads each run's metrics.jsonl (a sweep directory's ``*/seed*`` runs, or run directories), feeds its
training steps to ``supervision.alarm.Alarm`` under each candidate watch list, and prints per run the first
step each list fires at, beside the run's first broken step (``cluster.comparison.first_broken_step``: at
least half of the sampled messages ``collapsed`` or ``polluted``, rollout/structure.py). A run without one
is healthy; a list's false alarms are its firings in healthy runs, and it is early enough when it fires at
or before the first broken step of every collapsing run.

    python benchmarks/alarm_replay.py runs/sweep-paper
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.comparison import broken_share, first_broken_step, run_records
from supervision.alarm import Alarm
from supervision.config import AlarmConfig, WatchedMetric

# step means (the max reads ~1 in healthy steps: one broken call is enough); healthy means stay below 0.03
GRAMMAR = {"control/call_key/argument_key/mean": WatchedMetric(threshold=0.1, min_jump=0.05),
           "control/value_end/colon/mean": WatchedMetric(threshold=0.1, min_jump=0.05)}
WATCH = AlarmConfig().watch
BEFORE = {k: v for k, v in WATCH.items() if k != "broken_share"}  # the default before broken_share joined it
CANDIDATES = {
    "default": WATCH,
    "default+grammar": {**WATCH, **GRAMMAR},
    "grammar": GRAMMAR,
    "no broken_share": BEFORE,
    "no polluted": {k: v for k, v in BEFORE.items() if k != "structure/polluted"},
}


def first_fired(records: list[dict], watch: dict[str, WatchedMetric]) -> int | None:
    alarm = Alarm(AlarmConfig(watch=watch))
    return next((r["step"] for r in records if "step" in r and alarm.observe(r)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories or run directories")
    args = parser.parse_args()
    runs = sorted({p.parent for path in args.paths for p in [*path.glob("*/seed*/metrics.jsonl"),
                                                            *path.glob("metrics.jsonl")]})
    tally = {name: {"false": 0, "late": 0, "early": 0} for name in CANDIDATES}
    print("run".ljust(36), "broken at", *(name.rjust(18) for name in CANDIDATES))
    collapsing = 0
    for run in runs:
        # training steps only; broken_share as it would have been logged where a run predates it
        records = [{"broken_share": broken_share(r), **r} for r in run_records(run) if "structure/collapsed" in r]
        collapsed = first_broken_step(records)
        collapsing += collapsed is not None
        fired = {name: first_fired(records, watch) for name, watch in CANDIDATES.items()}
        for name, step in fired.items():
            if collapsed is None:
                tally[name]["false"] += step is not None
            else:
                tally[name]["early" if step is not None and step <= collapsed else "late"] += 1
        label = f"{run.parent.name}/{run.name}"
        print(label.ljust(36), str(collapsed).rjust(9), *(str(step).rjust(18) for step in fired.values()))
    print(f"\n{len(runs)} runs, {collapsing} collapsing")
    for name, counts in tally.items():
        print(f"{name:16s} false alarms in healthy runs {counts['false']}/{len(runs) - collapsing}, "
              f"fired at or before the collapse {counts['early']}/{collapsing}")


if __name__ == "__main__":
    main()
