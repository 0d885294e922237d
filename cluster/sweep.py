"""``launch.py sweep``: every (configuration, seed) of a sweep preset as a training run, then the comparison.

A preset (``configs/sweeps/<name>.yaml``) lists configurations (a config preset + ``--set`` overrides), a
step budget per run and overrides common to all runs (eval sizes, batch sizes). Runs go one after the other
in one Ray session, seed by seed, each in ``SWEEP_DIR/<configuration>/seed<k>`` with ``trainer.seed = k``;
consecutive runs that can share RolloutWorker and Learner actors do (``Actors``), each starting afresh
from the model files. A finished
run (its metrics.jsonl has the last step with its final eval) is not redone; an unfinished one resumes from
its checkpoint (one that died before its first checkpoint starts over). The starting policy is evaluated
once (``SWEEP_DIR/start.json``): the row every configuration is compared with; the comparison is
cluster/comparison.py's.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cluster.comparison import WALL_FILE, run_records, write_comparison
from cluster.config import ConfigError, ToolRLConfig, load_config
from rollout.config import ENGINE_FIELDS

ROOT = Path(__file__).resolve().parents[1]
class Configuration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Row label and run directory name.")
    config: str = Field(description="Config preset, relative to the repository root (e.g. configs/rl.yaml).")
    set: list[str] = Field([], description="KEY=VALUE overrides on top of the preset and the sweep's own.")
    steps: int | None = Field(None, ge=1, description="Training steps of this configuration's runs (default: the "
                              "preset's steps), e.g. one more for an interleaved schedule whose SFT steps sample "
                              "nothing, so that every row has sampled as many episodes.")
    seeds: int | None = Field(None, ge=1, description="Seeds of this configuration's runs, 0..N-1 (default: the "
                              "sweep's), e.g. more for the rows whose runs scatter; not used by --quick.")


class QuickVariant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    configurations: list[str] = Field(min_length=1, description="Names of the configurations to run.")
    seeds: int = Field(1, ge=1, description="Seeds per configuration.")
    steps: int = Field(2, ge=1, description="Training steps per run.")
    set: list[str] = Field([], description="Overrides added after the preset's common ones (small batches and evals).")
    test_policy: bool = Field(True, description="Train a random tiny policy built into the sweep directory (as the "
                              "tests do) instead of trainer.model.")


class SweepPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, description="Training steps per run (trainer.total_steps).")
    seeds: int = Field(3, ge=1, description="Seeds per configuration (launch.py sweep --seeds overrides).")
    set: list[str] = Field([], description="KEY=VALUE overrides for every run, applied before each configuration's.")
    configurations: list[Configuration] = Field(min_length=1, description="The rows of the comparison.")
    parallel: int = Field(1, ge=1, description="Runs trained at once, each on its own actors (launch.py sweep "
                          "--parallel overrides): one run leaves part of a small machine idle while its phases "
                          "wait on each other.")
    quick: QuickVariant | None = Field(None, description="The --quick variant (for tests).")

    @model_validator(mode="after")
    def _names(self) -> SweepPreset:
        names = [c.name for c in self.configurations]
        if len(set(names)) != len(names):
            raise ValueError("configuration names must be distinct")
        if self.quick and (unknown := set(self.quick.configurations) - set(names)):
            raise ValueError(f"quick.configurations: unknown {sorted(unknown)}")
        return self


def load_preset(name: str) -> SweepPreset:
    """``name`` is a preset in configs/sweeps/ (``paper-tiny``) or a path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "configs" / "sweeps" / f"{name}.yaml"
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        return SweepPreset.model_validate(tree or {})
    except OSError as exc:
        raise ConfigError(f"sweep preset {name}: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"sweep preset {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "(root)"
        raise ConfigError(f"sweep preset {path}: {where}: {error['msg']}") from None


@dataclass
class PlannedRun:
    configuration: str
    seed: int
    config: ToolRLConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run_path()


def plan(preset: SweepPreset, sweep_dir: Path, seeds: int | None = None, quick: bool = False) -> list[PlannedRun]:
    """The runs of the sweep in order, each with its validated config: seed-major, so that one seed's runs
    come one after the other on the same actors (``Actors``) and every configuration has a seed early."""
    steps, chosen, extra = preset.steps, preset.configurations, []
    if quick:
        if preset.quick is None:
            raise ValueError("this sweep preset has no quick variant")
        steps, extra = preset.quick.steps, preset.quick.set
        chosen = [c for c in preset.configurations if c.name in preset.quick.configurations]
        seeds = seeds or preset.quick.seeds
        if preset.quick.test_policy:
            extra = [*extra, f"trainer.model={sweep_dir.resolve() / 'test-policy'}"]
    seeds = seeds or preset.seeds
    def count(configuration: Configuration) -> int:
        return seeds if quick else configuration.seeds or seeds

    runs = []
    for seed in range(max(map(count, chosen))):
        for configuration in (c for c in chosen if seed < count(c)):
            total = steps if quick else configuration.steps or steps
            run_dir = sweep_dir.resolve() / configuration.name / f"seed{seed}"
            config = load_config(ROOT / configuration.config, [
                f"trainer.eval_every={total}", *preset.set, *extra, *configuration.set,
                f"trainer.total_steps={total}", f"trainer.seed={seed}", f"trainer.run_dir={run_dir}",
                f"name={configuration.name}-seed{seed}",
            ])
            if not config.trainer.eval_every:
                raise ValueError(f"{configuration.name}: a sweep run needs its final eval (trainer.eval_every > 0)")
            runs.append(PlannedRun(configuration.name, seed, config))
    return runs


def is_finished(run: PlannedRun) -> bool:
    total = run.config.trainer.total_steps
    return any(r["step"] == total and any(k.startswith("eval/") for k in r) for r in run_records(run.run_dir))


def prepare(run: PlannedRun) -> ToolRLConfig:
    """The config to train this unfinished run with: resume from its checkpoint, or start (over)."""
    from cluster.checkpoints import latest_checkpoint

    run_dir = run.run_dir
    if (run_dir / "config.yaml").exists():
        before = load_config(run_dir / "config.yaml").model_dump(exclude={"trainer": {"resume"}})
        if before != run.config.model_dump(exclude={"trainer": {"resume"}}):
            raise ValueError(f"{run_dir} holds a run with another config (the preset changed?); use another --out")
    latest = latest_checkpoint(run_dir / "checkpoints")
    # a checkpoint of the last step without its metrics (killed between the two) has no step left to redo
    if latest is not None and int(latest.name.removeprefix("step_")) < run.config.trainer.total_steps:
        return run.config.model_copy(update={"trainer": run.config.trainer.model_copy(update={"resume": True})})
    if run_dir.exists():
        shutil.rmtree(run_dir)  # died before its first checkpoint: nothing to resume from
    return run.config


def _add_wall(run_dir: Path, seconds: float) -> None:
    path = run_dir / WALL_FILE
    attempts = json.loads(path.read_text())["attempts"] if path.exists() else []
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"attempts": [*attempts, round(seconds, 2)]}) + "\n")


