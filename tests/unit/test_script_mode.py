"""Script mode's own logic (the toolkit itself is exercised end to end in
tests/container/test_script_mode.py): request validation, the config files written for
plain `docker run`, and a whole run under a non-default root (SM_VISION_OPT_ML), which
must reach the toolkit as SAGEMAKER_BASE_DIR."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from tests.support.files import write_json
from train import cli, script_mode


@pytest.fixture
def train(sm_paths, monkeypatch):
    """`train` in this process on the fake /opt/ml, with `hyperparameters` in hyperparameters.json."""
    monkeypatch.setenv("SM_VISION_OPT_ML", str(sm_paths.root))

    def run(hyperparameters: dict) -> int:
        write_json(sm_paths.hyperparameters_file, hyperparameters)
        return cli.main([])

    yield run
    logging.basicConfig(force=True)  # cli.main set up the trainer's logging


def test_empty_program_is_a_config_error(train, sm_paths):
    assert train({"sagemaker_program": " "}) == 2
    assert "sagemaker_program is empty" in sm_paths.failure_file.read_text()


def test_no_submit_directory_and_no_code_is_a_config_error(train, sm_paths):
    assert train({"sagemaker_program": "train.py"}) == 2
    failure = sm_paths.failure_file.read_text()
    assert "sagemaker_submit_directory" in failure and "source_dir" in failure


def test_missing_config_files_are_written_for_one_host_and_each_channel_in_its_input_mode(sm_paths):
    for channel in ("train", "test"):
        (sm_paths.data_dir / channel).mkdir()
    os.mkfifo(sm_paths.data_dir / "validation_0")  # a Pipe-mode channel's first pass, as SageMaker lays it out
    (sm_paths.data_dir / "notes_1").write_text("a file, not a FIFO: no channel")
    script_mode._complete_config(sm_paths)
    resource = json.loads(sm_paths.resource_config_file.read_text())
    assert resource == {"current_host": socket.gethostname(), "hosts": [socket.gethostname()]}
    channels = json.loads(sm_paths.input_data_config_file.read_text())
    assert channels == {
        "test": {"TrainingInputMode": "File"},
        "train": {"TrainingInputMode": "File"},
        "validation": {"TrainingInputMode": "Pipe"},
    }


def test_existing_config_files_are_left_alone(sm_paths):
    """A job's own inputdataconfig.json (here a Pipe-mode channel) reaches the script as declared."""
    sm_paths.resource_config_file.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    sm_paths.input_data_config_file.write_text(json.dumps({"training": {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO"}}))
    before = (sm_paths.resource_config_file.read_text(), sm_paths.input_data_config_file.read_text())
    script_mode._complete_config(sm_paths)
    assert (sm_paths.resource_config_file.read_text(), sm_paths.input_data_config_file.read_text()) == before


def test_unsupported_launchers_are_named():
    assert set(script_mode._UNSUPPORTED_LAUNCHERS) == {
        "sagemaker_mpi_enabled",
        "sagemaker_distributed_dataparallel_enabled",
        "sagemaker_pytorch_ddp_enabled",
    }
    assert script_mode._truthy(True) and script_mode._truthy("true") and not script_mode._truthy("false")


def test_whole_run_under_another_root(sm_paths, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "entry.py").write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'model': os.environ['SM_MODEL_DIR'], 'channel': os.environ['SM_CHANNEL_TRAINING']},\n"
        "          open(os.path.join(os.environ['SM_OUTPUT_DATA_DIR'], 'seen.json'), 'w'))\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'model.pth'), 'w').write('weights')\n"
    )
    (sm_paths.data_dir / "training").mkdir()
    sm_paths.hyperparameters_file.write_text(
        json.dumps(
            {
                "lr": "0.05",
                "batch-size": "8",
                "sagemaker_program": '"entry.py"',
                "sagemaker_submit_directory": json.dumps(str(source)),
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env["SM_VISION_OPT_ML"] = str(sm_paths.root)
    result = subprocess.run([sys.executable, "-m", "train.cli"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads((sm_paths.output_data_dir / "seen.json").read_text())
    assert seen == {
        "argv": ["--batch-size", "8", "--lr", "0.05"],
        "model": str(sm_paths.model_dir),
        "channel": str(sm_paths.data_dir / "training"),
    }
    assert (sm_paths.model_dir / "model.pth").read_text() == "weights"
    assert (sm_paths.root / "code" / "entry.py").exists()  # the submit directory copied in, as the toolkit does
    assert not sm_paths.failure_file.exists()


def test_whole_run_failing_script_exit_code_and_failure_file(sm_paths, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "entry.py").write_text("raise RuntimeError('no bins today')\n")
    sm_paths.hyperparameters_file.write_text(
        json.dumps({"sagemaker_program": '"entry.py"', "sagemaker_submit_directory": json.dumps(str(source))})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
    env["SM_VISION_OPT_ML"] = str(sm_paths.root)
    result = subprocess.run([sys.executable, "-m", "train.cli"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    failure = sm_paths.failure_file.read_text()
    # The toolkit lays the captured stderr out differently from run to run
    # ("RuntimeError: msg" or "RuntimeError\n msg"): check the content, not the layout.
    assert "ExecuteUserScriptError" in failure and "RuntimeError" in failure and "no bins today" in failure, failure
