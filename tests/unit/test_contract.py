import pytest

from container import (
    ConfigError,
    SageMakerPaths,
    ServeConfig,
    hyperparameters_to_argv,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    write_failure,
)
from container.contract import FAILURE_REASON_LIMIT
from tests.support.files import write_json


def test_paths_follow_one_root_from_env():
    paths = SageMakerPaths.from_env({"SM_VISION_OPT_ML": "/tmp/x"})
    assert str(paths.hyperparameters_file) == "/tmp/x/input/config/hyperparameters.json"
    assert str(paths.channel_dir("training")) == "/tmp/x/input/data/training"
    assert str(paths.failure_file) == "/tmp/x/output/failure"
    assert str(paths.checkpoint_dir) == "/tmp/x/checkpoints"
    assert str(SageMakerPaths.from_env({}).model_dir) == "/opt/ml/model"


def test_hyperparameters_are_strings_and_sdk_quoting_is_undone(sm_paths):
    write_json(sm_paths.hyperparameters_file, {"epochs": "5", "sagemaker_program": '"train.py"', "lr": 0.1, "flag": True})
    hps = read_hyperparameters(sm_paths)
    assert hps == {"epochs": "5", "sagemaker_program": "train.py", "lr": "0.1", "flag": "true"}


def test_missing_hyperparameters_file_means_none(sm_paths):
    assert read_hyperparameters(sm_paths) == {}


def test_unreadable_hyperparameters_name_the_file(sm_paths):
    sm_paths.hyperparameters_file.write_text("{not json")
    with pytest.raises(ConfigError, match="hyperparameters.json.*not valid JSON"):
        read_hyperparameters(sm_paths)


def test_argv_keeps_names_verbatim_and_drops_sagemaker_keys():
    argv = hyperparameters_to_argv({"learning_rate": "0.01", "batch-size": "8", "sagemaker_region": "us-east-1"})
    assert argv == ["--learning_rate", "0.01", "--batch-size", "8"]


def test_channels_from_inputdataconfig_or_folders(sm_paths):
    (sm_paths.data_dir / "train").mkdir()
    (sm_paths.data_dir / "test").mkdir()
    channels = read_input_data_config(sm_paths)
    assert sorted(channels) == ["test", "train"]
    write_json(sm_paths.input_data_config_file, {"training": {"ContentType": "application/x-image", "TrainingInputMode": "File"}})
    channels = read_input_data_config(sm_paths)
    assert list(channels) == ["training"]
    assert channels["training"].path == sm_paths.channel_dir("training")
    assert channels["training"].content_type == "application/x-image"


def test_resource_config_master_is_first_sorted_host(sm_paths):
    write_json(sm_paths.resource_config_file, {"current_host": "algo-1", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"})
    resource = read_resource_config(sm_paths)
    assert resource.master_host == "algo-1"
    assert resource.host_rank == 0
    assert resource.network_interface_name == "eth0"


def test_resource_config_errors_name_the_field(sm_paths):
    write_json(sm_paths.resource_config_file, {"hosts": ["algo-1"]})
    with pytest.raises(ConfigError, match="current_host"):
        read_resource_config(sm_paths)
    write_json(sm_paths.resource_config_file, {"current_host": "algo-3", "hosts": ["algo-1"]})
    with pytest.raises(ConfigError, match="algo-3"):
        read_resource_config(sm_paths)


def test_failure_file_is_written_and_truncated(sm_paths):
    write_failure(sm_paths, "x" * 5000)
    text = sm_paths.failure_file.read_text()
    assert len(text.strip()) == FAILURE_REASON_LIMIT
    write_failure(sm_paths, "ConfigError: batch_size=0")
    assert sm_paths.failure_file.read_text() == "ConfigError: batch_size=0\n"


def test_serving_env_defaults_and_overrides():
    assert ServeConfig.from_env({}).port == 8080
    env = ServeConfig.from_env(
        {
            "SAGEMAKER_BIND_TO_PORT": "9000",
            "SAGEMAKER_MULTI_MODEL": "TRUE",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
            "SAGEMAKER_PROGRAM": "infer.py",
        }
    )
    assert (env.port, env.multi_model, env.workers, env.program) == (9000, True, 3, "infer.py")


@pytest.mark.parametrize(
    "environ, field",
    [
        ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT"),
        ({"SAGEMAKER_BIND_TO_PORT": "70000"}, "SAGEMAKER_BIND_TO_PORT"),
        ({"SAGEMAKER_MULTI_MODEL": "maybe"}, "SAGEMAKER_MULTI_MODEL"),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "SAGEMAKER_MODEL_SERVER_WORKERS"),
    ],
)
def test_serving_env_errors_name_the_variable(environ, field):
    with pytest.raises(ConfigError, match=field):
        ServeConfig.from_env(environ)
