"""`monitor` through the real image, as SageMaker Model Monitor runs a custom container:
the session's trained ResNet-18 gets a baseline from `docker run IMAGE monitor baseline`,
then `docker run IMAGE monitor` reads Data Capture files written here under the Model
Monitor environment contract (dataset_source, start/end_time, output_path,
publish_cloudwatch_metrics, baseline_constraints/statistics, ...).

Mounts are those of a monitoring job: the captures at /opt/ml/processing/input/endpoint,
the model (read-only) at /opt/ml/processing/model, the results at
/opt/ml/processing/resultdata and /opt/ml/output for the CloudWatch records, the exit
message and the failure file."""

from __future__ import annotations

import json
import os
import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter

from tests.support.captures import capture_record, iso, write_captures
from tests.support.containers import Containers, wait_exit
from tests.support.payloads import png_bytes
from train import synthetic

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
ENDPOINT, SCHEDULE = "shapes-endpoint", "shapes-hourly"
CLASSES = tuple(synthetic.SHAPE_CLASSES)
MODEL, CAPTURES, RESULTS = "/opt/ml/processing/model", "/opt/ml/processing/input/endpoint", "/opt/ml/processing/resultdata"
BASELINE = "/opt/ml/processing/baseline"


def writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    return path


@pytest.fixture(scope="module")
def monitored_model(image, docker_client, trained_model, tmp_path_factory) -> Path:
    """A copy of the session's model whose baseline (the trainer's, from 36 validation
    images) is replaced by one from 120 fresh shapes, written by `monitor baseline` in
    the image (the shared model stays as training left it)."""
    root = tmp_path_factory.mktemp("monitored")
    model = root / "model"
    shutil.copytree(trained_model, model)
    for path in (model, model / "monitoring"):
        os.chmod(path, 0o777)
    synthetic.make_shapes(root / "data", {"baseline": 40}, size=64, seed=7)
    handle = Containers(docker_client)
    try:
        container = handle.run(
            image,
            ["monitor", "baseline", "--model", MODEL, "--data", "/data/baseline"],
            volumes={str(model): {"bind": MODEL, "mode": "rw"}, str(root / "data"): {"bind": "/data", "mode": "ro"}},
        )
        code, logs = wait_exit(container, timeout=600)
    finally:
        handle.cleanup()
    assert code == 0, logs
    assert "wrote the monitoring baseline" in logs and "top-1 accuracy" in logs, logs
    return model


