"""`monitor` end to end inside the image, on Data Capture files written here: a ResNet-18
trained for a few seconds on coloured shapes, its baseline from `monitor baseline`, then
windows of in-distribution and shifted traffic through `monitor.cli.main`."""

import json
import random
import tarfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from container import ConfigError
from monitor import cli, model
from tests.support.captures import capture_record, write_captures
from tests.support.payloads import png_bytes
from train import synthetic
from vision import presets
from vision.artifact import ModelSpec
from vision.models import build_model

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
CLASSES = tuple(synthetic.SHAPE_CLASSES)
SIZE = 48  # drawn images; the model reads them at 32
WINDOW = ["--start", "2026-12-01T15:00:00Z", "--end", "2026-12-01T16:00:00Z"]


def draw(rng: random.Random, name: str | None = None) -> Image.Image:
    colour, shape = synthetic.SHAPE_CLASSES[name or rng.choice(CLASSES)]
    return synthetic.draw_shape(rng, colour, shape, SIZE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A ResNet-18 trained for 3 epochs on 90 shapes, with a baseline from 180 more."""
    root = tmp_path_factory.mktemp("monitor-model")
    synthetic.make_shapes(root / "data", {"train": 30, "valid": 60}, size=SIZE, seed=0)
    torch.manual_seed(0)
    net = build_model("resnet18", len(CLASSES))
    transform = presets.eval_transform(32)
    samples = [
        (transform(Image.open(p).convert("RGB")), CLASSES.index(p.parent.name)) for p in sorted((root / "data/train").rglob("*.png"))
    ]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(3):
        random.Random(0).shuffle(samples)
        for first in range(0, len(samples), 16):
            inputs = torch.stack([x for x, _ in samples[first : first + 16]])
            targets = torch.tensor([y for _, y in samples[first : first + 16]])
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(inputs), targets).backward()
            optimizer.step()
    directory = root / "model"
    directory.mkdir()
    torch.save(net.state_dict(), directory / "model.pt")
    ModelSpec("resnet18", CLASSES, 32, presets.eval_resize_size(32), presets.IMAGENET_MEAN, presets.IMAGENET_STD).save(directory)
    assert cli.main(["baseline", "--model", str(directory), "--data", str(root / "data/valid")]) == 0
    return directory


def window_records(images: list[Image.Image], outputs: list | None = None) -> list[dict]:
    """One request per image, spread over the hour from T0."""
    step = timedelta(seconds=3600 / max(1, len(images)))
    return [
        capture_record(png_bytes(image), "image/png", T0 + i * step, output=outputs[i] if outputs else None)
        for i, image in enumerate(images)
    ]


def run(tmp_path: Path, model_dir: Path, records: list[dict], *args: str, monkeypatch=None, env: dict | None = None):
    """(exit code, output folder, /opt/ml root) of `monitor` on these records."""
    captures, out, opt_ml = tmp_path / "captures", tmp_path / "out", tmp_path / "opt_ml"
    write_captures(captures, "shapes-endpoint", records)
    monkeypatch.setenv("SM_VISION_OPT_ML", str(opt_ml))
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    code = cli.main(["--captures", str(captures), "--model", str(model_dir), "--out", str(out), *WINDOW, *args])
    return code, out, opt_ml


def violations(out: Path) -> list[dict]:
    return json.loads((out / "constraint_violations.json").read_text())["violations"]


def traffic(seed: int, count: int = 90, name: str | None = None) -> list[Image.Image]:
    rng = random.Random(seed)
    return [draw(rng, name) for _ in range(count)]


def test_the_baseline_is_written_into_the_model(model_dir):
    summary = json.loads((model_dir / "monitoring/baseline.json").read_text())
    assert summary["images"] == 180 and summary["reference_images"] == 90
    assert summary["pca"] == {
        "feature_dim": 512,
        "components": 9,
        "explained_variance_ratio": summary["pca"]["explained_variance_ratio"],
        "fit_images": 90,
    }
    assert summary["accuracy"]["images"] == 180 and summary["accuracy"]["top1"] > 0.85  # the model learned the shapes
    assert summary["image_statistics"]["width"]["mean"] == SIZE


def test_in_distribution_traffic_raises_no_violation(tmp_path, model_dir, monkeypatch):
    env = {"sagemaker_endpoint_name": "shapes-endpoint", "sagemaker_monitoring_schedule_name": "hourly"}
    code, out, opt_ml = run(
        tmp_path, model_dir, window_records(traffic(seed=11)), "--publish-cloudwatch-metrics", "Enabled", monkeypatch=monkeypatch, env=env
    )
    assert code == 0
    assert violations(out) == []
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 90
    section = statistics["sagemaker_vision"]
    assert section["volume"]["records"] == 90 and section["volume"]["decode_failures"] == {}
    assert [c["name"] for c in section["checks"]][:4] == ["embedding_drift", "label_drift", "confidence_drift", "ood_rate"]
    assert all(not c["violated"] for c in section["checks"])
    assert len(section["drift_over_time"]) == 12 and sum(row["images"] for row in section["drift_over_time"]) == 90
    assert section["throughput"]["images"] == 90 and section["throughput"]["images_per_second"] > 0
    report = (out / "report.md").read_text()
    assert "No violations" in report
    for plot in ("drift_over_time", "predicted_labels", "confidence", "image_statistics", "ood_images"):
        assert f"plots/{plot}.png" in report
        assert Image.open(out / "plots" / f"{plot}.png").size[0] > 100
    lines = [json.loads(line) for line in (opt_ml / "output/metrics/cloudwatch/monitor.jsonl").read_text().splitlines()]
    by_name = {line["MetricName"]: line for line in lines}
    assert by_name["record_count"]["Value"] == 90 and by_name["violation_count"]["Value"] == 0
    assert by_name["embedding_drift_p_value"]["Dimensions"] == [
        {"Name": "Endpoint", "Value": "shapes-endpoint"},
        {"Name": "MonitoringSchedule", "Value": "hourly"},
    ]
    assert by_name["record_count"]["Timestamp"] == "2026-12-01T16:00:00Z"  # the window's end
    assert (opt_ml / "output/message").read_text().startswith("Completed: ")
    assert not (opt_ml / "output/failure").exists()


def blurred(image):
    return image.filter(ImageFilter.GaussianBlur(2))


def darkened(image):
    return ImageEnhance.Brightness(image).enhance(0.45)


def foreign(image):
    rng = np.random.default_rng(sum(image.getpixel((0, 0))))
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("change", "only", "expected"),
    [
        (blurred, None, {("image_sharpness", "data_quality_check")}),
        (darkened, None, {("image_brightness", "data_quality_check")}),
        (foreign, None, {("embedding", "embedding_drift_check"), ("ood_percentile", "ood_check")}),
        (None, "red_circle", {("predicted_label", "prediction_drift_check")}),
    ],
    ids=["blur", "dark", "foreign", "class-prior"],
)
def test_each_shift_is_named_by_its_violations(tmp_path, model_dir, monkeypatch, change, only, expected):
    images = [change(image) if change else image for image in traffic(seed=12, name=only)]
    code, out, opt_ml = run(tmp_path, model_dir, window_records(images), monkeypatch=monkeypatch)
    assert code == 0  # violations are results, not failures
    found = {(v["feature_name"], v["constraint_check_type"]) for v in violations(out)}
    assert expected <= found, found
    assert (opt_ml / "output/message").read_text().startswith("CompletedWithViolations: ")
    assert "**VIOLATION**" in (out / "report.md").read_text()


def test_undecodable_images_are_a_data_quality_violation(tmp_path, model_dir, monkeypatch):
    records = window_records(traffic(seed=13, count=60))
    records += [capture_record(b"\x89PNG\r\n\x1a\n truncated", "image/png", T0 + timedelta(minutes=i)) for i in range(10)]
    code, out, _ = run(tmp_path, model_dir, records, monkeypatch=monkeypatch)
    assert code == 0
    decode = [v for v in violations(out) if v["feature_name"] == "decode_failure_rate"]
    assert decode and decode[0]["constraint_check_type"] == "data_quality_check" and "10 of 70" in decode[0]["description"]


def test_a_job_running_another_model_is_caught_by_the_captured_answers(tmp_path, model_dir, monkeypatch):
    images = traffic(seed=14, count=40)
    answers = [{"predicted_label": "blue_triangle", "confidence": 0.9}] * len(images)  # what "the endpoint" said
    code, out, _ = run(tmp_path, model_dir, window_records(images, answers), monkeypatch=monkeypatch)
    assert code == 0
    assert ("captured_predicted_label", "model_mismatch_check") in {
        (v["feature_name"], v["constraint_check_type"]) for v in violations(out)
    }


def test_an_empty_window_is_a_volume_violation_and_tests_nothing(tmp_path, model_dir, monkeypatch):
    late = [capture_record(png_bytes(image), "image/png", T0 + timedelta(hours=3)) for image in traffic(seed=15, count=5)]
    code, out, _ = run(tmp_path, model_dir, late, monkeypatch=monkeypatch)
    assert code == 0
    assert [(v["feature_name"], v["constraint_check_type"]) for v in violations(out)] == [("record_count", "volume_check")]
    section = json.loads((out / "statistics.json").read_text())["sagemaker_vision"]
    assert section["volume"]["records_outside_window"] == 5
    assert all(c.get("skipped") for c in section["checks"][:10])


def test_thresholds_come_from_the_baseline_constraints(tmp_path, model_dir, monkeypatch):
    constraints = json.loads((model_dir / "monitoring/constraints.json").read_text())
    constraints["monitoring_config"]["sagemaker_vision"]["min_records"] = 1000
    path = tmp_path / "constraints.json"
    path.write_text(json.dumps(constraints))
    statistics = str(model_dir / "monitoring/statistics.json")
    code, out, _ = run(
        tmp_path,
        model_dir,
        window_records(traffic(seed=16, count=30)),
        "--baseline-constraints",
        str(path),
        "--baseline-statistics",
        statistics,
        monkeypatch=monkeypatch,
    )
    assert code == 0
    assert [v["feature_name"] for v in violations(out)] == ["record_count"]
    assert "minimum 1000" in violations(out)[0]["description"]


def test_bad_inputs_fail_with_a_clear_message(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("SM_VISION_OPT_ML", str(tmp_path / "opt_ml"))
    failure = tmp_path / "opt_ml/output/failure"
    assert cli.main(["--captures", str(tmp_path / "none"), "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 2
    assert "dataset_source" in failure.read_text() and "is not a directory" in failure.read_text()
    assert (tmp_path / "opt_ml/output/message").read_text() == "Failed: " + failure.read_text()  # a processing job's ExitMessage
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.pt", "model_spec.json"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    (tmp_path / "captures").mkdir()
    assert cli.main(["--captures", str(tmp_path / "captures"), "--model", str(bare), "--out", str(tmp_path / "out")]) == 2
    assert "monitor baseline --model" in failure.read_text()
    monkeypatch.setenv("baseline_statistics", str(tmp_path / "missing.json"))
    assert cli.main(["--captures", str(tmp_path / "captures"), "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 2
    assert failure.read_text().startswith("ConfigError: baseline_statistics=")
    monkeypatch.delenv("baseline_statistics")
    monkeypatch.setenv("SM_VISION_MONITOR_ALPHA", "2")
    assert cli.main(["--captures", str(tmp_path / "captures"), "--model", str(model_dir), "--out", str(tmp_path / "out")]) == 2
    assert "SM_VISION_MONITOR_ALPHA=2.0: must be <= 0.5" in failure.read_text()


def test_a_model_archive_is_extracted_and_s3_errors_name_the_object(tmp_path, model_dir):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    extracted = model.resolve(str(archive), tmp_path / "scratch")
    assert (extracted / "monitoring/baseline.json").is_file() and (extracted / "model_spec.json").is_file()

    class FakeS3:
        def __init__(self, error=None):
            self.error, self.calls = error, []

        def download_file(self, bucket, key, filename):
            self.calls.append((bucket, key))
            if self.error:
                raise self.error
            Path(filename).write_bytes(archive.read_bytes())

    s3 = FakeS3()
    resolved = model.resolve("s3://bucket/models/model.tar.gz", tmp_path / "from-s3", client=s3)
    assert s3.calls == [("bucket", "models/model.tar.gz")] and (resolved / "model.pt").is_file()
    from botocore.exceptions import ClientError

    denied = FakeS3(ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject"))
    with pytest.raises(ConfigError, match="cannot download s3://bucket/m.tar.gz: AccessDenied"):
        model.resolve("s3://bucket/m.tar.gz", tmp_path / "denied", client=denied)
    with pytest.raises(ConfigError, match="expected s3://bucket/key/model.tar.gz"):
        model.resolve("s3://bucket-only", tmp_path / "x")


def test_mlflow_gets_a_run_with_the_metrics_and_the_report(tmp_path, model_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"file://{tmp_path / 'mlruns'}"
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true", "sagemaker_monitoring_schedule_name": "hourly"}
    code, _, _ = run(tmp_path, model_dir, window_records(traffic(seed=17, count=30)), monkeypatch=monkeypatch, env=env)
    assert code == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sagemaker-vision-monitor")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "hourly"
    assert found.data.metrics["record_count"] == 30 and "embedding_drift_p_value" in found.data.metrics
    assert found.data.params["alpha"] == "0.05"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"statistics.json", "constraint_violations.json", "report.md", "plots"} <= artifacts


def test_an_unreachable_tracking_server_does_not_fail_the_run(tmp_path, model_dir, monkeypatch, capsys):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    code, out, _ = run(tmp_path, model_dir, window_records(traffic(seed=18, count=30)), monkeypatch=monkeypatch, env=env)
    assert code == 0 and (out / "statistics.json").is_file()
    assert "MLflow tracking failed" in capsys.readouterr().out


def test_npy_and_json_batches_are_monitored_like_single_images(tmp_path, model_dir, monkeypatch):
    import base64

    from tests.support.payloads import npy_bytes

    images = traffic(seed=19, count=40)
    b64 = [base64.b64encode(png_bytes(image)).decode() for image in images[:20]]
    records = [
        capture_record(json.dumps({"instances": b64}).encode(), "application/json", T0 + timedelta(minutes=1)),
        capture_record(npy_bytes(np.stack([np.asarray(image) for image in images[20:]])), "application/x-npy", T0 + timedelta(minutes=2)),
        capture_record(json.dumps([{"url": "https://example.com/a.jpg"}]).encode(), "application/json", T0 + timedelta(minutes=3)),
    ]
    code, out, _ = run(tmp_path, model_dir, records, monkeypatch=monkeypatch)
    assert code == 0
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 40
    assert statistics["sagemaker_vision"]["volume"]["not_evaluated"] == {"url input (not fetched)": 1}
    formats = {
        b["value"]: b["count"]
        for b in next(f for f in statistics["features"] if f["name"] == "image_format")["string_statistics"]["distribution"]["categorical"][
            "buckets"
        ]
    }
    assert formats == {"PNG": 20, "NPY": 20}


class Metrics:
    """PutMetricData's MetricData: the run's records, Timestamp as a datetime (boto3 serializes it)."""

    def __init__(self, when: datetime, dimensions: list[dict]):
        self.when, self.dimensions, self.names = when, dimensions, set()

    def __eq__(self, other) -> bool:
        self.names = {datum["MetricName"] for datum in other}
        return all(datum["Timestamp"] == self.when and datum["Dimensions"] == self.dimensions for datum in other)


def test_a_scheduled_processing_job_reads_the_hours_from_s3_and_publishes_its_metrics(tmp_path, model_dir, monkeypatch):
    """What `smvision-aws monitor` schedules for accounts without Model Monitor: the window
    is the last whole hour before the schedule's time, its hour folder is listed and
    downloaded from the capture prefix, and the records go to CloudWatch with PutMetricData."""
    import io

    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    records = window_records(traffic(seed=19, count=40))
    [path] = write_captures(tmp_path / "bucket", "shapes-endpoint", records)
    body = path.read_bytes()
    clients = {
        name: boto3.client(name, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x") for name in ("s3", "cloudwatch")
    }
    monkeypatch.setattr(boto3, "client", lambda name, **kwargs: clients[name])
    prefix = "capture/shapes-endpoint/AllTraffic"
    key = f"{prefix}/2026/12/01/15/{path.name}"
    metrics = Metrics(
        T0 + timedelta(hours=1),
        [{"Name": "Endpoint", "Value": "shapes-endpoint"}, {"Name": "MonitoringSchedule", "Value": "shapes-hourly"}],
    )
    with Stubber(clients["s3"]) as s3, Stubber(clients["cloudwatch"]) as cloudwatch:
        s3.add_response(
            "list_objects_v2",
            {"Contents": [{"Key": key, "Size": len(body)}, {"Key": f"{prefix}/2026/12/01/15/notes.txt", "Size": 1}], "KeyCount": 2},
            {"Bucket": "captures", "Prefix": f"{prefix}/2026/12/01/15/"},
        )
        s3.add_response("get_object", {"Body": StreamingBody(io.BytesIO(body), len(body))}, {"Bucket": "captures", "Key": key})
        cloudwatch.add_response("put_metric_data", {}, {"Namespace": "sagemaker-vision/monitoring", "MetricData": metrics})
        monkeypatch.setenv("SM_VISION_OPT_ML", str(tmp_path / "opt_ml"))
        argv = ["--captures", f"s3://captures/{prefix}", "--model", str(model_dir), "--out", str(tmp_path / "out"), "--hours", "1"]
        argv += ["--end", "2026-12-01T16:04:31Z", "--cloudwatch-namespace", "sagemaker-vision/monitoring"]
        assert cli.main([*argv, "--endpoint", "shapes-endpoint", "--schedule", "shapes-hourly"]) == 0
        s3.assert_no_pending_responses()
        cloudwatch.assert_no_pending_responses()
    assert {"record_count", "violation_count", "embedding_drift_p_value"} <= metrics.names
    section = json.loads((tmp_path / "out/statistics.json").read_text())["sagemaker_vision"]
    assert section["window"] == {"start": "2026-12-01T15:00:00Z", "end": "2026-12-01T16:00:00Z"}
    assert section["volume"]["records"] == 40 and section["volume"]["capture_files"] == 1
    assert not (tmp_path / "opt_ml/output/metrics/cloudwatch").exists()  # the file is Model Monitor's; this job published itself


def test_a_refused_put_metric_data_fails_the_job_naming_the_permission(tmp_path, model_dir, monkeypatch):
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    monkeypatch.setattr(boto3, "client", lambda name, **kwargs: client)
    with Stubber(client) as cloudwatch:
        cloudwatch.add_client_error("put_metric_data", "AccessDenied", http_status_code=403)
        code, out, opt_ml = run(
            tmp_path, model_dir, window_records(traffic(seed=20, count=30)), "--cloudwatch-namespace", "smv", monkeypatch=monkeypatch
        )
    assert code == 1 and (out / "statistics.json").is_file()  # the results are written first
    assert (
        "cannot publish the metrics to CloudWatch namespace smv: AccessDenied (does the job's role have cloudwatch:PutMetricData?)"
        in (opt_ml / "output/failure").read_text()
    )
