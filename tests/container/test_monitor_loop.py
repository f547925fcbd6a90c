"""The whole monitoring loop through the real image, as a user runs it: `train` on real
images (scikit-learn's digits as an ImageFolder), `serve` with capture on, held-out
in-distribution traffic and shifted traffic (blurred, brightened, rotated, only two
classes, foreign photos), each in its own time window, then `monitor` under Model
Monitor's environment contract on the captures the server wrote.

One trained model and one server for the module: each traffic phase is a window of
whole seconds, and each monitoring run reads only its window from the shared capture
folder (as an hourly job reads its hour)."""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from tests.support import digits as digit_data
from tests.support import shifts
from tests.support.captures import iso
from tests.support.containers import Containers, host_port, mount, opt_ml, wait_exit, wait_ping
from tests.support.payloads import png_bytes

ENDPOINT, SCHEDULE = "digits", "digits-hourly"
WINDOW = 200  # images per window: the size docs/monitoring.md states its detection rates at
MODEL, CAPTURES, RESULTS = "/opt/ml/processing/model", "/opt/ml/processing/input/endpoint", "/opt/ml/processing/resultdata"


def writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    return path


@pytest.fixture(scope="module")
def split():
    """scikit-learn's 1797 digits: 900 to train on, 400 to validate (the baseline), the
    rest held out as traffic."""
    everything = digit_data.load()
    random.Random(0).shuffle(everything)
    return everything[:900], everything[900:1300], everything[1300:]


@pytest.fixture(scope="module")
def digits_model(image, docker_client, tmp_path_factory, split) -> Path:
    """A ResNet-18 trained on the digits at 32 pixels; the trainer writes its monitoring
    baseline from the validation split."""
    root = opt_ml(tmp_path_factory.mktemp("digits"))
    train, valid, _ = split
    digit_data.write_image_folder(root / "input/data/training/train", train)
    digit_data.write_image_folder(root / "input/data/training/valid", valid)
    handle = Containers(docker_client)
    try:
        command = ["train", "--arch", "resnet18", "--image-size", "32", "--epochs", "4", "--batch-size", "32", "--lr", "0.002"]
        container = handle.run(image, command, volumes=mount(root))
        code, logs = wait_exit(container, timeout=1800)  # minutes on a quiet 2-core machine; a loaded one takes many more
    finally:
        handle.cleanup()
    assert code == 0, logs
    baseline = json.loads((root / "model/monitoring/baseline.json").read_text())
    # Ten classes (chance 0.1): a few epochs from scratch learn them well enough to watch.
    assert baseline["images"] == 400 and baseline["accuracy"]["top1"] >= 0.75, baseline["accuracy"]
    print("\n" + next(line for line in logs.splitlines() if "wrote the monitoring baseline" in line))  # what it cost
    return root / "model"


