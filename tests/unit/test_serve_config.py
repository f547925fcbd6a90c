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
