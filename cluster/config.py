"""The config root: YAML presets in ``configs/`` plus ``--set dotted.key=value`` overrides, validated once.

Every field carries a description; an invalid file or override fails with one line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learner.config import LearnerConfig
from rollout.config import EnvConfig, RolloutConfig
from supervision.config import SupervisionConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the field and the reason."""


class DynamicSamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="DAPO's dynamic sampling: after the step's tasks_per_step tasks, draw "
                          "tasks_per_step more (and roll them out) until tasks_per_step groups have unequal rewards "
                          "(judged after supervision, so a group that off_policy gives the ground truth counts); "
                          "the update trains on the first tasks_per_step of them. Flat and surplus groups stay in "
                          "the rollout metrics and feed the failure buffer.")
    max_draws: int = Field(3, ge=1, description="Draws per step at most, the first one included (verl's "
                           "max_num_gen_batches); when they run out the step trains on the informative groups found.")


class TrainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", description="Local HF model directory to start from, or 'default' (the "
                       "committed embedded policy).")
    total_steps: int = Field(8, ge=1, description="Training steps (sample → supervise → update → sync → observe).")
    tasks_per_step: int = Field(4, ge=1, description="Tasks drawn per step; each is rolled out group_size times.")
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig,
                                                    description="Draw further tasks until the update has "
                                                    "tasks_per_step informative groups (DAPO).")
    run_dir: str | None = Field(None, description="Run directory (default: runs/<name>).")
    resume: bool = Field(False, description="Continue from the run directory's latest checkpoint.")
    eval_every: int = Field(8, ge=0, description="Greedy eval on env.eval_split every N steps, before step 1 and "
                            "after the last step (0: never).")
    eval_tasks: int = Field(200, ge=1, description="Evaluate on the first N tasks of the eval split.")
    eval_suites: list[Literal["id", "format_ood", "content_ood"]] = Field(
        ["id", "format_ood", "content_ood"], min_length=1,
        description="Suites of the periodic eval (rollout/evaluate.py): id (env.eval_split), format_ood (the same "
        "tasks in another tool-call syntax), content_ood (synth ood_content; bfcl held-out categories).",
    )
    ood_eval_tasks: int = Field(20, ge=1, description="Tasks of each OOD suite in the periodic eval (its first N).")
    save_every: int = Field(8, ge=0, description="Checkpoint every N steps and after the last step (0: only "
                            "after the last).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (oldest deleted first).")
    max_failures: int = Field(2, ge=0, description="Learner rank deaths a run survives: new ranks load the latest "
                              "checkpoint (or the model files) and the steps since are replayed, with the metrics "
                              "of an undisturbed run. One more stops the run with the command that resumes it.")
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"], description="Where step metrics go besides metrics.jsonl, each with the same keys and the "
        "resolved config (cluster/trackers.py): tensorboard (<run_dir>/tensorboard), wandb (pip install "
        "'toolrl[wandb]'; WANDB_MODE=offline logs to <run_dir>/wandb), mlflow (pip install 'toolrl[mlflow]'; "
        "MLFLOW_TRACKING_URI, else SQLite in mlflow.db beside the run directory). [] logs to metrics.jsonl only.",
    )
    project: str = Field("toolrl", description="W&B project and MLflow experiment of the run (loggers wandb, "
                         "mlflow); the run is called name.")
    samples_per_step: int = Field(2, ge=0, description="Trajectories per step written as text to samples/.")
    seed: int = Field(0, description="Seed of task order and rollout sampling.")
    pipeline: Literal["sync", "one_step_off"] = Field(
        "sync", description="sync: each step samples with the weights of the step before. one_step_off: the "
        "engines sample step t+1's batch with the weights of step t-1 while the learner trains on step t's, so "
        "every batch is one update stale (pipeline/staleness) and its tokens are importance-weighted "
        "(learner.behaviour_importance_cap). Needs supervision.mode none and engines awake during the update.",
    )

    @field_validator("eval_suites", "loggers")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        twice = [name for name in names if names.count(name) > 1]
        if twice:
            raise ValueError(f"{twice[0]} is listed twice")
        return names


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    placement: Literal["colocate", "separate"] = Field(
        "colocate", description="Where GPU actors go (cluster/placement.py; CPU-only runs ignore it). colocate: "
        "RolloutWorker i and Learner rank i share one whole GPU (needs rollout.workers == learner.world_size and "
        "worker_gpus + gpus_per_rank <= 1). separate: each actor its own bundle of worker_gpus / gpus_per_rank.",
    )


class ToolRLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("toolrl", description="Run name: the run directory is runs/<name>.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Tool environment, splits and reward.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="How episodes are sampled.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="Optimiser, RL objective, ranks.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="The training loop and its outputs.")
    supervision: SupervisionConfig = Field(default_factory=SupervisionConfig,
                                           description="Supervision signals and how SFT mixes into RL.")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="Where the actors run.")

    @model_validator(mode="after")
    def _pipeline_fits(self) -> ToolRLConfig:
        if self.trainer.pipeline == "one_step_off":
            # SFT and combined steps draw from the supervisor's failure buffer in the supervise phase, and
            # mode adaptive reloads older weights: neither is defined for a batch sampled a step ahead
            if self.supervision.mode != "none":
                raise ValueError(f"trainer.pipeline one_step_off trains RL steps only: supervision.mode must be "
                                 f"none (got {self.supervision.mode!r})")
            if self.rollout.sleep_during_update:
                raise ValueError("trainer.pipeline one_step_off samples during the update: set "
                                 "rollout.sleep_during_update=false")
        return self

    @model_validator(mode="after")
    def _placement_fits(self) -> ToolRLConfig:
        rollout, learner = self.rollout, self.learner
        uses_gpus = rollout.worker_gpus > 0 or learner.gpus_per_rank > 0
        if uses_gpus and self.cluster.placement == "colocate":
            if rollout.workers != learner.world_size:
                raise ValueError(f"cluster.placement colocate pairs each RolloutWorker with a Learner rank: "
                                 f"rollout.workers ({rollout.workers}) must equal learner.world_size ({learner.world_size})")
            if rollout.worker_gpus + learner.gpus_per_rank > 1:
                raise ValueError("cluster.placement colocate shares one GPU: rollout.worker_gpus + "
                                 f"learner.gpus_per_rank must be <= 1 (got {rollout.worker_gpus + learner.gpus_per_rank:g})")
        return self

    def run_path(self) -> Path:
        return Path(self.trainer.run_dir or Path("runs") / self.name)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for index, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: {'.'.join(parents[: index + 1])}: is not a section, cannot set {dotted}")
        node = child
    node[leaf] = value


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "(root)"
    if error["type"] == "extra_forbidden":
        return f"config error: {where}: unknown field"
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) else ""
    message = error["msg"].removeprefix("Value error, ")  # a validator's own sentence
    return f"config error: {where}: {message}{shown}"


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ToolRLConfig:
    """Load a YAML preset (or the defaults), apply ``key=value`` overrides, validate."""
    tree: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config error: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config error: {path} must be a mapping of sections, not {type(loaded).__name__}")
        tree = loaded or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"config error: override {override!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    try:
        return ToolRLConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def dump_config(config: ToolRLConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def check_model_dir(model: str, where: str) -> None:
    """A model given as a path must be a readable HF directory: one line now, not a Ray actor that dies on it
    a minute later. ``default`` is the committed policy (learner.models.default_policy reports it missing)."""
    if model == "default":
        return
    path = Path(model)
    try:
        if not path.exists():
            problem = "does not exist"
        elif not (path / "config.json").is_file():
            problem = "is not a model directory (no config.json)"
        else:
            json.loads((path / "config.json").read_text(encoding="utf-8"))
            return
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    except ValueError:
        problem = "has a config.json that is not JSON"
    raise ConfigError(f"{where}: model directory {model} {problem}")