def actor_key(config: ToolRLConfig) -> str:
    """Runs with equal keys can train on the same RolloutWorker and Learner actors, one after the other:
    what the engines were built with (model, seed, ``ENGINE_FIELDS``) and what a Learner keeps across
    ``Learner.start`` (process group, resources, threads)."""
    learner = config.learner
    return json.dumps([config.trainer.model, config.trainer.seed, config.rollout.model_dump(include=ENGINE_FIELDS),
                       learner.world_size, learner.cpus_per_rank, learner.gpus_per_rank, learner.resources, learner.threads,
                       config.cluster.placement], sort_keys=True)


class Actors:
    """The engines and learners of the sweep's last run, kept for the next run with the same ``actor_key``:
    building them (vLLM engine start, process group, sharding) is a large share of a short run (measured in
    docs/cli.md, sweep)."""

    def __init__(self):
        self.key, self.pool, self.learners, self.placement = None, None, None, None

    def for_run(self, config: ToolRLConfig):
        from cluster.placement import start_actors
        from learner.models import resolve_model

        if actor_key(config) != self.key:
            self.close()
            self.pool, self.learners, self.placement = start_actors(config, resolve_model(config.trainer.model))
            self.key = actor_key(config)
        return self.pool, self.learners

    def close(self) -> None:
        for actors in (self.pool, self.learners):
            if actors is not None:
                actors.close()
        if self.placement is not None:
            self.placement.remove()
        self.key, self.pool, self.learners, self.placement = None, None, None, None


