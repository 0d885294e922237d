"""Step latency of a live BFCL episode vs replay-from-scratch scoring, on the longest long-context entry.

Live: the episode keeps its API instances (and the ground truth's) across turns, so scoring turn k
costs one turn of execution. Replay: how the reference implementation and BFCL's executor score turn k,
re-instantiating the classes and re-executing every call of turns 0..k. Prints medians and ratios.

    python benchmarks/env_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rollout.envs import EnvEpisode, load_tasks


def live_turn_seconds(task) -> list[float]:
    episode = EnvEpisode(task)
    seconds = []
    for calls in task.ground_truth:
        start = time.perf_counter()
        episode.begin_turn()
        if calls:
            episode.execute(calls)
        episode.end_turn()
        seconds.append(time.perf_counter() - start)
    return seconds


def replay_turn_seconds(task, turn: int) -> float:
    start = time.perf_counter()
    episode = EnvEpisode(task)
    for calls in task.ground_truth[: turn + 1]:
        episode.begin_turn()
        if calls:
            episode.execute(calls)
        episode.end_turn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21, help="timed repetitions per measurement (median)")
    args = parser.parse_args()

    task = max(load_tasks("bfcl", "long_context"), key=lambda t: (len(t.turns), sum(map(len, t.ground_truth))))
    last = len(task.turns) - 1
    live = [live_turn_seconds(task) for _ in range(args.repeats)]
    live_first = statistics.median(run[0] for run in live)
    live_last = statistics.median(run[last] for run in live)
    replay_first = statistics.median(replay_turn_seconds(task, 0) for _ in range(args.repeats))
    replay_last = statistics.median(replay_turn_seconds(task, last) for _ in range(args.repeats))

    print(f"entry {task.id}: {len(task.turns)} turns, {sum(map(len, task.ground_truth))} ground-truth calls")
    print(f"{'scoring':<8} {'turn 1 (ms)':>12} {'last turn (ms)':>15} {'last/first':>11}")
    print(f"{'live':<8} {live_first * 1e3:>12.2f} {live_last * 1e3:>15.2f} {live_last / live_first:>11.2f}")
    print(f"{'replay':<8} {replay_first * 1e3:>12.2f} {replay_last * 1e3:>15.2f} {replay_last / replay_first:>11.2f}")
    print(f"replay / live at the last turn: {replay_last / live_last:.1f}x")


if __name__ == "__main__":
    main()
