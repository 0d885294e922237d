"""The Scheduler: owns the RolloutWorker pool and the Learner group, and runs the training loop.

One ``train_step`` is the five phases of the design — sample → supervise → update → sync → observe —
then the periodic eval and checkpoint, each timed. With ``trainer.pipeline: one_step_off`` the next step's
batch is sampled during the update (cluster/pipeline.py). The class runs as a Ray actor under ``launch.py
train`` (the driver only renders progress) or in-process in tests; it is the same code either way.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from cluster.checkpoints import (
    RunDirectoryError,
    checkpoint_before,
    checkpoint_to_resume,
    latest_checkpoint,
    save_checkpoint,
)
from cluster.config import ToolRLConfig, dump_config
from cluster.metrics import step_metrics, time_metrics
from cluster.pipeline import OneStepOff
from cluster.placement import start_actors
from cluster.sampling import Draws, TaskSampler, draw_informative
from cluster.trackers import Trackers
from learner.batch import SequenceBatch, rl_batch
from learner.group import LearnerGroup, LearnerLost
from learner.models import resolve_model
from rollout.chat import load_tokenizer
from rollout.envs import load_tasks
from rollout.evaluate import Suite, build_suite, evaluate_suites
from rollout.pool import RolloutPool, WeightsLost
from rollout.worker import Trajectory, group_requests
from supervision.alarm import AdaptiveState, Alarm, alarm_metrics
from supervision.config import StepKind, step_kind
from supervision.supervisor import Supervisor

PROBE_SEQUENCES = 4  # sampled sequences the control-token probe of a step without an update looks at


def eval_suites(config: ToolRLConfig) -> list[Suite]:
    """trainer.eval_suites with their tasks: eval_tasks of the id suite, ood_eval_tasks of the others."""
    trainer = config.trainer
    return [build_suite(name, config.env, config.rollout.format,
                        limit=trainer.eval_tasks if name == "id" else trainer.ood_eval_tasks)
            for name in trainer.eval_suites]


def render_trajectory(trajectory: Trajectory) -> str:
    result = trajectory.result
    head = (f"### {trajectory.task_id} (sample {trajectory.sample_index}) reward={trajectory.reward:.2f} "
            f"success={result.success} turns {result.turns_passed}/{result.turns}"
            + (f" failure: {result.failure}" if result.failure else ""))
    body = [f"[{m['role']}]\n{m['content']}" for m in trajectory.messages[1:]]  # the system prompt is the same every time
    return "\n\n".join([head, *body]) + "\n"


class Scheduler:
    def __init__(self, config: ToolRLConfig, pool: RolloutPool | None = None, learners: LearnerGroup | None = None):
        """``pool`` and ``learners``: actors of an earlier run to train on (``launch.py sweep``), started afresh
        from the model files; without them the Scheduler makes its own."""
        self.config = config
        trainer = config.trainer
        self.run_dir = config.run_path()
        checkpoint = checkpoint_to_resume(config)
        self.model_path = resolve_model(trainer.model)
        self.tasks = load_tasks(config.env.name, config.env.train_split, seed=config.env.seed)
        self.eval_suites = eval_suites(config)
        self.placement = None
        if pool is None:
            self.pool, self.learners, self.placement = start_actors(config, self.model_path)
        else:
            self.pool, self.learners = pool, learners
            pool.start(config.rollout, config.env.reward)
            learners.start(config.learner, trainer.seed)
        self.failures = 0  # learner deaths survived
        self.started = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start_state(checkpoint)
        self.trackers = Trackers(config, self.run_dir, self.step)
        if checkpoint is not None or pool is not None:  # the engines hold the model files' weights or another run's
            self.learners.push_weights(self.pool)
        (self.run_dir / "config.yaml").write_text(dump_config(config))

    def _start_state(self, checkpoint: Path | None) -> None:
        """The loop's state (and the learners' weights) at the start of a run, or at ``checkpoint``."""
        config = self.config
        self.sampler = TaskSampler(self.tasks, config.trainer.seed)
        self.supervisor = Supervisor(config, load_tokenizer(self.model_path), self.tasks, self.run_dir)
        self.alarm = Alarm(config.supervision.alarm)
        self.adaptive = AdaptiveState()  # mode adaptive: SFT steps owed after an alarm, RL lr factor
        # trainer.pipeline one_step_off: the batch sampled ahead and the weights' version (None: synchronous)
        self.pipeline = (OneStepOff(self._sample, config.learner.behaviour_importance_cap)
                         if config.trainer.pipeline == "one_step_off" else None)
        self.step = 0
        if checkpoint is not None:
            state = self.learners.load(str(checkpoint))
            self.step = state["step"]
            self.sampler.restore(state["sampler"])
            self.supervisor.restore(state["supervision"])
            if "pipeline" in state:
                if self.pipeline is None:  # its sampler is past a batch sampled ahead, which sync would skip
                    raise RunDirectoryError(f"{checkpoint} was written by a run with trainer.pipeline=one_step_off: "
                                            "resume it with the same setting")
                self.pipeline.restore(state["pipeline"], checkpoint)
            if "alarm" in state:  # checkpoints written before the alarm existed start it afresh
                self.alarm.restore(state["alarm"])
                self.adaptive.restore(state["adaptive"])
        self._truncate_metrics()

    # ---- the loop ---------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """The next step's metrics; after a learner death, those of the first step replayed."""
        while True:
            try:
                return self._train_step()
            except (LearnerLost, WeightsLost) as lost:  # WeightsLost: rank 0 died holding the engines' weights
                self._replace_learners(lost)

    def _replace_learners(self, lost: Exception) -> None:
        """New learner ranks at the latest checkpoint (or the start): the steps since run again, exactly."""
        trainer = self.config.trainer
        self.failures += 1
        latest = latest_checkpoint(self.run_dir / "checkpoints")
        if self.failures > trainer.max_failures:
            raise RuntimeError(f"{lost} ({self.failures} learner deaths, trainer.max_failures is {trainer.max_failures}); "
                               f"the run stops at {latest or 'its start'}: resume it with --set trainer.resume=true") from lost
        self.learners.restart(self.config.learner, trainer.seed)
        self._start_state(latest)
        self.trackers.rewind(self.step)
        self.learners.push_weights(self.pool)  # the engines hold weights of steps that run again

    def _train_step(self) -> dict[str, float]:
        trainer = self.config.trainer
        self.step += 1
        kind = step_kind(self.config.supervision, self.step, self.adaptive.sft_steps_left)
        timings: dict[str, float] = {}
        # sample: G episodes for each drawn task, with further draws under dynamic sampling; an SFT step
        # samples nothing
        with _timed(timings, "sample"):
            if self.pipeline is not None:  # RL steps only (the config allows no other kind)
                drawn = self.pipeline.draws(self.step)
            else:
                drawn = self._sample(self.step) if kind != StepKind.SFT else Draws()
            trajectories = drawn.trajectories
        # supervise: strip hints, put ground truth into groups, collect failures; draw this step's SFT data
        with _timed(timings, "supervise"):
            batch, supervision_metrics = (self.supervisor.transform(trajectories, drawn.tasks, drawn.train_groups)
                                          if trajectories else (None, {}))
            sft, sft_counts = self._sft_batch(kind)
            if self.pipeline is not None:
                self.pipeline.weigh(batch)
        # update: GRPO, SFT, or one step on L_rl + λ·L_sft (old logprobs recomputed under the current weights);
        # one_step_off: the next step's batch is sampled meanwhile
        last = self.step == trainer.total_steps
        with self._update_phase(timings, last):
            learner_metrics = self._update(kind, batch, sft)
        updated = bool(learner_metrics)
        if self.pipeline is not None:
            self.pipeline.updated(updated)
        # sync: the new weights into every engine, in place (nothing to sync when no update ran)
        with _timed(timings, "sync"):
            if updated:
                self.learners.push_weights(self.pool)
        # observe: metrics, the alarm (and mode adaptive's reaction to it), samples
        with _timed(timings, "observe"):
            metrics = self._observe(kind, drawn, {**supervision_metrics, **sft_counts}, learner_metrics, updated)
            if self.pipeline is not None:
                metrics.update(self.pipeline.metrics())
        # periodic eval and checkpoint, timed apart: they take far longer than observing, on some steps only
        with _timed(timings, "eval"):
            if trainer.eval_every and (self.step % trainer.eval_every == 0 or last):
                metrics.update(self.evaluate())
        with _timed(timings, "checkpoint"):
            if last or (trainer.save_every and self.step % trainer.save_every == 0):
                self.save()
        trained_tokens = (batch.tokens() if batch and kind != StepKind.SFT else 0) + (sft.tokens() if sft else 0)
        metrics.update(time_metrics(timings, trained_tokens, None if self.pipeline is None else self.pipeline.overlap_s))
        self._log(metrics)
        return {"step": self.step, **metrics}

    @contextmanager
    def _update_phase(self, timings: dict[str, float], last: bool):
        """The update's surroundings: synchronous, the engines asleep (rollout.sleep_during_update; a no-op
        without it); one_step_off, the next step's batch sampled (none after the last step), engines and
        learner on their reserved CPUs until the update ends."""
        if self.pipeline is None:
            with _timed(timings, "update"), self.pool.asleep():
                yield
        else:
            ahead = None if last else self.step + 1
            if ahead:
                self._share_cores(True)
            with self.pipeline.sampling_ahead(ahead, timings):
                with _timed(timings, "update"):
                    yield
                if ahead:  # the engines take their threads back at their next call, mid-sampling
                    self._share_cores(False)

    def _share_cores(self, shared: bool) -> None:
        """Engines and learner ranks keep to their reserved CPUs while both run (``shared``), and take all
        their threads back when each runs alone: more OpenMP threads than free cores stall."""
        self.pool.share_cores(shared)
        self.learners.share_cores(shared)

    def _sft_batch(self, kind: StepKind) -> tuple[SequenceBatch | None, dict[str, float]]:
        """This step's SFT data, as many sequences as the mode's sft_batch_size (none for an RL step)."""
        if kind == StepKind.RL:
            return None, {}
        sup = self.config.supervision
        size = {"sft_then_rl": sup.sft_then_rl.sft_batch_size, "sync": sup.sync.sft_batch_size,
                "interleaved": sup.interleaved.sft_batch_size, "adaptive": sup.adaptive.sft_batch_size}[sup.mode]
        return self.supervisor.sft_batch(size)

    def _observe(self, kind: StepKind, drawn: Draws, supervision_metrics: dict[str, float],
                 learner_metrics: dict[str, float], updated: bool) -> dict[str, float]:
        """The step's metrics with the alarm's verdict (and mode adaptive's reaction); writes the samples."""
        sup, trajectories = self.config.supervision, drawn.trajectories
        probed = bool(trajectories) and not any(key.startswith("control/") for key in learner_metrics)
        if probed:  # no update saw these samples (every group flat, as after a collapse): still watch them
            learner_metrics |= self.learners.control_probe(self._probe_batch(trajectories))
        metrics = step_metrics(kind, drawn, supervision_metrics, learner_metrics, updated, probed)
        if sup.alarm.enabled:
            reasons = self.alarm.observe(metrics)
            metrics.update(alarm_metrics(reasons))
            if sup.mode == "adaptive":
                metrics.update(self._adapt(kind, bool(reasons)))
        self._write_samples(trajectories)
        return metrics

    def _sample(self, step: int) -> Draws:
        """Step ``step``'s groups (hints go into some prompts). Seeds and group ids derive from the step and
        the draw, so a resumed run repeats every draw; draw 0 is the step's only draw without dynamic sampling."""
        trainer, group_size = self.config.trainer, self.config.rollout.group_size

        def roll(draw: int) -> tuple[list, list[Trajectory]]:
            tasks = self.sampler.draw(trainer.tasks_per_step)
            # a draw's episodes continue the step's seed numbering after the previous draw's
            seed = trainer.seed * 1_000_000_007 + step * 100_003 + draw * trainer.tasks_per_step * group_size
            tag = f"s{step}:" if draw == 0 else f"s{step}d{draw}:"
            groups = group_requests(tasks, group_size, seed, tag=tag)
            return tasks, self.pool.run_groups(self.supervisor.decorate(groups))

        dynamic = trainer.dynamic_sampling
        if not dynamic.enabled:
            tasks, trajectories = roll(0)
            return Draws(trajectories, tasks)
        return draw_informative(roll, self.supervisor.informative_groups, trainer.tasks_per_step, dynamic.max_draws)

    def _update(self, kind: StepKind, batch, sft) -> dict[str, float]:
        """The learner call this step's kind asks for; {} when there is nothing to train on."""
        group_size, sup = self.config.rollout.group_size, self.config.supervision
        scale = self.config.learner.lr_scale(self.step, self.config.trainer.total_steps)
        rl_scale = scale * self.adaptive.lr_factor
        if kind == StepKind.RL:
            return self.learners.rl_update(batch, group_size, rl_scale) if len(batch) else {}
        if not len(sft):  # e.g. an SFT phase before any failure was collected
            return self.learners.rl_update(batch, group_size, rl_scale) if kind == StepKind.COMBINED and len(batch) else {}
        if kind == StepKind.COMBINED:
            return self.learners.combined_update(batch, sft, sup.sync.sft_weight, group_size, scale)
        lr = sup.interleaved.sft_lr if sup.mode == "interleaved" else None
        epochs = sup.interleaved.sft_epochs if sup.mode == "interleaved" else 1
        metrics = [self.learners.sft_update(sft, lr, scale) for _ in range(epochs)]
        return metrics[-1]

    def _probe_batch(self, trajectories: list[Trajectory]) -> SequenceBatch:
        """PROBE_SEQUENCES of the step's samples, every group's first one first. The probe's cost is its
        number of sequences (the full output layer is kept: restricting it to the scored positions did not
        pay; measurements in docs/diagnostics.md)."""
        batch = rl_batch(trajectories, self.config.learner.scale_advantages_by_std,
                         temperature=self.config.rollout.temperature)
        order = sorted(range(len(trajectories)), key=lambda i: trajectories[i].sample_index)
        return batch.select(order[:PROBE_SEQUENCES])

    def _adapt(self, kind: StepKind, fired: bool) -> dict[str, float]:
        """Mode adaptive after a step: owe SFT steps and scale the RL lr on an alarm, optionally roll back."""
        adaptive = self.config.supervision.adaptive
        metrics = {}
        # This step's metrics came from the weights after step - 1 (the checkpoint of step - 1): go back to
        # an older one. The step counter, task order and the signals' buffers go on, so the SFT phase sees
        # the failures that led here.
        if fired and adaptive.rollback and (checkpoint := checkpoint_before(self.run_dir / "checkpoints", self.step - 1)):
            metrics["adaptive/rollback_step"] = float(self.learners.load(str(checkpoint))["step"])
            self.learners.push_weights(self.pool)
        self.adaptive.advance(kind, fired, adaptive)
        return {**metrics, "adaptive/sft_steps_left": float(self.adaptive.sft_steps_left),
                "adaptive/lr_factor": self.adaptive.lr_factor}

    def scale_rollout(self, workers: int) -> str:
        """Resize the RolloutWorker pool between two steps (``launch.py scale``); what changed, in words."""
        if self.placement is not None and self.placement.group is not None:
            raise ValueError("a run in a GPU placement group keeps its rollout workers (the group's bundles are fixed)")
        before = len(self.pool.workers)
        self.pool.resize(workers)
        return f"rollout workers {before} → {workers} from step {self.step + 1}"

    def evaluate(self) -> dict[str, float]:
        """Greedy eval of every suite in trainer.eval_suites: eval/<key> (id), eval/<suite>/<key> (the others)."""
        return evaluate_suites(self.pool, self.eval_suites)

    def initial_eval(self) -> dict[str, float]:
        """Eval of the starting weights, logged as step 0 (skipped when resuming or when eval is off)."""
        if self.step or not self.config.trainer.eval_every:
            return {}
        metrics = self.evaluate()
        self._log(metrics)
        return metrics

    # ---- outputs ----------------------------------------------------------------------------------------
    def _log(self, metrics: dict[str, float]) -> None:
        record = {"step": self.step, "wall_s": round(time.time() - self.started, 3), **metrics}
        with (self.run_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.trackers.log(metrics, self.step)

    def _truncate_metrics(self) -> None:
        """Drop lines logged after the step we start from (a checkpoint's): those steps are about to run again."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= self.step))

    def _write_samples(self, trajectories: list[Trajectory]) -> None:
        count = self.config.trainer.samples_per_step
        if not count or not trajectories:
            return
        # one sample from each of the first groups: different tasks are more telling than siblings
        picked = [t for t in trajectories if t.sample_index == 0][:count]
        directory = self.run_dir / "samples"
        directory.mkdir(exist_ok=True)
        (directory / f"step_{self.step:06d}.txt").write_text("\n".join(render_trajectory(t) for t in picked))

    def save(self) -> Path:
        state = {"step": self.step, "sampler": self.sampler.state(), "supervision": self.supervisor.state(),
                 "alarm": self.alarm.state(), "adaptive": self.adaptive.state()}
        if self.pipeline is not None:
            state["pipeline"] = self.pipeline.state()
        return save_checkpoint(self.learners, self.run_dir / "checkpoints", self.step, state,
                               self.config.trainer.keep_checkpoints, self.pipeline.files() if self.pipeline else {})

    def close(self) -> None:
        self.trackers.close()
        if self.placement is not None:  # actors of its own: the group goes with them
            self.pool.close()
            self.learners.close()
            self.placement.remove()


@contextmanager
def _timed(timings: dict[str, float], phase: str):
    started = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - started
