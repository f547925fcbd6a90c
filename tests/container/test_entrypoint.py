"""The image started without a command (docker/entrypoint.sh): a plain host gets the
usage text, a training job's config runs `train` (SDK 3's ModelTrainer passes no
command), a processing job without a command is refused, and a command runs as given."""

from __future__ import annotations

import json

import pytest

from tests.support.containers import mount, opt_ml, wait_exit

pytestmark = pytest.mark.container
USAGE = "sagemaker-vision: PyTorch image classification"


def test_no_command_on_a_plain_host_prints_usage(image, containers):
    code, logs = wait_exit(containers.run(image, None))
    assert code == 0 and USAGE in logs, logs


def test_no_command_with_a_training_config_runs_train(image, containers, tmp_path):
    root = opt_ml(tmp_path)
    # a bad value, so `train` answers fast and by its own rules: the failure file names the field
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"epochs": "many"}))
    code, logs = wait_exit(containers.run(image, None, volumes=mount(root)))
    assert code == 2, logs
    assert USAGE not in logs
    assert "epochs" in (root / "output" / "failure").read_text()


def test_no_command_in_a_processing_job_is_refused(image, containers, tmp_path):
    root = tmp_path / "opt_ml"
    (root / "config").mkdir(parents=True)
    (root / "config" / "processingjobconfig.json").write_text("{}")
    code, logs = wait_exit(containers.run(image, None, volumes=mount(root)))
    assert code == 2 and "a processing job needs a command" in logs, logs


def test_a_command_runs_as_given(image, containers):
    code, logs = wait_exit(containers.run(image, ["python3", "-c", "print('as given')"]))
    assert (code, logs.strip()) == (0, "as given")
