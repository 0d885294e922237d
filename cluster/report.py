"""``launch.py report``: figures (PNG) and one self-contained HTML page from run directories' metrics.jsonl.

Every figure puts the training step on the x axis and overlays the runs (one colour each). SFT steps
(``update/sft`` = 1) are shaded in the run's colour, steps that changed no weight (``update/skipped`` = 1)
hatched grey and alarm steps (``alarm`` = 1) marked with a dotted line, so the schedule's phases and the
detector's verdicts sit next to the curves. A per-step line breaks at a step that did not log its metric
(an SFT step samples nothing; a step without an update has no gradient) instead of bridging it. Eval
points carry their binomial standard error (``eval/tasks`` tasks): a few evals of 100 tasks differ by
noise of ±4 points. A metric that no run logged is skipped, a panel that would repeat another (sampled
reward = success under the binary reward) is drawn once, and a figure with nothing to draw is not written.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after matplotlib.use: the backend must be chosen first
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cluster.comparison import broken_share
from cluster.console import standard_error

SUITE_KEYS = {"id": "eval/success", "format_ood": "eval/format_ood/success", "content_ood": "eval/content_ood/success"}
SUITE_STYLES = {"id": "-", "format_ood": "--", "content_ood": ":"}
STATE_COLORS = {"healthy_tool_call": "#2ca02c", "healthy_response": "#1f77b4", "polluted": "#ff7f0e",
                "collapsed": "#d62728"}
CONTROL_ORDER = {"message_start": ("tool_call", "im_end"), "call_open": ("healthy", "im_end", "tool_call"), "call_close": ("im_end", "text"),
                 "turn_end": ("im_end",), "call_key": ("name", "argument_key"), "tool_name": ("tool",),
                 "arguments_open": ("object",), "value_end": ("end", "colon")}
OPTIMIZATION_KEYS = (("entropy", "policy entropy"), ("kl_ref", "KL to the reference"),
                     ("approx_kl_old", "KL to the sampling policy"), ("grad_norm", "gradient norm"),
                     ("clip_fraction", "clip fraction"))
# success beside the collapse probe: the comparison's broken share and the probabilities that moved in the
# collapses measured so far (docs/paper-results.md); a step mean each, one line per run
COLLAPSE_PANELS = (("sampled success (train)", "success"),
                   ("broken: collapsed + polluted messages", "broken"),
                   ("message start: p(<tool_call>) mean", "control/message_start/tool_call/mean"),
                   ("call key: p(an argument key) mean", "control/call_key/argument_key/mean"),
                   ("value end: p(a colon) mean", "control/value_end/colon/mean"))
CONTROL_KEY = re.compile(r"^control/([^/]+)/([^/]+)/(mean|max)$")


@dataclass
class Run:
    label: str
    path: Path
    records: list[dict]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the records that logged ``key``."""
        points = [(r["step"], r[key]) for r in self.records if key in r and r[key] is not None]
        return [s for s, _ in points], [v for _, v in points]

    def gapped(self, key: str) -> tuple[list[int], list[float]]:
        """``series`` with NaN at the training steps between its first and last point that did not log ``key``:
        matplotlib breaks the line there rather than drawing a change no step measured."""
        steps, _ = self.series(key)
        if not steps:
            return [], []
        span = [r for r in self.records if steps[0] <= r["step"] <= steps[-1]]
        return [r["step"] for r in span], [r[key] if r.get(key) is not None else math.nan for r in span]

    def eval_errors(self, key: str) -> list[float] | None:
        """Binomial standard errors of the ``series(key)`` success rates; None when the task count was not
        logged (runs from before eval/tasks)."""
        tasks_key = key.removesuffix("success") + "tasks"
        points = [r for r in self.records if r.get(key) is not None]
        if not all(r.get(tasks_key) for r in points):
            return None
        return [standard_error(r[key], r[tasks_key]) for r in points]

    def steps_where(self, key: str) -> list[int]:
        return [r["step"] for r in self.records if r.get(key) == 1.0]

    def logged(self) -> set[str]:
        return {key for r in self.records for key in r}


def load_run(path: Path, label: str) -> Run:
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ValueError(f"{path} is not a run directory (no metrics.jsonl)")
    lines = metrics.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    for record in records:
        if (share := broken_share(record)) is not None:
            record["broken"] = share
    return Run(label, path, records)


