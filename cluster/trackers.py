"""Where a run's step metrics go besides metrics.jsonl: ``trainer.loggers`` (TensorBoard by default, W&B and
MLflow as optional extras), each given the same metric keys at the same steps and the resolved config.

A run that replays steps (a replaced learner) calls ``rewind``: TensorBoard purges the events after that
step; W&B drops the replayed steps before the last one it logged and takes the replay's values for that
one; MLflow records the replayed points again under the same step numbers. A replay repeats every value
but the timings, so each shows the run's metrics.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cluster.config import ToolRLConfig, dump_config

MLFLOW_STORE = "mlflow.db"  # next to the run directories, shared by the runs there (MLFLOW_TRACKING_URI overrides)
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch


class TensorBoardTracker:
    def __init__(self, config: ToolRLConfig, run_dir: Path, step: int):
        self.directory = run_dir / "tensorboard"
        self.writer = None
        self.rewind(step)
        self.writer.add_text("config", f"```\n{dump_config(config)}```", step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def rewind(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is not None:
            self.writer.close()
        self.writer = SummaryWriter(str(self.directory), purge_step=step + 1)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run named after the run, in project ``trainer.project``; WANDB_MODE, WANDB_ENTITY and the key
    come from the environment as W&B reads them (WANDB_MODE=offline: files under <run_dir>/wandb only)."""

    def __init__(self, config: ToolRLConfig, run_dir: Path, step: int):
        try:
            import wandb
        except ImportError:
            raise ImportError("trainer.loggers has wandb: pip install 'toolrl[wandb]'") from None
        self.run = wandb.init(project=config.trainer.project, name=config.name, dir=str(run_dir),
                              config=config.model_dump(mode="json"), reinit="create_new")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def rewind(self, step: int) -> None:
        pass  # W&B cannot drop logged steps (module docstring)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run named after the run, in experiment ``trainer.project``, with the resolved config as
    dotted params. The store is MLFLOW_TRACKING_URI when set, else SQLite in mlflow.db beside the run
    directory (artifacts in mlartifacts/ there): ``mlflow ui --backend-store-uri sqlite:///<that file>``."""

    def __init__(self, config: ToolRLConfig, run_dir: Path, step: int):
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError:
            raise ImportError("trainer.loggers has mlflow: pip install 'toolrl[mlflow]'") from None
        root = run_dir.resolve().parent
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / MLFLOW_STORE}"
        self.client = MlflowClient(uri)
        experiment = self.client.get_experiment_by_name(config.trainer.project)
        experiment_id = (experiment.experiment_id if experiment is not None else self.client.create_experiment(
            config.trainer.project,
            artifact_location=None if "MLFLOW_TRACKING_URI" in os.environ else (root / "mlartifacts").as_uri()))
        self.run_id = self.client.create_run(experiment_id, run_name=config.name).info.run_id
        params = [Param(key, value) for key, value in flat_config(config.model_dump(mode="json")).items()]
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start:start + MLFLOW_PARAMS_PER_CALL])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step)
                                                    for key, value in metrics.items()])

    def rewind(self, step: int) -> None:
        pass  # MLflow has no purge: the replayed steps' points are recorded again

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def flat_config(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"trainer.seed": "0", ...}``: leaves as strings, lists and empty sections as JSON."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return flat


class Trackers:
    """The trackers of ``trainer.loggers``, used as one."""

    def __init__(self, config: ToolRLConfig, run_dir: Path, step: int):
        self.trackers = [TRACKERS[name](config, run_dir, step) for name in config.trainer.loggers]

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def rewind(self, step: int) -> None:
        """Steps after ``step`` are about to run again."""
        for tracker in self.trackers:
            tracker.rewind(step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
