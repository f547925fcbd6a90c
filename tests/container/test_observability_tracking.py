"""The trainer's MLflow and TensorBoard tracking, through the real image.

A real MLflow tracking server (`mlflow server`, sqlite backend, from PyPI via
requirements-test.txt) runs on the host, bound only to the gateway address of a
user-defined docker network the test creates: the training container on that network
reaches it, nothing outside the host can. The run is read back with MlflowClient.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.containers import gateway, mount, opt_ml, wait_exit
from tests.support.net import free_port

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "images_per_s", "epoch_time_s")
ARTIFACTS = (
    "baseline.json",
    "classification_report.txt",
    "confusion_matrix.png",
    "data_check.json",
    "learning_curves.png",
    "metrics.json",
    "model_spec.json",
    "reliability_diagram.png",
)


def train(containers, image, tmp_path, shapes_data, network, env, extra_dirs=()):
    """Two epochs on the shapes data; (exit code, logs, /opt/ml root)."""
    root = opt_ml(tmp_path)
    subprocess.run(["cp", "-r", str(shapes_data), str(root / "input/data/training")], check=True)
    for sub in extra_dirs:
        (root / sub).mkdir(parents=True)
        (root / sub).chmod(0o777)
    command = ["train", "--epochs", "2", "--batch-size", "16", "--image-size", "32", "--log-interval", "2", "--num-workers", "0"]
    container = containers.run(image, command, volumes=mount(root), environment=env, network=network.name if network else None)
    code, logs = wait_exit(container, timeout=900)
    return code, logs, root


def warnings_in(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if re.search(r"\bWARNING\b", line)]


def test_mlflow_run_has_params_history_and_artifacts(containers, image, shapes_data, tmp_path, mlflow_server):
    uri, network = mlflow_server
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "shapes-ci", "TRAINING_JOB_NAME": "shapes-job-1"}
    code, logs, root = train(containers, image, tmp_path, shapes_data, network, env)
    assert code == 0, logs
    assert warnings_in(logs) == [], logs
    report = json.loads((root / "output/data/metrics.json").read_text())
    run_id = report["tracking"]["mlflow"]["run_id"]

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "shapes-job-1"
    assert client.get_experiment(run.info.experiment_id).name == "shapes-ci"
    params = run.data.params
    assert (params["epochs"], params["batch_size"], params["image_size"], params["arch"]) == ("2", "16", "32", "resnet18")
    # every resolved hyperparameter, and the data check's summary beside them
    assert {name for name in params if not name.startswith("data.")} == set(report["config"])
    fingerprint = report["data"]["fingerprint"]
    assert params["data.fingerprint"] == fingerprint and run.data.tags["dataset_fingerprint"] == fingerprint
    assert params["data.images.train"] == str(report["data"]["train_images"]) and params["data.leakage"] == str(
        report["data"]["check"]["leakage"]
    )
    for name in EPOCH_METRICS:
        history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2], name
    val_f1 = [m.value for m in sorted(client.get_metric_history(run_id, "val_macro_f1"), key=lambda m: m.step)]
    assert val_f1 == pytest.approx([row["val_macro_f1"] for row in report["epochs"]])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(report["final"]["macro_f1"])
    assert run.data.metrics["test_acc"] == pytest.approx(report["final"]["acc"])
    assert sorted(a.path for a in client.list_artifacts(run_id)) == sorted(ARTIFACTS)
    fetched = Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path)))
    assert fetched.read_text() == (root / "output/data/metrics.json").read_text()


def test_mlflow_server_down_job_succeeds_with_one_warning(containers, image, shapes_data, tmp_path):
    network = containers.network()
    host = gateway(network)
    # A tracking server that is not running: its address refuses connections.
    env = {"MLFLOW_TRACKING_URI": f"http://{host}:{free_port(host)}"}
    started = time.monotonic()
    code, logs, root = train(containers, image, tmp_path, shapes_data, network, env)
    assert code == 0, logs
    warnings = warnings_in(logs)
    assert len(warnings) == 1 and "MLflow tracking is off" in warnings[0], logs
    assert time.monotonic() - started < 600
    report = json.loads((root / "output/data/metrics.json").read_text())
    assert "mlflow" not in report["tracking"] and len(report["epochs"]) == 2
    assert (root / "model/model_spec.json").is_file()


def test_tensorboard_event_files_hold_per_epoch_scalars(containers, image, shapes_data, tmp_path):
    # SageMaker creates output/tensorboard when the job has a TensorBoardOutputConfig.
    code, logs, root = train(containers, image, tmp_path, shapes_data, None, {}, extra_dirs=["output/tensorboard"])
    assert code == 0, logs
    events = EventAccumulator(str(root / "output/tensorboard"))
    events.Reload()
    report = json.loads((root / "output/data/metrics.json").read_text())
    tags = set(events.Tags()["scalars"])
    expected = {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "macro_f1/val", "learning_rate", "images_per_s", "epoch_time_s"}
    assert expected <= tags, tags
    for tag, column in (
        ("loss/train", "train_loss"),
        ("loss/val", "val_loss"),
        ("accuracy/val", "val_acc"),
        ("macro_f1/val", "val_macro_f1"),
        ("learning_rate", "lr"),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        assert [s.value for s in scalars] == pytest.approx([row[column] for row in report["epochs"]], rel=1e-5), tag
    assert [s.value for s in events.Scalars("test/macro_f1")] == pytest.approx([report["final"]["macro_f1"]], rel=1e-5)
    assert report["tracking"] == {"tensorboard_dir": "/opt/ml/output/tensorboard"}