def traffic(seed: int, count: int, change=None) -> list[dict]:
    """`count` requests spread over the hour from T0, plus two outside it (Model Monitor
    may download more than the window)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        name = rng.choice(CLASSES)
        image = synthetic.draw_shape(rng, *synthetic.SHAPE_CLASSES[name], 64)
        image = change(image) if change else image
        when = T0 + timedelta(seconds=i * 3600 / count)
        records.append(capture_record(png_bytes(image), "image/png", when, output={"predicted_label": name, "confidence": 0.9}))
    for when in (T0 - timedelta(minutes=5), T0 + timedelta(hours=1, minutes=5)):
        records.append(capture_record(png_bytes(Image.new("RGB", (64, 64), (0, 0, 0))), "image/png", when))
    return records


def model_monitor_env(publish: str = "Enabled") -> dict:
    """The environment a Model Monitor schedule gives its container (Container Contract Inputs)."""
    return {
        "dataset_format": json.dumps({"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}),
        "dataset_source": CAPTURES,
        "output_path": RESULTS,
        "start_time": iso(T0),
        "end_time": iso(T0 + timedelta(hours=1)),
        "publish_cloudwatch_metrics": publish,
        "sagemaker_endpoint_name": ENDPOINT,
        "sagemaker_monitoring_schedule_name": SCHEDULE,
        "baseline_constraints": f"{BASELINE}/constraints.json",
        "baseline_statistics": f"{BASELINE}/statistics.json",
        "SM_VISION_MONITOR_MODEL": MODEL,
    }


def run_monitor(containers, image, model: Path, tmp: Path, records: list[dict], command=("monitor",), env=None, network=None):
    """(exit code, logs, results folder, /opt/ml/output folder) of one monitoring job."""
    captures = writable(tmp / "captures")
    write_captures(captures, ENDPOINT, records)
    results, output = writable(tmp / "results"), writable(tmp / "output")
    volumes = {
        str(captures): {"bind": CAPTURES, "mode": "ro"},
        str(model): {"bind": MODEL, "mode": "ro"},
        str(model / "monitoring"): {"bind": BASELINE, "mode": "ro"},
        str(results): {"bind": RESULTS, "mode": "rw"},
        str(output): {"bind": "/opt/ml/output", "mode": "rw"},
    }
    container = containers.run(
        image, list(command) if command else None, volumes=volumes, environment=env or model_monitor_env(), network=network
    )
    code, logs = wait_exit(container, timeout=600)
    return code, logs, results, output


def violations(results: Path) -> list[dict]:
    return json.loads((results / "constraint_violations.json").read_text())["violations"]


def test_in_distribution_traffic_under_the_model_monitor_contract(image, containers, monitored_model, tmp_path):
    # The captured answers are the true classes, which the model gets right at its test accuracy
    # (>= 0.9): the agreement check gets a lower bar here so that it tests the plumbing, not the model.
    env = {**model_monitor_env(), "SM_VISION_MONITOR_MIN_AGREEMENT": "0.5"}
    code, logs, results, output = run_monitor(containers, image, monitored_model, tmp_path, traffic(seed=21, count=120), env=env)
    assert code == 0, logs
    assert violations(results) == [], logs
    statistics = json.loads((results / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 120
    assert {f["name"] for f in statistics["features"]} >= {"max_probability", "ood_percentile", "predicted_label", "image_sharpness"}
    section = statistics["sagemaker_vision"]
    assert section["volume"]["records"] == 120 and section["volume"]["records_outside_window"] == 2
    assert (section["endpoint"], section["monitoring_schedule"]) == (ENDPOINT, SCHEDULE)
    baseline = json.loads((monitored_model / "monitoring/statistics.json").read_text())
    assert section["baseline_id"] == baseline["sagemaker_vision"]["baseline_id"]
    agreement = next(c for c in section["checks"] if c["name"] == "model_agreement")
    assert agreement["statistic"] >= 0.8 and "of 120 images" in agreement["description"]
    report = (results / "report.md").read_text()
    assert "No violations" in report and f"**endpoint**: {ENDPOINT}" in report
    for plot in ("drift_over_time", "predicted_labels", "confidence", "image_statistics", "ood_images"):
        assert (results / "plots" / f"{plot}.png").stat().st_size > 1000
    lines = [json.loads(line) for line in (output / "metrics/cloudwatch/monitor.jsonl").read_text().splitlines()]
    names = {line["MetricName"] for line in lines}
    assert {"record_count", "image_count", "violation_count", "embedding_drift_p_value", "label_drift_p_value", "ood_rate_p_value"} <= names
    for line in lines:
        assert line["Dimensions"] == [{"Name": "Endpoint", "Value": ENDPOINT}, {"Name": "MonitoringSchedule", "Value": SCHEDULE}]
        assert line["Timestamp"] == "2026-12-01T16:00:00Z" and isinstance(line["Value"], float)
    assert (output / "message").read_text().startswith("Completed: ")
    assert not (output / "failure").exists()
    throughput = section["throughput"]
    print(
        f"\nmonitor throughput (CPU, machine shared, preliminary): {throughput['images_per_second']} images/s over {throughput['images']} images"
    )


def test_a_monitoring_run_is_logged_to_mlflow(image, containers, monitored_model, tmp_path, mlflow_server):
    """With MLFLOW_TRACKING_URI set, each monitoring run is one MLflow run (a real server):
    the job's parameters, its metrics (the CloudWatch ones), the violation count as a tag,
    and the results as artifacts."""
    uri, network = mlflow_server
    env = {
        **model_monitor_env(),
        "SM_VISION_MONITOR_MIN_AGREEMENT": "0.5",
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_EXPERIMENT_NAME": "monitor-ci",
    }
    code, logs, results, _ = run_monitor(
        containers, image, monitored_model, tmp_path, traffic(seed=24, count=60), env=env, network=network.name
    )
    assert code == 0, logs
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("monitor-ci").experiment_id])
    assert f"MLflow: run {run.info.run_id}" in logs
    assert run.info.status == "FINISHED" and run.info.run_name == SCHEDULE
    assert (run.data.params["endpoint"], run.data.params["monitoring_schedule"]) == (ENDPOINT, SCHEDULE)
    found = len(violations(results))
    assert run.data.tags["sagemaker_vision.violations"] == str(found) and run.data.metrics["violation_count"] == found
    assert run.data.metrics["image_count"] == 60
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"statistics.json", "constraint_violations.json", "report.md", "plots"} <= artifacts, artifacts


def test_blurred_traffic_is_a_violation_and_the_container_needs_no_command(image, containers, monitored_model, tmp_path):
    blur = lambda image: image.filter(ImageFilter.GaussianBlur(2.5))  # noqa: E731
    # No command: the entrypoint sees Model Monitor's environment and runs `monitor`, as a schedule without ContainerEntrypoint does.
    code, logs, results, output = run_monitor(
        containers, image, monitored_model, tmp_path, traffic(seed=22, count=120, change=blur), command=None
    )
    assert code == 0, logs
    found = {(v["feature_name"], v["constraint_check_type"]) for v in violations(results)}
    assert ("image_sharpness", "data_quality_check") in found, found
    assert all(v["description"] for v in violations(results))
    assert (output / "message").read_text().startswith("CompletedWithViolations: ")
    lines = {
        json.loads(line)["MetricName"]: json.loads(line)["Value"]
        for line in (output / "metrics/cloudwatch/monitor.jsonl").read_text().splitlines()
    }
    assert lines["violation_count"] == len(found)
    assert "**VIOLATION**" in (results / "report.md").read_text()


def test_cloudwatch_records_only_when_enabled(image, containers, monitored_model, tmp_path):
    code, logs, results, output = run_monitor(
        containers, image, monitored_model, tmp_path, traffic(seed=23, count=40), env=model_monitor_env("Disabled")
    )
    assert code == 0, logs
    assert (results / "statistics.json").is_file()
    assert not (output / "metrics/cloudwatch").exists()


def test_missing_inputs_fail_with_the_reason_in_the_failure_file(image, containers, monitored_model, tmp_path):
    env = {**model_monitor_env(), "dataset_source": "/opt/ml/processing/input/nowhere"}
    code, logs, _, output = run_monitor(containers, image, monitored_model, tmp_path, [], env=env)
    assert code == 2, logs
    failure = (output / "failure").read_text()
    assert failure.startswith("ConfigError: dataset_source /opt/ml/processing/input/nowhere is not a directory"), failure
    assert (output / "message").read_text() == f"Failed: {failure}"  # what a processing job reports as its ExitMessage
    env = {**model_monitor_env(), "SM_VISION_MONITOR_MODEL": "/opt/ml/processing/no-model"}
    code, logs, _, output = run_monitor(containers, image, monitored_model, tmp_path / "again", [], env=env)
    assert code == 2, logs
    assert "SM_VISION_MONITOR_MODEL=/opt/ml/processing/no-model: no such directory" in (output / "failure").read_text()