def run_labels(paths: list[Path]) -> list[str]:
    """Directory names, or as many trailing path parts as it takes to tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _colors(runs: list[Run]) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {run.label: cycle[i % len(cycle)] for i, run in enumerate(runs)}


def _mark_schedule(ax, runs: list[Run], colors: dict[str, str]) -> None:
    """SFT steps shaded, steps without an update hatched, alarm steps dotted; the same integer step axis on
    every panel."""
    steps = [r["step"] for run in runs for r in run.records]
    ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for run in runs:
        for step in run.steps_where("update/sft"):
            ax.axvspan(step - 0.5, step + 0.5, color=colors[run.label], alpha=0.12, linewidth=0)
        for step in run.steps_where("update/skipped"):
            ax.axvspan(step - 0.5, step + 0.5, facecolor="none", edgecolor="grey", alpha=0.3, hatch="//",
                       linewidth=0)
        for step in run.steps_where("alarm"):
            ax.axvline(step, color=colors[run.label], linestyle=":", linewidth=1.5)


def _legend(fig, runs: list[Run], colors: dict[str, str], extra: list | None = None) -> None:
    handles = [Line2D([], [], color=colors[r.label], label=r.label) for r in runs]
    if any(r.steps_where("update/sft") for r in runs):
        handles.append(Patch(color="grey", alpha=0.25, label="SFT steps (shaded)"))
    if any(r.steps_where("update/skipped") for r in runs):
        handles.append(Patch(facecolor="none", edgecolor="grey", hatch="//", label="no update (hatched)"))
    if any(r.steps_where("alarm") for r in runs):
        handles.append(Line2D([], [], color="grey", linestyle=":", label="alarm"))
    fig.legend(handles=handles + (extra or []), loc="lower center", ncol=min(4, len(handles) + len(extra or [])),
               fontsize="small", frameon=False)


def _grid(panels: int, columns: int = 2):
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.2 * rows + 0.8), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:panels])


def _titled(fig, title: str):
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    return fig


def _run_panels(runs: list[Run], panels: list, draw, title: str, extra: list | None = None):
    """A figure of ``panels`` (three a row), each over the runs' schedule marks with every run drawn on it by
    ``draw(ax, run, panel, color)``; the runs' legend, and ``extra`` handles, below."""
    colors = _colors(runs)
    fig, axes = _grid(len(panels), columns=3)
    for ax, panel in zip(axes, panels):
        _mark_schedule(ax, runs, colors)
        for run in runs:
            draw(ax, run, panel, colors[run.label])
    _legend(fig, runs, colors, extra)
    return _titled(fig, title)


def _reward_is_success(runs: list[Run]) -> bool:
    """Whether every run's sampled reward equals its sampled success (the binary reward): one panel for both."""
    return all(run.series("reward") == run.series("success") for run in runs)


def _plot_eval(ax, run: Run, key: str, style: str, color: str) -> None:
    """Eval points with their standard error as bars, joined by a thin line."""
    steps, values = run.series(key)
    if steps:
        ax.errorbar(steps, values, yerr=run.eval_errors(key), fmt=style, color=color, marker="o", markersize=3,
                    linewidth=1, elinewidth=1, capsize=3)


def reward_figure(runs: list[Run]):
    """Sampled reward and success on the train split (one panel when they are equal); eval success of each
    suite with its standard error."""
    sampled = ((("sampled success = reward (train)", "success"),) if _reward_is_success(runs) else
               (("sampled reward (train)", "reward"), ("sampled success (train)", "success")))
    panels = [(title, {"": key}) for title, key in sampled if any(key in run.logged() for run in runs)]
    if any(key in run.logged() for run in runs for key in SUITE_KEYS.values()):
        errors = any(run.eval_errors(key) for run in runs for key in SUITE_KEYS.values() if key in run.logged())
        panels.append(("eval success (greedy" + (", ± standard error)" if errors else ")"), SUITE_KEYS))
    if not panels:
        return None

    def draw(ax, run: Run, panel, color: str) -> None:
        title, keys = panel
        for suite, key in keys.items():
            if suite:
                _plot_eval(ax, run, key, SUITE_STYLES[suite], color)
            else:
                ax.plot(*run.gapped(key), color=color, marker="o", markersize=3)
        ax.set(title=title, xlabel="step")

    suites = [Line2D([], [], color="black", linestyle=SUITE_STYLES[s], marker="o", markersize=3, label=f"eval {s}")
              for s, key in SUITE_KEYS.items() if any(key in run.logged() for run in runs)]
    return _run_panels(runs, panels, draw, "Reward and success", suites)


def control_figure(runs: list[Run]):
    """p(token) at each structural decision point: mean (solid) and max (dashed) over the step's positions."""
    found = {(m[1], m[2]) for run in runs for key in run.logged() if (m := CONTROL_KEY.match(key))}
    known = [(p, t) for p, tokens in CONTROL_ORDER.items() for t in tokens]
    pairs = [pair for pair in known if pair in found] + sorted(found - set(known))
    if not pairs:
        return None

    def draw(ax, run: Run, pair, color: str) -> None:
        point, token = pair
        for statistic, style in (("mean", "-"), ("max", "--")):
            steps, values = run.gapped(f"control/{point}/{token}/{statistic}")
            if steps:
                ax.plot(steps, [max(v, 1e-6) for v in values], style, color=color, marker="o", markersize=2)
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set(title=f"{point}: p({token})", xlabel="step")

    statistics = [Line2D([], [], color="black", linestyle="-", label="mean"),
                  Line2D([], [], color="black", linestyle="--", label="max")]
    return _run_panels(runs, pairs, draw, "Control-token probabilities (the collapse picture)", statistics)


