"""The built-in trainer through the real image: SageMaker-style config, outputs,
log lines for metric_definitions, bad input, and train -> serve."""

import json
import re
import shutil

import pytest
import requests
from PIL import Image

from tests.support.containers import host_port, mount, opt_ml, wait_exit, wait_ping
from tests.support.files import TRAINED_MODEL_FILES
from tests.support.payloads import png_bytes
from train import synthetic
from train.reporting import METRIC_DEFINITIONS


def test_config_comes_from_hyperparameters_json_with_flags_overriding(trained):
    report = json.loads((trained.root / "output/data/metrics.json").read_text())
    config = report["config"]
    assert (config["batch_size"], config["lr"], config["image_size"], config["freeze_backbone"]) == (16, 0.003, 64, False)
    assert config["epochs"] == 6  # the flag beat hyperparameters.json's "3"
    assert len(report["epochs"]) == 6


def test_model_artifact_is_the_serving_contract(trained):
    # The weights and their spec (what serving reads), the CPU engines' files, and the monitoring baseline of the validation split.
    assert sorted(p.name for p in trained.model_dir.iterdir()) == TRAINED_MODEL_FILES
    monitoring = trained.model_dir / "monitoring"
    assert sorted(p.name for p in monitoring.iterdir()) == ["baseline.json", "constraints.json", "reference.npz", "statistics.json"]
    baseline = json.loads((monitoring / "baseline.json").read_text())
    assert baseline["images"] == 36 and baseline["accuracy"]["top1"] >= 0.9  # the 12 validation images per class
    assert re.search(rf"wrote the monitoring baseline {baseline['baseline_id']} .*: 36 validation images .* in [0-9.]+ s", trained.logs)
    spec = json.loads((trained.model_dir / "model_spec.json").read_text())
    assert spec["arch"] == "resnet18"
    assert spec["classes"] == ["blue_triangle", "green_square", "red_circle"]
    assert spec["image_size"] == 64
    assert spec["versions"]["torch"].startswith("2.10.0")


def test_learns_the_separable_data_and_reports_metrics(trained):
    report = json.loads((trained.root / "output/data/metrics.json").read_text())
    final = report["final"]
    assert final["split"] == "test"
    assert final["acc"] >= 0.9, final
    assert set(final["per_class"]) == set(synthetic.SHAPE_CLASSES)
    assert {"precision", "recall", "f1", "support"} <= set(final["per_class"]["red_circle"])
    assert 1 <= report["best_epoch"] <= 6
    for row in report["epochs"]:
        assert set(row["val_per_class"]) == set(synthetic.SHAPE_CLASSES)
        assert sum(c["support"] for c in row["val_per_class"].values()) == 36  # 12 per class in valid/
    for name in ("confusion_matrix.png", "learning_curves.png"):
        with Image.open(trained.root / "output/data" / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert "macro avg" in (trained.root / "output/data/classification_report.txt").read_text()
    assert not (trained.root / "output/failure").exists()


def test_log_lines_match_the_metric_definitions(trained):
    found = {}
    for definition in METRIC_DEFINITIONS:
        values = re.findall(definition["Regex"], trained.logs)
        found[definition["Name"]] = [float(v) for v in values]
    assert len(found["val_macro_f1"]) == 7  # six epochs, then the best epoch's again
    report = json.loads((trained.root / "output/data/metrics.json").read_text())
    best = report["epochs"][report["best_epoch"] - 1]["val_macro_f1"]
    # A tuner scores the job by the last value: it must be the saved (best) model's.
    assert found["val_macro_f1"][-1] == pytest.approx(best, rel=1e-5)
    assert len(found["train_loss"]) == 6
    assert len(found["test_acc"]) == 1
    assert found["images_per_s"] and all(v > 0 for v in found["images_per_s"])
    # Each regex matches its own metric only: val_loss lines are not read as train_loss.
    assert found["train_loss"] != found["val_loss"]


def test_served_model_predicts_the_right_class(image, containers, trained_model):
    server = containers.run(
        image, ["serve"], volumes={str(trained_model): {"bind": "/opt/ml/model", "mode": "ro"}}, ports={"8080/tcp": None}
    )
    base = f"http://127.0.0.1:{host_port(server)}"
    wait_ping(base, server)
    for seed, name in enumerate(sorted(synthetic.SHAPE_CLASSES)):
        body = png_bytes(synthetic.make_image(name, size=64, seed=1000 + seed))
        answer = requests.post(f"{base}/invocations", data=body, headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["predicted_label"] == name, result
        assert set(result["probabilities"]) == set(synthetic.SHAPE_CLASSES)
        assert abs(sum(result["probabilities"].values()) - 1) < 1e-4


def _run_failing(image, containers, root, command=("train",)):
    container = containers.run(image, list(command), volumes=mount(root))
    code, logs = wait_exit(container, timeout=300)
    failure = root / "output/failure"
    assert code != 0, logs
    assert failure.exists(), logs
    return failure.read_text()


def _with_data(tmp_path, shapes_data):
    root = opt_ml(tmp_path)
    shutil.copytree(shapes_data / "train", root / "input/data/training")
    return root


def test_missing_channel_fails_with_a_clear_message(image, containers, tmp_path):
    message = _run_failing(image, containers, opt_ml(tmp_path))
    assert "no training data" in message and "/opt/ml/input/data/training" in message


def test_empty_class_folder_fails_naming_it(image, containers, tmp_path, shapes_data):
    root = _with_data(tmp_path, shapes_data)
    (root / "input/data/training/purple_star").mkdir()
    assert "purple_star contains no readable images" in _run_failing(image, containers, root)


def test_unreadable_hyperparameters_json(image, containers, tmp_path, shapes_data):
    root = _with_data(tmp_path, shapes_data)
    (root / "input/config/hyperparameters.json").write_text('{"epochs": 2,')
    assert "hyperparameters.json (hyperparameters) is not valid JSON" in _run_failing(image, containers, root)


@pytest.mark.parametrize(
    "hyperparameters, expected",
    [
        ({"optimizer": "adam"}, "invalid choice: 'adam' (choose from 'adamw', 'sgd')"),
        ({"epoch": "2"}, "unknown hyperparameter or flag '--epoch'"),
        ({"arch": "resnet5"}, "arch='resnet5' is not a torchvision classification model"),
        ({"pretrained-weights": "/opt/ml/input/data/pretrained/missing.pth"}, "missing.pth does not exist"),
    ],
)
def test_bad_hyperparameters_fail_naming_the_field(image, containers, tmp_path, shapes_data, hyperparameters, expected):
    root = _with_data(tmp_path, shapes_data)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    assert expected in _run_failing(image, containers, root)


def test_too_many_unreadable_files_fail(image, containers, tmp_path, shapes_data):
    root = _with_data(tmp_path, shapes_data)
    for i in range(20):
        (root / f"input/data/training/red_circle/junk{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert "are not readable images, more than max_bad_fraction=0.05" in _run_failing(
        image, containers, root, ("train", "--image-size", "32")
    )


def test_entrypoint_usage_and_passthrough(image, containers):
    usage = containers.run(image, [])
    code, logs = wait_exit(usage, 60)
    assert code == 0 and "train [--flag value ...]" in logs and "serve" in logs
    passthrough = containers.run(image, ["python", "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"])
    code, logs = wait_exit(passthrough, 120)
    assert code == 0 and logs.split()[:2] == ["2.10.0+cu128", "0.25.0+cu128"], logs
    helps = containers.run(image, ["train", "--help"])
    code, logs = wait_exit(helps, 120)
    assert code == 0 and "--early-stopping-patience" in logs and "--batch-size" in logs
