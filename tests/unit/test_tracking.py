"""Unit tests for train/tracking.py (MLflow and TensorBoard from the main process) and
train/progress.py (the terminal-only progress bar)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

from container import read_tensorboard_dir
from train import tracking
from train.config import TrainConfig
from train.progress import ProgressBar

MAIN = SimpleNamespace(is_main=True)
OTHER = SimpleNamespace(is_main=False)
ROWS = [
    {
        "epoch": 1,
        "train_loss": 1.2,
        "train_acc": 0.4,
        "val_loss": 1.1,
        "val_acc": 0.5,
        "val_macro_f1": 0.45,
        "lr": 0.01,
        "epoch_time_s": 2.0,
    },
    {
        "epoch": 2,
        "train_loss": 0.8,
        "train_acc": 0.6,
        "val_loss": 0.9,
        "val_acc": 0.7,
        "val_macro_f1": 0.65,
        "lr": 0.005,
        "epoch_time_s": 2.0,
    },
]
FINAL = {"split": "test", "loss": 0.7, "acc": 0.75, "macro_f1": 0.7, "per_class": {}}


def outputs(tmp_path):
    out, model = tmp_path / "out", tmp_path / "model"
    out.mkdir()
    model.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "confusion_matrix.png").write_bytes(b"png")
    (model / "model_spec.json").write_text("{}")
    return out, model


def test_nothing_tracked_without_uri_or_directory(sm_paths):
    """No MLFLOW_TRACKING_URI and no TensorBoard directory: no sinks, and mlflow is never imported."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from types import SimpleNamespace
        from container import SageMakerPaths
        from train import tracking
        from train.config import TrainConfig
        tracker = tracking.start(TrainConfig(), SimpleNamespace(is_main=True), SageMakerPaths(Path({str(sm_paths.root)!r})), environ={{}})
        tracker.log_epoch({ROWS[0]!r}, 10)
        assert tracker.sinks == [] and tracker.summary() == {{}}
        assert "mlflow" not in sys.modules and "tensorboardX" not in sys.modules, sorted(sys.modules)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_main_process_tracks(sm_paths):
    sm_paths.tensorboard_dir.mkdir(parents=True)
    tracker = tracking.start(TrainConfig(), OTHER, sm_paths, environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert tracker.sinks == []


def test_tensorboard_directory_resolution(sm_paths, tmp_path):
    assert read_tensorboard_dir(sm_paths) is None
    sm_paths.tensorboard_dir.mkdir(parents=True)
    assert read_tensorboard_dir(sm_paths) == sm_paths.tensorboard_dir
    sm_paths.tensorboard_config_file.write_text(json.dumps({"LocalPath": str(tmp_path / "tb"), "S3OutputPath": "s3://b/p"}))
    assert read_tensorboard_dir(sm_paths) == tmp_path / "tb"
    tracker = tracking.start(TrainConfig(tensorboard_dir=str(tmp_path / "mine")), MAIN, sm_paths, environ={})
    assert [type(s).__name__ for s in tracker.sinks] == ["TensorBoardSink"]
    assert tracker.summary() == {"tensorboard_dir": str(tmp_path / "mine")}


def test_tensorboard_writes_event_files(sm_paths, tmp_path):
    sm_paths.tensorboard_dir.mkdir(parents=True)
    tracker = tracking.start(TrainConfig(), MAIN, sm_paths, environ={})
    for row in ROWS:
        tracker.log_epoch(row, 100)
    tracker.finish(FINAL, *outputs(tmp_path))
    files = list(sm_paths.tensorboard_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].stat().st_size > 100
    assert tracker.sinks[0].writer is None  # closed


def test_mlflow_run_in_a_file_store(sm_paths, tmp_path, monkeypatch):
    """Params, per-epoch history with steps, final metrics and artifacts, read back with
    MlflowClient (the container test does the same against a real tracking server)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the only store mlflow-skinny has offline

    uri = (tmp_path / "mlruns").as_uri()
    env = {"MLFLOW_TRACKING_URI": uri, "TRAINING_JOB_NAME": "job-7"}
    config = TrainConfig(epochs=2, mlflow_experiment="shapes")
    tracker = tracking.start(config, MAIN, sm_paths, environ=env)
    for row in ROWS:
        tracker.log_epoch(row, 100)
    summary = tracker.summary()["mlflow"]
    tracker.finish(FINAL, *outputs(tmp_path))

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "job-7"
    assert client.get_experiment(run.info.experiment_id).name == "shapes" == summary["experiment"]
    assert run.data.params["epochs"] == "2" and run.data.params["arch"] == "resnet18" and run.data.params["mlflow_experiment"] == "shapes"
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.45), (2, 0.65)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "images_per_s")] == [50.0, 50.0]
    assert run.data.metrics["test_macro_f1"] == 0.7
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["confusion_matrix.png", "metrics.json", "model_spec.json"]


def test_mlflow_server_down_warns_once_and_training_goes_on(sm_paths, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    tracker = tracking.start(TrainConfig(), MAIN, sm_paths, environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    for row in ROWS:
        tracker.log_epoch(row, 100)
    tracker.finish(FINAL, *outputs(tmp_path))
    assert time.monotonic() - started < 60
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("train")]
    assert len(warnings) == 1 and "MLflow tracking is off" in warnings[0].getMessage()
    assert tracker.summary() == {}


def test_redacted_uri():
    assert tracking._redacted("https://user:secret@mlflow.example/x") == "https://***@mlflow.example/x"
    assert (
        tracking._redacted("arn:aws:sagemaker:us-east-1:123:mlflow-tracking-server/t")
        == "arn:aws:sagemaker:us-east-1:123:mlflow-tracking-server/t"
    )


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal():
    assert ProgressBar.for_terminal("epoch 1", 10, stream=io.StringIO()) is None
    screen = Terminal()
    bar = ProgressBar.for_terminal("epoch 1", 4, stream=screen)
    for step in range(1, 5):
        bar.update(step)
        if step == 2:
            bar.note("step=2/4 step_loss=0.5", step)
    bar.close()
    text = screen.getvalue()
    assert text.startswith("\repoch 1 1/4 [") and "epoch 1 4/4 [" in text and text.endswith("\n")
    assert "\repoch 1 2/4 [" in text.split("step_loss=0.5")[0]  # the note is drawn with its own step
    assert text.count("\n") == 1
