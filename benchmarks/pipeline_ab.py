"""Step time of training variants against the first one, alternating runs of the embedded default.

Each seed trains every variant in turn (``launch.py train``, one run at a time: on 2 cores two runs would
share them), then prints per variant its step seconds without eval and checkpoint, as the median of the
steady steps (2 to N-1) and the whole run's sum, each as a ratio to the first variant of the same seed;
the ideal bound of overlapping sampling with update + sync, max(sample, update + sync) / (sample +
update + sync), from the first variant's phases; and every run's sampled reward and final eval.

    python benchmarks/pipeline_ab.py --steps 6 --seeds 0 1 2 \\
        --variant sync trainer.pipeline=sync --variant one_step_off trainer.pipeline=one_step_off
    python benchmarks/pipeline_ab.py --analyse --out runs/pipeline-ab   # the table of runs already there
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cluster.comparison import run_records

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = [["sync", "trainer.pipeline=sync"], ["one_step_off", "trainer.pipeline=one_step_off"]]


def train(out: Path, name: str, settings: list[str], seed: int, steps: int) -> None:
    run_dir = out / f"{name}-s{seed}"
    command = [sys.executable, str(ROOT / "launch.py"), "train", "--set", f"trainer.run_dir={run_dir}",
               "--set", f"trainer.seed={seed}", "--set", f"trainer.total_steps={steps}",
               "--set", f"trainer.eval_every={steps}"]
    for setting in settings:
        command += ["--set", setting]
    start = time.perf_counter()
    with open(out / f"{name}-s{seed}.log", "w") as log:
        code = subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    print(f"{name} seed {seed}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)


def steps_of(out: Path, name: str, seed: int) -> list[dict]:
    return [r for r in run_records(out / f"{name}-s{seed}") if r.get("step", 0) >= 1 and "time/step_s" in r]


def core_seconds(record: dict) -> float:
    return record["time/step_s"] - record.get("time/eval_s", 0.0) - record.get("time/checkpoint_s", 0.0)


def phases(record: dict) -> tuple[float, float]:
    return record["time/sample_s"], record["time/update_s"] + record["time/sync_s"]


def analyse(out: Path, names: list[str], seeds: list[int]) -> None:
    ratios: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names[1:]}
    bounds: tuple[list[float], list[float]] = ([], [])
    for seed in seeds:
        runs = {name: steps_of(out, name, seed) for name in names}
        base = runs[names[0]]
        if len(base) < 3:
            print(f"seed {seed}: {names[0]} has {len(base)} steps, too few to compare")
            continue
        steady = statistics.median(core_seconds(r) for r in base[1:-1])
        total = sum(map(core_seconds, base))
        sample, update = (sum(p[i] for p in map(phases, base)) for i in (0, 1))
        bounds[0].append(statistics.median(max(phases(r)) / sum(phases(r)) for r in base[1:-1]))
        bounds[1].append(max(sample, update) / (sample + update))
        print(f"seed {seed}: {names[0]} {steady:.1f} s/step (steady median), {total:.0f} s whole run; "
              f"sample {sample:.0f} s, update + sync {update:.0f} s")
        for name in names[1:]:
            if len(runs[name]) != len(base):
                print(f"  {name}: {len(runs[name])} steps of {len(base)}, not compared")
                continue
            mine, mine_total = statistics.median(core_seconds(r) for r in runs[name][1:-1]), sum(map(core_seconds, runs[name]))
            ratios[name][0].append(mine / steady)
            ratios[name][1].append(mine_total / total)
            print(f"  {name}: {mine:.1f} s/step (ratio {mine / steady:.3f}), {mine_total:.0f} s (ratio {mine_total / total:.3f})")
        for name in names:
            evals = [r for r in runs[name] if "eval/success" in r]
            print(f"  {name:>14} reward " + " ".join(f"{r.get('reward', float('nan')):.3f}" for r in runs[name])
                  + "".join(f" | eval id {r['eval/success']:.3f} format_ood {r.get('eval/format_ood/success', 0):.3f}"
                            f" content_ood {r.get('eval/content_ood/success', 0):.3f}" for r in evals[-1:]))
    for name, (steady, whole) in ratios.items():
        if steady:
            print(f"{name} / {names[0]}: steady median {statistics.median(steady):.3f} "
                  f"({', '.join(f'{x:.3f}' for x in steady)}), whole run median {statistics.median(whole):.3f} "
                  f"({', '.join(f'{x:.3f}' for x in whole)})")
    if bounds[0]:
        print(f"bound from {names[0]}'s phases: steady median {statistics.median(bounds[0]):.3f}, whole run median "
              f"{statistics.median(bounds[1]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pipeline-ab", help="run directories and logs")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (default 6)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed values (default 0 1 2)")
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "SETTING"),
                        help="a variant's name and its --set settings; the first is the baseline "
                             "(default: sync and one_step_off)")
    parser.add_argument("--analyse", action="store_true", help="only print the table of the runs in --out")
    args = parser.parse_args()
    variants = args.variant or DEFAULT_VARIANTS
    if len(variants) < 2:
        parser.error("give at least two variants: a baseline and one to compare with it")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.analyse:
        for seed in args.seeds:
            for name, *settings in variants:
                train(args.out, name, settings, seed, args.steps)
    analyse(args.out, [name for name, *_ in variants], args.seeds)


if __name__ == "__main__":
    main()
