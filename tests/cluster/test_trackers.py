"""trainer.loggers offline: TensorBoard, W&B (WANDB_MODE=offline) and MLflow (SQLite beside the run
directory) get the metrics of a real run's steps, with a replayed step, and the resolved config; each is
read back from what the library wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config
from cluster.trackers import MLFLOW_STORE, Trackers, flat_config

# the first steps of a committed paper-sweep run: every key a run with an alarm, draws and evals logs
LOGGED = Path(__file__).resolve().parents[2] / "docs" / "paper-sweep" / "adaptive" / "seed1" / "metrics.jsonl"
WANDB_BLOCK = 32768  # W&B's .wandb file: LevelDB log records in 32 KiB blocks after a 7-byte header


def _steps() -> dict[int, dict[str, float]]:
    lines = [json.loads(line) for line in LOGGED.read_text().splitlines()[:3]]
    return {line.pop("step"): {k: v for k, v in line.items() if k != "wall_s"} for line in lines}


def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < 7:  # a block's tail too short for a record header is padding
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_every_logger_reads_back_the_steps_and_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "tracked"
    config = load_config(None, ["name=tracked", "trainer.project=toolrl-test", "learner.lr=3e-4",
                                "trainer.loggers=[tensorboard, wandb, mlflow]"])
    steps = _steps()
    trackers = Trackers(config, run_dir, 0)
    for step, metrics in steps.items():
        trackers.log(metrics, step)
    trackers.rewind(1)  # a replaced learner replays steps 2 and 3 from the checkpoint of step 1
    replayed = {step: {**steps[step], "time/step_s": steps[step]["time/step_s"] + 1} for step in (2, 3)}
    for step, metrics in replayed.items():  # the same values but for the timings
        trackers.log(metrics, step)
    trackers.close()
    keys = set().union(*steps.values())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert set(board.Tags()["scalars"]) == keys
    first = {step: metrics["time/step_s"] for step, metrics in steps.items()}
    again = {step: metrics["time/step_s"] for step, metrics in replayed.items()}
    assert [(e.step, e.value) for e in board.Scalars("time/step_s")] == [  # the replay replaced steps 2 and 3
        (1, pytest.approx(first[1])), (2, pytest.approx(again[2])), (3, pytest.approx(again[3]))]

    records = list(_wandb_records(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.display_name, run.project) == ("tracked", "toolrl-test")
    wandb_config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert wandb_config["learner"]["lr"] == 3e-4 and wandb_config["trainer"]["loggers"] == ["tensorboard", "wandb",
                                                                                             "mlflow"]
    history = {r.history.step.num: {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                    for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"}
    assert list(history) == [1, 2, 3]
    assert {step: {k for k in logged if not k.startswith("_")} for step, logged in history.items()} == {
        step: set(metrics) for step, metrics in steps.items()}
    # W&B dropped the replayed step 2 (it was past it) and took the replay of its last step, 3
    assert [logged["time/step_s"] for logged in history.values()] == pytest.approx([first[1], first[2], again[3]])

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir.parent / MLFLOW_STORE}")
    experiment = client.get_experiment_by_name("toolrl-test")
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "tracked" and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params == flat_config(config.model_dump(mode="json"))
    assert mlflow_run.data.params["learner.lr"] == "0.0003"
    assert set(mlflow_run.data.metrics) == keys
    history = client.get_metric_history(mlflow_run.info.run_id, "time/step_s")
    assert sorted((m.step, m.value) for m in history) == sorted(  # the replayed points recorded as well
        [*first.items(), *again.items()])


def test_a_logger_listed_twice_or_unknown_is_one_config_line():
    with pytest.raises(ConfigError, match=r"^config error: trainer.loggers: wandb is listed twice"):
        load_config(None, ["trainer.loggers=[wandb, wandb]"])
    with pytest.raises(ConfigError, match=r"^config error: trainer.loggers.0: Input should be 'tensorboard', "
                                          r"'wandb' or 'mlflow' \(got 'neptune'\)$"):
        load_config(None, ["trainer.loggers=[neptune]"])
    assert load_config(None, []).trainer.loggers == ["tensorboard"]