def collapse_figure(runs: list[Run]):
    """Sampled success and the collapse probe, every run on each panel: the sweep's overlay."""
    panels = [(title, key) for title, key in COLLAPSE_PANELS if any(key in run.logged() for run in runs)]
    if len(panels) < 2:
        return None

    def draw(ax, run: Run, panel, color: str) -> None:
        title, key = panel
        ax.plot(*run.gapped(key), color=color, marker="o", markersize=2)
        ax.set(title=title, xlabel="step", ylim=(-0.03, 1.03))

    return _run_panels(runs, panels, draw, "Success and the collapse probe")


def structure_figure(runs: list[Run]):
    """Stacked shares of the structural states of the step's assistant messages, one panel per run."""
    with_states = [run for run in runs if any(key.startswith("structure/") for key in run.logged())]
    if not with_states:
        return None
    found = {key.removeprefix("structure/") for run in with_states for key in run.logged() if key.startswith("structure/")}
    states = [s for s in STATE_COLORS if s in found] + sorted(found - set(STATE_COLORS))
    fig, axes = _grid(len(with_states), columns=2)
    for ax, run in zip(axes, with_states):
        sampled = [r["step"] for r in run.records if any(f"structure/{s}" in r for s in states)]
        span = [r for r in run.records if sampled[0] <= r["step"] <= sampled[-1]]
        # NaN at the steps that sampled nothing (SFT steps): the stack leaves them empty instead of bridging them
        shares = [[r.get(f"structure/{s}", 0.0) if r["step"] in sampled else math.nan for r in span] for s in states]
        ax.stackplot([r["step"] for r in span], shares, colors=[STATE_COLORS.get(s, "grey") for s in states],
                     alpha=0.85)
        _mark_schedule(ax, [run], {run.label: "black"})
        ax.set(title=run.label, xlabel="step", ylim=(0, 1))
    handles = [Patch(color=STATE_COLORS.get(s, "grey"), label=s) for s in states]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small", frameon=False)
    return _titled(fig, "Structural states of assistant messages (sampled)")


def optimization_figure(runs: list[Run]):
    panels = [(key, title) for key, title in OPTIMIZATION_KEYS if any(key in run.logged() for run in runs)]
    if not panels:
        return None

    def draw(ax, run: Run, panel, color: str) -> None:
        key, title = panel
        ax.plot(*run.gapped(key), color=color, marker="o", markersize=2)
        ax.set(title=title, xlabel="step")

    return _run_panels(runs, panels, draw, "Optimisation: entropy, KL, gradient norm")


FIGURES = {"reward.png": reward_figure, "collapse.png": collapse_figure, "control_tokens.png": control_figure, "structure.png": structure_figure,
           "optimization.png": optimization_figure}


def run_summary(run: Run) -> dict[str, object]:
    """One table row: steps, the last eval of each suite, SFT and alarm step counts, wall time."""
    trained = [r for r in run.records if r["step"] > 0]
    row: dict[str, object] = {"run": run.label, "steps": max((r["step"] for r in trained), default=0)}
    for suite, key in SUITE_KEYS.items():
        _, values = run.series(key)
        errors = run.eval_errors(key)
        error = f" ± {errors[-1]:.1%}" if values and errors else ""
        row[f"final {suite} success"] = f"{values[-1]:.1%}{error}" if values else "n/a"
    row["SFT steps"] = len(run.steps_where("update/sft"))
    row["alarm steps"] = len(run.steps_where("alarm"))
    row["wall s"] = f"{trained[-1]['wall_s']:.0f}" if trained and "wall_s" in trained[-1] else "n/a"
    return row


def _html(runs: list[Run], figures: list[Path]) -> str:
    rows = [run_summary(run) for run in runs]
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    sections = []
    for figure in figures:
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        sections.append(f'<figure><img src="data:image/png;base64,{data}" alt="{figure.name}">'
                        f'<figcaption><a href="{figure.name}">{figure.name}</a></figcaption></figure>')
    sources = "".join(f"<li>{html.escape(run.label)}: <code>{html.escape(str(run.path))}</code></li>" for run in runs)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>toolrl report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:.3em .6em;text-align:right}img{max-width:100%}figure{margin:2em 0}</style></head><body>"
            f"<h1>toolrl report</h1><ul>{sources}</ul><table><tr>{head}</tr>{body}</table>{''.join(sections)}"
            "</body></html>\n")


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Figures and ``report.html`` for ``run_dirs`` in ``out`` (default: the single run's ``report/``)."""
    if out is None:
        if len(run_dirs) != 1:
            raise ValueError("report: several runs need --out DIR for the combined report")
        out = run_dirs[0] / "report"
    runs = [load_run(path, label) for path, label in zip(run_dirs, run_labels(run_dirs))]
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, make in FIGURES.items():
        path = out / name
        path.unlink(missing_ok=True)  # a figure this report has no data for must not survive from an older one
        if (fig := make(runs)) is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
            figures.append(path)
    page = out / "report.html"
    page.write_text(_html(runs, figures), encoding="utf-8")
    return page