def train_run(config: ToolRLConfig, actors: Actors, on_step: Callable[[dict], None]) -> None:
    """One training run on the current Ray session: a Scheduler actor on ``actors``' engines and learners.

    A run that fails takes its actors with it (a Learner may have died inside a collective)."""
    import ray

    from cluster.elastic import start_scheduler

    started = time.perf_counter()
    scheduler = start_scheduler(config, *actors.for_run(config))
    try:
        step = ray.get(scheduler.train_step.remote())
        on_step(step)
        while step["step"] < config.trainer.total_steps:
            step = ray.get(scheduler.train_step.remote())
            on_step(step)
        # the run may have ended on other actors than it started on (new learner ranks after a learner death,
        # rollout workers added or removed by launch.py scale): the next run takes those
        actors.pool, actors.learners = ray.get(scheduler.__ray_call__.remote(lambda run: (run.pool, run.learners)))
        ray.get(scheduler.close.remote())
    except BaseException:
        actors.close()
        raise
    finally:
        ray.kill(scheduler)
        _add_wall(config.run_path(), time.perf_counter() - started)


def evaluate_start(config: ToolRLConfig, actors: Actors, path: Path) -> dict[str, float]:
    """Greedy eval of the starting policy on every suite of ``config`` (saved to ``path``, reused if there)."""
    if path.exists():
        return json.loads(path.read_text())
    from cluster.scheduler import eval_suites
    from rollout.evaluate import evaluate_suites

    pool, _ = actors.for_run(config)  # the engines hold the model files' weights until a run changes them
    metrics = evaluate_suites(pool, eval_suites(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def build_test_policy(path: Path) -> None:
    from learner.bootstrap import build_default_model

    if not (path / "config.json").exists():
        build_default_model(path, size="tiny", seed=0, n_tasks=60)


def _lanes(runs: list[PlannedRun], pending: set[Path], lanes: int, first: Actors,
           on_run: Callable[[int, int, PlannedRun, str], None], on_step: Callable[[PlannedRun, dict], None]) -> None:
    """Train the pending runs in order, ``lanes`` at a time, each lane on its own actors (``first`` is lane
    0's). A failing run lets the other lanes finish theirs, then raises; Ctrl-C stops every lane at once
    (each unfinished run resumes from its checkpoint next time)."""
    queue = deque((index, run) for index, run in enumerate(runs) if run.run_dir in pending)
    lock, stop = threading.Lock(), threading.Event()
    actors = [first, *(Actors() for _ in range(lanes - 1))]

    def lane(mine: Actors) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                index, run = queue.popleft()
            config = prepare(run)
            on_run(index, len(runs), run, "resume" if config.trainer.resume else "new")
            try:
                train_run(config, mine, lambda metrics, run=run: on_step(run, metrics))
            except BaseException:
                stop.set()
                raise

    executor = ThreadPoolExecutor(lanes, thread_name_prefix="sweep-lane")
    futures = [executor.submit(lane, mine) for mine in actors]
    try:
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        stop.set()
        for mine in actors:  # a lane inside a run fails fast once its actors are gone
            mine.close()
        raise
    finally:
        stop.set()
        executor.shutdown(wait=True)
        for mine in actors:
            mine.close()


def run_sweep(preset_name: str, sweep_dir: Path, seeds: int | None, quick: bool,
              on_run: Callable[[int, int, PlannedRun, str], None],
              on_step: Callable[[PlannedRun, dict], None], parallel: int | None = None) -> list[dict]:
    """Train what is not finished, then write comparison.{json,md} into ``sweep_dir``; returns the rows.

    ``on_run(index, total, run, state)`` hears each run's state (finished / resume / new) before it is
    handled; with ``parallel`` (default: the preset's) runs at once, the callbacks come from several threads.
    """
    preset = load_preset(preset_name)
    runs = plan(preset, sweep_dir, seeds, quick)
    lanes = parallel or preset.parallel
    start_path = sweep_dir / "start.json"
    pending = {run.run_dir for run in runs if not is_finished(run)}
    if pending or not start_path.exists():  # Ray (and the test policy) only when something is left to do
        from cluster.local import init_ray

        if quick and preset.quick.test_policy:
            build_test_policy(sweep_dir.resolve() / "test-policy")
        # every lane's actors must fit at once (an embedded Ray counts logical CPUs)
        need = max(c.rollout.workers * c.rollout.worker_cpus + c.learner.world_size * c.learner.cpus_per_rank
                   for c in (run.config for run in runs))
        init_ray(min_cpus=lanes * need)
    first = Actors()
    try:
        evaluate_start(runs[0].config, first, start_path)
    except BaseException:
        first.close()
        raise
    for index, run in enumerate(runs):
        if run.run_dir not in pending:
            on_run(index, len(runs), run, "finished")
    _lanes(runs, pending, lanes, first, on_run, on_step)
    title = f"sweep {preset_name}{' (quick)' if quick else ''}: {len(runs)} runs, {lanes} at a time"
    return write_comparison(sweep_dir, title, runs, json.loads(start_path.read_text()))
