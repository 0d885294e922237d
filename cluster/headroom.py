"""What ``launch.py eval --samples K`` adds to the greedy table: sampled success and pass@k per category
and, for synth, per template, beside the greedy success of the same eval.

RL sharpens what the policy already samples: where pass@k at the training temperature lies far above
greedy success there is something to sharpen; where it equals greedy there is not. The estimator and the
summaries are ``rollout/passk.py``'s; this plays the samples through the eval's pool with progress, and
draws the tables.
"""

from __future__ import annotations

from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from rollout.evaluate import Suite
from rollout.passk import SAMPLE_SEED, headroom_rows, headroom_summary
from rollout.pool import RolloutPool

CAPTION = ("sampled: mean success of the K samples at temperature T; pass@k: chance that at least one of k "
           "samples succeeds (Chen et al. 2021's unbiased estimator from the K samples). pass@k far above "
           "greedy is headroom that RL can sharpen; pass@k equal to greedy leaves RL nothing to reinforce.")


def sample_rows(pool: RolloutPool, suite: Suite, greedy_rows: list[dict], samples: int, temperature: float,
                chunk: int, progress: Progress) -> list[dict]:
    """``samples`` episodes per task of ``suite`` (in its syntax) at ``temperature``, ``chunk`` tasks per batch
    so that ``progress`` shows a bar of episodes; greedy success is the greedy eval's ``greedy_rows``."""
    bar = progress.add_task(f"sampling {samples} per task at T={temperature:g}", total=len(suite.tasks) * samples)

    def play(groups, temp):
        trajectories = []
        for start in range(0, len(groups), chunk):
            batch = groups[start : start + chunk]
            trajectories += pool.run_groups(batch, temp)
            progress.advance(bar, sum(len(group) for group in batch))
        return trajectories

    greedy = {row["id"]: row["success"] for row in greedy_rows}
    return headroom_rows(play, suite.tasks, samples, temperature, SAMPLE_SEED, suite.seed, suite.format, greedy)


def summaries(suite: Suite, rows: list[dict]) -> dict[str, dict]:
    """Per category, and per template for synth (a task counts for every template it uses)."""
    by = ("category", "template") if suite.env == "synth" else ("category",)
    return {key: headroom_summary(rows, by=key) for key in by}


def tables(suite: Suite, summary: dict[str, dict], samples: int, temperature: float) -> list[Table | Text]:
    """One table per summary: tasks, greedy, sampled, pass@1 ... pass@K (the k of rollout.passk.PASS_KS);
    then what the columns mean, as one line that spans the console (a caption would wrap to a table's width)."""
    title = f"{suite.name}: {suite.env}/{suite.split}, format {suite.format}, {samples} samples at T={temperature:g}"
    drawn = []
    for by, groups in summary.items():
        passes = [key for key in groups["all"] if key.startswith("pass@")]
        table = Table(title=f"{title}, per {by}")
        for column in (by, "tasks", "greedy", "sampled", *passes):
            table.add_column(column, justify="left" if column == by else "right")
        for name, row in groups.items():
            cells = [f"{row[key]:.1%}" for key in ("greedy", "sampled", *passes)]
            table.add_row(name, str(row["tasks"]), *cells)
        drawn.append(table)
    return [*drawn, Text(CAPTION)]
