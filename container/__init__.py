"""The SageMaker container contract, and nothing else.

Everything that knows about /opt/ml, SageMaker's config files and its environment
variables lives in this package, so `train/` and `serve/` take plain arguments. No torch
here: host-side tools and tests import it freely.
"""

from container.contract import (
    EXIT_CONFIG,
    EXIT_STOPPED,
    Channel,
    ConfigError,
    ResourceConfig,
    SageMakerPaths,
    cpu_count,
    hyperparameters_to_argv,
    read_hyperparameters,
    read_input_data_config,
    read_resource_config,
    read_tensorboard_dir,
    training_job_name,
    write_failure,
)
from container.parse import parse_bool, parse_float, parse_int
from container.serving import ServeConfig

__all__ = [
    "EXIT_CONFIG",
    "EXIT_STOPPED",
    "ConfigError",
    "Channel",
    "ResourceConfig",
    "SageMakerPaths",
    "ServeConfig",
    "parse_bool",
    "parse_float",
    "parse_int",
    "cpu_count",
    "hyperparameters_to_argv",
    "read_hyperparameters",
    "read_input_data_config",
    "read_resource_config",
    "read_tensorboard_dir",
    "training_job_name",
    "write_failure",
    "parse_bool",
    "parse_float",
    "parse_int",
]
