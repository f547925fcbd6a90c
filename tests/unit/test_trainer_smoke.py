"""The trainer's entry point end to end on the CPU, in this process: tiny generated
data, one epoch, then a second run that resumes from the first one's checkpoint.

No docker needed: a newcomer can run (or debug) exactly this with
`python -m pytest tests/unit/test_trainer_smoke.py` wherever torch is installed; the
unit-test image runs it like the other unit tests.
"""

import json
import logging
import signal

import pytest

from train import cli, synthetic

FLAGS = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--log-interval", "1"]


@pytest.fixture
def opt_ml(tmp_path, monkeypatch):
    """A fake /opt/ml holding a `training` channel, and a process that looks like a
    plain `docker run IMAGE train` (no launcher variables)."""
    root = tmp_path / "opt_ml"
    synthetic.make_shapes(root / "input/data/training", {"train": 8, "valid": 3}, size=32, seed=0)
    monkeypatch.setenv("SM_VISION_OPT_ML", str(root))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_ERROR_FILE"):
        monkeypatch.delenv(name, raising=False)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield root
    for signum, handler in handlers.items():  # the trainer installs its stop handlers
        signal.signal(signum, handler)
    logging.basicConfig(force=True)


def test_train_runs_one_epoch_then_resumes_from_its_checkpoint(opt_ml):
    assert cli.main([*FLAGS, "--epochs", "1"]) == 0
    # 9 validation images: too few for a monitoring baseline (20), which is left out with a warning.
    model_files = ["calibration.npy", "model.int8.onnx", "model.onnx", "model.pt", "model_spec.json"]  # + the CPU engines' files
    assert sorted(p.name for p in (opt_ml / "model").iterdir()) == model_files
    first = json.loads((opt_ml / "output/data/metrics.json").read_text())
    assert [row["epoch"] for row in first["epochs"]] == [1]
    assert first["data"]["train_images"] == 24 and first["final"]["split"] == "valid"
    assert [p.name for p in (opt_ml / "checkpoints").iterdir()] == ["checkpoint-e0001-s00000000.pt"]
    # Calibration on by default: T fitted on the validation split, in the artifact and the report.
    spec = json.loads((opt_ml / "model/model_spec.json").read_text())
    assert spec["temperature"] == first["calibration"]["temperature"] > 0
    assert first["calibration"]["fitted_on"] == "valid" and first["calibration"]["images"] == 9
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= first["calibration"].keys()
    assert (opt_ml / "output/data/reliability_diagram.png").stat().st_size > 0
    assert not (opt_ml / "output/failure").exists()

    # Two epochs in all: the second run loads the first one's checkpoint (plain data,
    # weights_only=True) and trains only epoch 2; epoch 1's row comes from the checkpoint.
    assert cli.main([*FLAGS, "--epochs", "2"]) == 0
    second = json.loads((opt_ml / "output/data/metrics.json").read_text())
    assert [row["epoch"] for row in second["epochs"]] == [1, 2]
    assert second["epochs"][0] == first["epochs"][0]


def test_calibration_can_be_turned_off(opt_ml):
    assert cli.main([*FLAGS, "--epochs", "1", "--calibrate", "false"]) == 0
    report = json.loads((opt_ml / "output/data/metrics.json").read_text())
    assert json.loads((opt_ml / "model/model_spec.json").read_text())["temperature"] == 1.0
    assert report["calibration"]["temperature"] == 1.0 and report["calibration"]["fitted_on"] is None
    assert "ece_before" in report["calibration"] and "ece_after" not in report["calibration"]
    assert report["config"]["calibrate"] is False


def test_the_model_carries_a_monitoring_baseline_of_its_validation_split(opt_ml, capsys):
    # 7 validation images per class (21): more than a baseline's 20; --monitoring-baseline caps them at 20.
    synthetic.make_shapes(opt_ml / "input/data/training", {"valid": 7}, size=32, seed=1)
    assert cli.main([*FLAGS, "--epochs", "1", "--monitoring-baseline", "20"]) == 0
    monitoring = opt_ml / "model/monitoring"
    assert sorted(p.name for p in monitoring.iterdir()) == ["baseline.json", "constraints.json", "reference.npz", "statistics.json"]
    baseline = json.loads((monitoring / "baseline.json").read_text())
    assert baseline["images"] == 20 and baseline["accuracy"]["images"] == 20
    assert baseline["source"] == "train: validation split of a local job"
    assert baseline["classes"] == json.loads((opt_ml / "model/model_spec.json").read_text())["classes"]
    constraints = json.loads((monitoring / "constraints.json").read_text())
    assert constraints["monitoring_config"]["sagemaker_vision"]["alpha"] == 0.05
    assert f"wrote the monitoring baseline {baseline['baseline_id']}" in capsys.readouterr().out  # the trainer logs to stdout


def test_no_baseline_when_asked_for_none(opt_ml):
    synthetic.make_shapes(opt_ml / "input/data/training", {"valid": 7}, size=32, seed=1)
    assert cli.main([*FLAGS, "--epochs", "1", "--monitoring-baseline", "0", "--export-onnx", "false"]) == 0
    assert sorted(p.name for p in (opt_ml / "model").iterdir()) == ["model.pt", "model_spec.json"]


def test_a_bad_flag_fails_naming_it(opt_ml):
    assert cli.main([*FLAGS, "--epochs", "0"]) == 2
    assert "epochs=0" in (opt_ml / "output/failure").read_text()
