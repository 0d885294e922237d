"""toolrl command line: thin wrappers that parse arguments, build the config and call the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.arguments import OneLineErrors, positive_float, positive_int
from cluster.checkpoints import checkpoint_to_resume
from cluster.config import ConfigError, check_model_dir, load_config
from cluster.console import eval_line, final_lines, progress_label, reward_is_success, step_line
from learner.config import BOOTSTRAP_STEPS

# piped output (logs, CI) gets a wide console: rich's 80-column default folds the eval table's headers
console = Console(width=None if sys.stdout.isatty() else 160)


def _progress(transient: bool = True) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=transient)


def _table(title: str, columns: tuple[str, ...], rows: Sequence[Sequence[str]] = (), caption: str | None = None) -> Table:
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _config(args: argparse.Namespace, *overrides: str):
    """The run config: the preset, then --set, then the command's own flags (which win)."""
    flags = [f"env.seed={args.seed}"] if args.seed is not None else []
    return load_config(args.config, [*args.set, *overrides, *flags])


def cmd_tasks(args: argparse.Namespace) -> int:
    from rollout.envs import load_tasks
    from rollout.formats import render_call

    config = _config(args)
    env = args.env or config.env.name
    for task in load_tasks(env, args.split, seed=config.env.seed, limit=args.n):
        if args.json:
            print(json.dumps(task.to_dict(), ensure_ascii=False))
            continue
        console.rule(f"[bold]{task.id}[/bold]  ({task.category}; {', '.join(task.classes)})")
        for turn, (messages, calls) in enumerate(zip(task.turns, task.ground_truth)):
            for message in messages:
                console.print(f"[cyan]user[/cyan] [{turn}] {message}", markup=True, highlight=False)
            for call in calls or []:
                console.print(f"    [green]→ {render_call(call)}[/green]", highlight=False)
            if not calls:
                console.print("    [yellow](no call expected: something is missing)[/yellow]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rollout.envs import load_tasks, replay_ground_truth

    config = _config(args, *([f"env.reward.mode={args.mode}"] if args.mode else []))
    reward = config.env.reward
    tasks = load_tasks(args.env, args.split, seed=config.env.seed)
    total, passed, failures = Counter(), Counter(), []
    with _progress() as progress:
        bar = progress.add_task(f"replaying {args.env}/{args.split}", total=len(tasks))
        for task in tasks:
            result = replay_ground_truth(task, reward)
            total[task.category] += 1
            if result.success and result.reward == 1.0:
                passed[task.category] += 1
            else:
                failures.append((task.id, result.first_failed_turn, result.failure))
            progress.advance(bar)
    table = _table(f"ground truth through {args.env}/{args.split} ({reward.mode} scoring)",
                   ("category", "tasks", "score 1.0", "pass rate"))
    for category in sorted(total):
        table.add_row(category, str(total[category]), str(passed[category]), f"{passed[category] / total[category]:.1%}")
    n, ok = sum(total.values()), sum(passed.values())
    table.add_row("[bold]total[/bold]", str(n), str(ok), f"{ok / max(n, 1):.1%}")
    console.print(table)
    for task_id, turn, why in failures[:10]:
        console.print(f"[red]FAIL[/red] {task_id} turn {turn}: {why}", highlight=False)
    return 1 if failures else 0


def cmd_eval(args: argparse.Namespace) -> int:
    format_ood = args.suite == "format_ood"  # there --format is the tested syntax, not the trained one
    flags = [f"rollout.format={args.format}"] if args.format and not format_ood else []
    flags += [f"rollout.workers={args.workers}"] if args.workers else []
    flags += [f"env.name={args.env}"] if args.env else []
    config = _config(args, *flags)
    check_model_dir(args.model, "--model")
    if args.temperature is not None and not args.samples:
        raise ValueError("--temperature is the sampling temperature: give --samples K too")
    temperature = args.temperature or config.rollout.temperature  # --temperature is above 0 when given
    from rollout.evaluate import build_suite, evaluate, summarize

    suite = build_suite(args.suite, config.env, config.rollout.format, limit=args.limit,
                        ood_format=args.format if format_ood else None, split=args.split)
    # heavy imports (torch, vLLM, Ray) only once the input is known good
    from cluster.console import EVAL_CAPTION, eval_table
    from cluster.headroom import sample_rows, summaries, tables
    from cluster.local import init_ray
    from learner.models import resolve_model
    from rollout.pool import RolloutPool
    model = resolve_model(args.model)
    init_ray(args.address)
    with console.status(f"starting {config.rollout.workers} rollout worker(s) on {model}"):
        pool = RolloutPool(model, config.rollout, config.env.reward, seed=config.env.seed)
    with _progress() as progress:
        bar = progress.add_task(f"eval {suite.name}: {suite.env}/{suite.split} ({suite.format})", total=len(suite.tasks))
        rows = evaluate(pool, suite.tasks, chunk=8 * config.rollout.workers,
                        on_progress=lambda n: progress.advance(bar, n), fmt=suite.format)
        if args.samples:
            sampled = sample_rows(pool, suite, rows, args.samples, temperature, 8 * config.rollout.workers, progress)
    summary = summarize(rows)
    console.print(_table(f"{suite.name}: {suite.env}/{suite.split}, format {suite.format}, greedy, model {model}",
                         *eval_table(summary), caption=EVAL_CAPTION))
    if args.samples:
        headroom = summaries(suite, sampled)
        for drawn in tables(suite, headroom, args.samples, temperature):
            console.print(drawn)
    if args.json:
        report = {"model": model, "suite": suite.name, "env": suite.env, "split": suite.split,
                  "format": suite.format, "summary": summary, "tasks": rows}
        if args.samples:
            report["sampling"] = {"samples": args.samples, "temperature": temperature, "summary": headroom,
                                  "tasks": sampled}
        Path(args.json).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        console.print(f"per-task results: {args.json}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    config = _config(args)
    check_model_dir(config.trainer.model, "trainer.model")
    import ray  # heavy imports (torch, vLLM, Ray) only once the input is known good

    from cluster.elastic import start_scheduler
    from cluster.local import init_ray

    checkpoint_to_resume(config)  # a run directory problem is a one-line error before anything starts
    init_ray(args.address)
    total = config.trainer.total_steps
    with console.status(f"starting {config.rollout.workers} rollout worker(s) and {config.learner.world_size} "
                        f"learner rank(s) for run {config.run_path()}"):
        scheduler = start_scheduler(config)
        initial = ray.get(scheduler.initial_eval.remote())
    if initial:
        console.print(f"step 0 (starting weights): {eval_line(initial)}", highlight=False)
    reward_shown = not reward_is_success(config)
    with _progress(transient=False) as progress:
        bar = progress.add_task("training", total=total)
        step = 0
        while step < total:
            metrics = ray.get(scheduler.train_step.remote())
            step = metrics["step"]
            progress.update(bar, completed=step, description=progress_label(metrics))
            progress.console.print(step_line(metrics, reward_shown), highlight=False, soft_wrap=True)
    ray.get(scheduler.close.remote())
    console.print(f"run directory: {config.run_path()}")
    for line in final_lines(config, initial, metrics, time.perf_counter() - started):
        console.print(line, highlight=False)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from cluster.elastic import scale

    console.print(scale(Path(args.run_dir), args.rollout_workers, args.address), highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cluster.report import write_report

    page = write_report([Path(d) for d in args.runs], Path(args.out) if args.out else None)
    figures = sorted(p.name for p in page.parent.glob("*.png"))
    console.print(f"wrote {page} ({', '.join(figures) or 'no figures: no metrics to plot'})", highlight=False)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from cluster.comparison import COLUMNS, table_cells
    from cluster.sweep import load_preset, plan, run_sweep

    out = Path(args.out or f"runs/sweep-{Path(args.preset).stem}{'-quick' if args.quick else ''}")
    preset = load_preset(args.preset)
    if not (args.quick and preset.quick and preset.quick.test_policy):  # the quick variant's test policy is built later
        for model in dict.fromkeys(run.config.trainer.model for run in plan(preset, out, args.seeds, args.quick)):
            check_model_dir(model, f"sweep {args.preset}: trainer.model")
    with _progress(transient=False) as progress:
        bar = progress.add_task(f"sweep {args.preset}", total=None)

        def on_run(index: int, total: int, run, state: str) -> None:  # runs may start out of order (--parallel)
            progress.console.print(f"{run.configuration} seed {run.seed}: {state} ({run.run_dir})", highlight=False)
            progress.update(bar, total=total, description=f"sweep: {run.configuration} seed {run.seed}")
            if state == "finished":
                progress.advance(bar)

        def on_step(run, metrics: dict) -> None:
            line = step_line(metrics, not reward_is_success(run.config))
            progress.console.print(f"  {run.configuration} seed {run.seed} {line}", highlight=False, soft_wrap=True)
            if metrics["step"] == run.config.trainer.total_steps:
                progress.advance(bar)

        rows = run_sweep(args.preset, out, args.seeds, args.quick, on_run, on_step, args.parallel)
    console.print(_table(f"sweep {args.preset}{' (quick)' if args.quick else ''}: final greedy eval, mean ± std over "
                         "seeds", COLUMNS, [table_cells(row) for row in rows]))
    console.print(f"comparison: {out / 'comparison.md'}, {out / 'comparison.json'}", highlight=False)
    return 0


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from rollout.variants import habit_shares

    mistake_rate = habit_shares(args.mistake_rate, "--mistake-rate")  # a typo fails before torch loads
    from learner.bootstrap import CorpusMix, bootstrap

    other = args.other_syntaxes / 2
    mix = CorpusMix((("hermes", 1 - 2 * other), ("python", other), ("json", other)), args.ood_share, mistake_rate,
                    args.first_index, args.copy_max_number, args.habits_per_task)
    out = bootstrap(Path(args.out), steps=args.steps, seed=args.seed, size=args.size, lr=args.lr, warmup=args.warmup,
                    batch_size=args.batch_size, init=Path(args.init) if args.init else None, mix=mix)
    card = json.loads((out / "toolrl_model.json").read_text())
    console.print(f"wrote {out}: {card['parameters']:,} parameters, {card['train_minutes']} min, greedy success on "
                  f"synth/test {card['success_synth_test']:.1%}", highlight=False)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster import jobs

    command = args.job[1:] if args.job[:1] == ["--"] else args.job
    if not command:
        raise ValueError("submit: give the command to run after --, e.g. submit --address URL -- train")
    build_parser().parse_args(command)  # a typo fails here, not minutes later on the cluster
    job_id = jobs.submit(args.address, command, Path(__file__).resolve().parent)
    print(job_id)
    if not args.follow:
        return 0
    final = jobs.follow(args.address, job_id, lambda text: print(text, end="", flush=True))
    console.print(f"job {job_id}: {final}", highlight=False)
    return 0 if final == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from cluster import jobs

    if args.action == "status":
        print(jobs.status(args.address, args.job_id))
    elif args.action == "logs":
        print(jobs.logs(args.address, args.job_id), end="")
    else:
        print("stopped" if jobs.stop(args.address, args.job_id) else "already finished")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="launch.py", description="toolrl: RL for multi-turn tool use.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrors)

    def add_config_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", metavar="PATH", help="YAML preset (default: built-in defaults)")
        sub.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="override a config field, e.g. --set env.seed=3 (repeatable)",
        )
        sub.add_argument("--seed", type=int, help="split/generation seed (default: env.seed of the config)")

    tasks = commands.add_parser("tasks", help="print tasks with their ground truth")
    tasks.add_argument("--env", choices=["bfcl", "synth"], help="environment (default: env.name of the config)")
    tasks.add_argument("--split", default="train", help="split name, e.g. train, test, ood_content, base (default: train)")
    tasks.add_argument("--n", type=positive_int, default=5, help="how many tasks to print (default: 5)")
    tasks.add_argument("--json", action="store_true", help="one JSON object per task instead of a readable listing")
    add_config_flags(tasks)
    tasks.set_defaults(run=cmd_tasks)

    check = commands.add_parser(
        "check", help="execute every ground truth through the environment and the reward; exit 1 on any miss"
    )
    check.add_argument("--env", choices=["bfcl", "synth"], required=True, help="environment to check")
    check.add_argument("--split", default="all", help="split to check; 'all' is every task (default: all)")
    check.add_argument("--mode", choices=["bfcl", "strict"], help="scoring mode (default: env.reward.mode)")
    add_config_flags(check)
    check.set_defaults(run=cmd_check)

    evaluation = commands.add_parser("eval", help="greedy evaluation of a policy on a split (with --samples: pass@k), per-category table")
    evaluation.add_argument("--model", default="default",
                            help="local HF model directory, or 'default' (the committed embedded policy, assets/default-policy)")
    evaluation.add_argument("--env", choices=["bfcl", "synth"], help="environment (default: env.name of the config)")
    evaluation.add_argument("--split", help="split to evaluate (default: env.eval_split of the config)")
    evaluation.add_argument("--suite", choices=["id", "format_ood", "content_ood"], default="id",
                            help="id: the eval split; format_ood: the same tasks in another tool-call syntax; "
                            "content_ood: unseen templates/APIs (synth) or held-out categories (bfcl) (default: id)")
    evaluation.add_argument("--format", choices=["hermes", "python", "json"],
                            help="tool-call syntax in the prompt and the parser (default: rollout.format); with "
                            "--suite format_ood the tested syntax (default: python, or hermes for a python-trained policy)")
    evaluation.add_argument("--workers", type=positive_int, help="RolloutWorker actors (default: rollout.workers)")
    evaluation.add_argument("--limit", type=positive_int, help="evaluate only the first K tasks of the split")
    evaluation.add_argument("--samples", type=positive_int, metavar="K",
                            help="also play K sampled episodes per task: mean sampled success and unbiased pass@k "
                            "(k <= K, k in 1,2,4,8,16,32) per category and, for synth, per template, beside greedy "
                            "(default: greedy only)")
    evaluation.add_argument("--temperature", type=positive_float, metavar="T",
                            help="sampling temperature of --samples, above 0 (default: rollout.temperature)")
    evaluation.add_argument("--json", metavar="OUT", help="write the summary and per-task results to this JSON file "
                            "(with --samples also each task's sampled successes and the pass@k summaries)")
    evaluation.add_argument("--address", help="Ray cluster address (default: start an embedded local Ray on 127.0.0.1)")
    add_config_flags(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    train = commands.add_parser("train", help="GRPO training: sample → supervise → update → sync → observe")
    train.add_argument("--address", help="Ray cluster address (default: start an embedded local Ray on 127.0.0.1)")
    add_config_flags(train)
    train.set_defaults(run=cmd_train)

    scale = commands.add_parser("scale", help="change the number of rollout workers of a running train (next step on)")
    scale.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of the running launch.py train")
    scale.add_argument("--rollout-workers", type=positive_int, required=True, help="RolloutWorker actors from now on")
    scale.add_argument("--address", help="Ray cluster address (default: the one RUN_DIR/ray_address records)")
    scale.set_defaults(run=cmd_scale)

    report = commands.add_parser("report", help="figures and one HTML page from run directories (runs overlaid)")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with a metrics.jsonl)")
    report.add_argument("--out", help="output directory (default: RUN_DIR/report for one run; required for several)")
    report.set_defaults(run=cmd_report)

    sweep = commands.add_parser("sweep", help="train every configuration x seed of a sweep preset, then compare them")
    sweep.add_argument("--preset", default="paper-tiny",
                       help="a preset in configs/sweeps/ or a YAML path (default: paper-tiny)")
    sweep.add_argument("--seeds", type=positive_int, help="seeds per configuration (default: the preset's)")
    sweep.add_argument("--quick", action="store_true", help="the preset's tiny variant (a few steps on a random policy)")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweep-<preset>[-quick])")
    sweep.add_argument("--parallel", type=positive_int,
                       help="runs trained at once, each on its own engines and learners (default: the preset's)")
    sweep.set_defaults(run=cmd_sweep)

    boot = commands.add_parser("bootstrap", help="train the embedded default policy by SFT on expert dialogs")
    boot.add_argument("--out", default="assets/base-policy",
                      help="model directory to write; must not exist yet (default: assets/base-policy)")
    boot.add_argument("--steps", type=positive_int, default=BOOTSTRAP_STEPS,
                      help=f"optimizer steps (default: {BOOTSTRAP_STEPS}, the committed base's recipe)")
    boot.add_argument("--seed", type=int, default=0, help="seed of the model init, tokenizer corpus and data (default: 0)")
    boot.add_argument("--size", choices=["tiny", "small"], default="tiny", help="model size preset (default: tiny)")
    boot.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    boot.add_argument("--batch-size", type=positive_int, default=8, help="dialogs per optimizer step (default: 8)")
    boot.add_argument("--warmup", type=int, default=100, help="linear warmup steps (default: 100)")
    boot.add_argument("--init", metavar="DIR", help="continue from this model directory (default: a new model)")
    boot.add_argument("--other-syntaxes", type=float, default=0.0, help="share of python + json dialogs (default: 0)")
    boot.add_argument("--ood-share", type=float, default=0.0, help="share of held-out-template dialogs (default: 0)")
    boot.add_argument("--mistake-rate", default="0", help="share of habit turns, or KIND=SHARE,... (default: 0)")
    boot.add_argument("--habits-per-task", action="store_true", help="one habit draw per kind per dialog, not per turn")
    boot.add_argument("--first-index", type=int, default=0, help="first synth task used; 1000 skips RL's (default: 0)")
    boot.add_argument("--copy-max-number", type=int, default=999, help="copy drill's largest number (default: 999)")
    boot.set_defaults(run=cmd_bootstrap)

    submit = commands.add_parser("submit", help="run a launch.py command on a Ray cluster through the Job API")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HOST:8265")
    submit.add_argument("--follow", action="store_true", help="stream the job's log until it ends (exit 1 unless it succeeds)")
    submit.add_argument("job", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the launch.py command line to run, after --, e.g. -- train --set trainer.total_steps=2")
    submit.set_defaults(run=cmd_submit)

    job = commands.add_parser("jobs", help="status, logs or stop of a submitted job")
    job.add_argument("action", choices=["status", "logs", "stop"], help="what to do")
    job.add_argument("job_id", metavar="JOB", help="job id printed by submit")
    job.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HOST:8265")
    job.set_defaults(run=cmd_jobs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError) as exc:  # bad input: one line, no traceback
        print(f"error: {str(exc).removeprefix('error: ')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
