"""container.ServeConfig: every serving setting from the environment, flags on top,
strict parsing naming the variable (torch-free)."""

import dataclasses

import pytest

from container import ConfigError, ServeConfig


def test_defaults_and_environment():
    assert ServeConfig.from_env({}) == ServeConfig()
    config = ServeConfig.from_env(
        {
            "SAGEMAKER_BIND_TO_PORT": "9000",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            "SM_VISION_URL_FETCH": "off",
            "SM_VISION_MAX_BATCH_DELAY_MS": "2.5",
            "SAGEMAKER_PROGRAM": "/home/me/code/infer.py",
        }
    )
    assert (config.port, config.workers, config.url_fetch, config.max_batch_delay_ms) == (9000, 2, False, 2.5)
    assert config.program == "/home/me/code/infer.py"
    assert config.max_payload_bytes == 6 * 1024 * 1024


def test_flags_override_the_environment():
    config = ServeConfig.from_env({"SM_VISION_TOP_K": "3", "SM_VISION_BATCHING": "off"}, {"top_k": "7"})
    assert (config.top_k, config.batching) == (7, "off")


@pytest.mark.parametrize(
    "environ, named",
    [
        ({"SM_VISION_URL_FETCH": "flase"}, "SM_VISION_URL_FETCH"),
        ({"SAGEMAKER_MULTI_MODEL": "maybe"}, "SAGEMAKER_MULTI_MODEL"),
        ({"SM_VISION_MAX_IMAGE_PIXELS": "4e7x"}, "SM_VISION_MAX_IMAGE_PIXELS"),
        ({"SM_VISION_BATCHING": "sometimes"}, "SM_VISION_BATCHING"),
        ({"SM_VISION_SERVE_BACKEND": "torchserve"}, "SM_VISION_SERVE_BACKEND"),
        ({"SM_VISION_TOP_K": "0"}, "SM_VISION_TOP_K"),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "0"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
        ({"SM_VISION_URL_TIMEOUT_S": "nan"}, "SM_VISION_URL_TIMEOUT_S"),
    ],
)
def test_bad_values_fail_naming_the_variable(environ, named):
    with pytest.raises(ConfigError, match=named):
        ServeConfig.from_env(environ)


def test_a_bad_flag_names_the_flag():
    with pytest.raises(ConfigError, match="--workers"):
        ServeConfig.from_env({}, {"workers": "two"})


def test_to_env_round_trips():
    config = ServeConfig.from_env({"SAGEMAKER_MULTI_MODEL": "true", "SM_VISION_URL_ALLOW": "10.0.0.0/8", "SM_VISION_TOP_K": "2"})
    assert ServeConfig.from_env(config.to_env()) == config


def test_every_field_documents_its_variable():
    names = [field.metadata["env"] for field in dataclasses.fields(ServeConfig)]
    assert len(names) == len(set(names))
    assert all(field.metadata["help"] for field in dataclasses.fields(ServeConfig))


# --- resolved against the machine (serve.cli.build_settings) ----------------------------


@pytest.fixture
def resolve(monkeypatch, tmp_path):
    """build_settings on a machine with `cpus` cores and the given device, keeping this
    process's torch thread count as it was."""
    import torch

    from container import SageMakerPaths
    from serve import cli

    threads = torch.get_num_threads()

    def settings(environ: dict, cpus: int = 8, device: str = "cpu"):
        monkeypatch.setattr(cli, "cpu_count", lambda: cpus)
        monkeypatch.setattr("vision.devices.select_device", lambda requested: torch.device(device))
        return cli.build_settings(ServeConfig.from_env(environ), SageMakerPaths(tmp_path))

    yield settings
    torch.set_num_threads(threads)


def test_cpu_defaults_to_micro_batches_of_four_on_single_threaded_forwards(resolve):
    import torch

    settings = resolve({}, cpus=8)
    assert (settings.batching, settings.max_batch_size, settings.max_delay_ms, settings.workers) == (True, 4, 0.0, 4)
    assert torch.get_num_threads() == 2  # 8 cores shared by 4 concurrent forwards
    assert resolve({}, cpus=2).workers == 2


def test_gpu_defaults_to_larger_batches_that_wait_to_fill(resolve):
    settings = resolve({}, device="cuda")
    assert (settings.batching, settings.max_batch_size, settings.max_delay_ms, settings.workers) == (True, 16, 5.0, 1)


def test_batching_settings_are_the_users_when_given(resolve):
    settings = resolve({"SM_VISION_MAX_BATCH_SIZE": "8", "SM_VISION_MAX_BATCH_DELAY_MS": "0"}, device="cuda")
    assert (settings.max_batch_size, settings.max_delay_ms) == (8, 0.0)
    assert not resolve({"SM_VISION_BATCHING": "off"}).batching