class Traffic:
    """The server, with capture on, and the windows of traffic sent to it."""

    def __init__(self, base: str, captures: Path):
        self.base, self.captures = base, captures
        self.windows: dict[str, tuple[datetime, datetime]] = {}
        self.sent = 0

    def send(self, name: str, images, batch_every: int = 0) -> None:
        """One window: each image as a PNG request, except every `batch_every`-th group of 10
        sent as one JSON request ({"instances": [{"b64": ...}]}), as clients batch."""
        start = datetime.fromtimestamp(int(time.time()), timezone.utc)
        bodies = [png_bytes(image) for image in images]
        position = 0
        while position < len(bodies):
            if batch_every and (position // 10) % batch_every == batch_every - 1:
                group = bodies[position : position + 10]
                payload = {"instances": [{"b64": base64.b64encode(body).decode()} for body in group]}
                answer = requests.post(f"{self.base}/invocations", json=payload, timeout=30)
                position += len(group)
            else:
                answer = requests.post(f"{self.base}/invocations", data=bodies[position], headers={"Content-Type": "image/png"}, timeout=30)
                position += 1
            assert answer.status_code == 200, answer.text
            self.sent += 1
        end = int(time.time()) + 1  # records carry whole seconds: the window ends after the last one
        self.windows[name] = (start, datetime.fromtimestamp(end, timezone.utc))
        while time.time() < end:  # the next window starts after this one ends
            time.sleep(0.05)

    def written(self) -> float:
        for line in requests.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith('sm_vision_capture_writes_total{destination="local",outcome="written"}'):
                return float(line.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def traffic(image, docker_client, digits_model, split, tmp_path_factory) -> Traffic:
    """Every window sent through one server that captures all of its answers."""
    root = opt_ml(tmp_path_factory.mktemp("serving"))
    captures = writable(root / "captures")
    env = {"SM_VISION_CAPTURE_PERCENT": "100", "SM_VISION_CAPTURE_DIR": "/opt/ml/captures", "SM_VISION_CAPTURE_ENDPOINT": ENDPOINT}
    volumes = {**mount(root), str(digits_model): {"bind": "/opt/ml/model", "mode": "ro"}}
    handle = Containers(docker_client)
    try:
        container = handle.run(image, ["serve"], volumes=volumes, environment=env, ports={"8080/tcp": None})
        sent = Traffic(f"http://127.0.0.1:{host_port(container)}", captures)
        wait_ping(sent.base, container)
        _, _, held_out = split
        rng = random.Random(1)
        window = [shifts.digit_image(digit) for digit in rng.sample(held_out, WINDOW)]
        sent.send("in-distribution", window, batch_every=4)
        for name, change in shifts.SHIFTS.items():
            sent.send(name, [change(image) for image in window])
        sent.send("class-prior", [shifts.digit_image(digit) for digit in shifts.class_prior(held_out, rng, WINDOW)])
        sent.send("foreign", shifts.foreign(WINDOW, rng))
        deadline = time.monotonic() + 60
        while sent.written() < sent.sent:  # the writer writes every second
            assert time.monotonic() < deadline, f"{sent.written()} of {sent.sent} requests captured after 60 s"
            time.sleep(0.5)
    finally:
        handle.cleanup()  # the server stops; its captures stay
    return sent


def model_monitor_env(window: tuple[datetime, datetime], publish: str = "Enabled") -> dict:
    """What a Model Monitor schedule gives its container (Container Contract Inputs)."""
    return {
        "dataset_format": json.dumps({"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}),
        "dataset_source": CAPTURES,
        "output_path": RESULTS,
        "start_time": iso(window[0]),
        "end_time": iso(window[1]),
        "publish_cloudwatch_metrics": publish,
        "sagemaker_endpoint_name": ENDPOINT,
        "sagemaker_monitoring_schedule_name": SCHEDULE,
        "SM_VISION_MONITOR_MODEL": MODEL,
    }


def monitor(containers, image, model: Path, traffic: Traffic, name: str, tmp_path: Path, publish: str = "Enabled", command=("monitor",)):
    """(statistics, violations as {(feature, check type)}, results folder, /opt/ml/output) of one window."""
    results, output = writable(tmp_path / "results"), writable(tmp_path / "output")
    volumes = {
        str(traffic.captures): {"bind": CAPTURES, "mode": "ro"},
        str(model): {"bind": MODEL, "mode": "ro"},
        str(results): {"bind": RESULTS, "mode": "rw"},
        str(output): {"bind": "/opt/ml/output", "mode": "rw"},
    }
    env = model_monitor_env(traffic.windows[name], publish)
    container = containers.run(image, list(command) if command else None, volumes=volumes, environment=env)
    code, logs = wait_exit(container, timeout=600)
    assert code == 0, logs
    statistics = json.loads((results / "statistics.json").read_text())
    found = {
        (v["feature_name"], v["constraint_check_type"])
        for v in json.loads((results / "constraint_violations.json").read_text())["violations"]
    }
    return statistics, found, results, output


def test_the_captures_are_data_capture_files(traffic):
    files = sorted(traffic.captures.rglob("*.jsonl"))
    assert files and all(path.relative_to(traffic.captures).parts[:2] == (ENDPOINT, "AllTraffic") for path in files)
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    assert len(records) == traffic.sent
    kinds = {(r["captureData"]["endpointInput"]["observedContentType"], r["captureData"]["endpointInput"]["encoding"]) for r in records}
    assert kinds == {("image/png", "BASE64"), ("application/json", "JSON")}
    assert {r["captureData"]["endpointOutput"]["encoding"] for r in records} == {"JSON"}  # our answers stay JSON


def test_in_distribution_traffic_raises_no_violation(image, containers, digits_model, traffic, tmp_path):
    statistics, found, results, output = monitor(containers, image, digits_model, traffic, "in-distribution", tmp_path, command=None)
    assert found == set(), statistics["sagemaker_vision"]["checks"]
    section = statistics["sagemaker_vision"]
    assert statistics["dataset"]["item_count"] == WINDOW and section["volume"]["records"] == 155  # 150 PNGs and 5 batches of 10
    agreement = next(check for check in section["checks"] if check["name"] == "model_agreement")
    assert agreement["statistic"] >= 0.95  # the monitor's model answers as the server did
    assert "No violations" in (results / "report.md").read_text()
    lines = [json.loads(line) for line in (output / "metrics/cloudwatch/monitor.jsonl").read_text().splitlines()]
    assert {"record_count", "violation_count", "embedding_drift_p_value"} <= {line["MetricName"] for line in lines}
    assert all(
        line["Dimensions"] == [{"Name": "Endpoint", "Value": ENDPOINT}, {"Name": "MonitoringSchedule", "Value": SCHEDULE}] for line in lines
    )
    assert (output / "message").read_text().startswith("Completed: ")
    print(f"\nmonitor throughput (CPU, machine shared): {section['throughput']}")


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("blur", ("image_sharpness", "data_quality_check")),
        ("brightness", ("image_brightness", "data_quality_check")),
        ("rotation", ("embedding", "embedding_drift_check")),
        ("class-prior", ("predicted_label", "prediction_drift_check")),
        ("foreign", ("ood_percentile", "ood_check")),
    ],
)
def test_each_shift_is_a_violation_of_its_check(image, containers, digits_model, traffic, tmp_path, window, expected):
    publish = "Disabled" if window == "class-prior" else "Enabled"
    statistics, found, results, output = monitor(containers, image, digits_model, traffic, window, tmp_path, publish)
    assert expected in found, (window, found)
    assert statistics["dataset"]["item_count"] == WINDOW
    assert "**VIOLATION**" in (results / "report.md").read_text()
    assert (output / "message").read_text().startswith("CompletedWithViolations: ")
    assert (output / "metrics/cloudwatch/monitor.jsonl").exists() == (publish == "Enabled")


def test_a_multi_model_endpoint_captures_each_model_apart(image, containers, digits_model, tmp_path):
    root = opt_ml(tmp_path)
    for name in ("left", "right"):
        shutil.copytree(digits_model, root / "models" / name)
    captures = writable(root / "captures")
    env = {
        "SAGEMAKER_MULTI_MODEL": "true",
        "SM_VISION_CAPTURE_PERCENT": "100",
        "SM_VISION_CAPTURE_DIR": "/opt/ml/captures",
        "SM_VISION_CAPTURE_ENDPOINT": "digits-mme",
    }
    container = containers.run(image, ["serve"], volumes=mount(root), environment=env, ports={"8080/tcp": None})
    base = f"http://127.0.0.1:{host_port(container)}"
    wait_ping(base, container)
    body = png_bytes(shifts.digit_image(digit_data.load(1)[0]))
    for name, count in (("left", 3), ("right", 2)):
        assert requests.post(f"{base}/models", json={"model_name": name, "url": f"/opt/ml/models/{name}"}, timeout=120).status_code == 200
        for _ in range(count):
            headers = {"Content-Type": "image/png", "X-Amzn-SageMaker-Target-Model": name}
            assert requests.post(f"{base}/invocations", data=body, headers=headers, timeout=30).status_code == 200
    container.stop(timeout=30)  # shutdown writes what is queued
    per_model = {}
    for path in captures.rglob("*.jsonl"):
        endpoint, model = path.relative_to(captures).parts[:2]
        assert endpoint == "digits-mme"
        per_model[model] = per_model.get(model, 0) + len(path.read_text().splitlines())
    assert per_model == {"left": 3, "right": 2}
