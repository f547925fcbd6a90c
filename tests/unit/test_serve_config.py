"""container.ServeConfig: every serving setting from the environment, flags on top,
strict parsing naming the variable (torch-free)."""

import dataclasses
from pathlib import Path

import pytest

from container import ConfigError, ServeConfig
from container.serving import Machine


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


# --- resolved against the machine (ServeConfig.resolve, the one place) ------------------


def machine(device: str = "cpu", cpus: int = 8, memory_gib: int = 16, processes: int = 1) -> Machine:
    return Machine(device=device, cpus=cpus, memory_bytes=memory_gib << 30, processes=processes)


def test_cpu_defaults_to_micro_batches_of_four_on_single_threaded_forwards():
    config = ServeConfig().resolve(machine(cpus=8))
    assert (config.micro_batching, config.max_batch_size, config.max_batch_delay_ms, config.workers) == (True, 4, 0.0, 4)
    assert machine(cpus=8).forward_threads(config.workers) == 2  # 8 cores shared by 4 concurrent forwards
    assert ServeConfig().resolve(machine(cpus=2)).workers == 2


def test_gpu_defaults_to_larger_batches_that_wait_to_fill():
    config = ServeConfig().resolve(machine(device="cuda"))
    assert (config.micro_batching, config.max_batch_size, config.max_batch_delay_ms, config.workers) == (True, 16, 5.0, 1)
    assert (config.gpu_id, ServeConfig().resolve(machine(device="cuda:3")).gpu_id, ServeConfig().resolve(machine()).gpu_id) == (0, 3, None)


def test_batching_settings_are_the_users_when_given():
    config = ServeConfig.from_env({"SM_VISION_MAX_BATCH_SIZE": "8", "SM_VISION_MAX_BATCH_DELAY_MS": "0"}).resolve(machine(device="cuda"))
    assert (config.max_batch_size, config.max_batch_delay_ms) == (8, 0.0)
    assert not ServeConfig.from_env({"SM_VISION_BATCHING": "off"}).resolve(machine()).micro_batching


def test_nothing_the_machine_decides_is_left_open():
    config = ServeConfig().resolve(machine(memory_gib=10, processes=1))
    assert config.device == "cpu" and config.batching == "on"
    assert config.mme_memory_mb == int((10 << 30) * 0.7) >> 20  # 70% of the container's memory
    assert (config.max_concurrent_transforms, config.batch_strategy) == (config.workers, "MULTI_RECORD")
    # A worker process (several share the machine) runs one forward at a time, on its share of the cores.
    worker = ServeConfig(workers=4).resolve(machine(cpus=2, processes=4))
    assert worker.workers == 1 and worker.max_concurrent_transforms == 1
    assert ServeConfig(mme_memory_mb=70, max_concurrent_transforms=3).resolve(machine()).mme_budget_bytes == 70 << 20


def test_paths_follow_the_opt_ml_root(tmp_path):
    config = ServeConfig.from_env({"SM_VISION_OPT_ML": str(tmp_path)})
    assert (config.model_path, config.models_path) == (tmp_path / "model", tmp_path / "models")
    assert ServeConfig(model_dir="/m").model_path == Path("/m")
    (tmp_path / "code").mkdir()
    submitted = tmp_path / "submitted"
    submitted.mkdir()
    assert ServeConfig(opt_ml=str(tmp_path), submit_directory=f"file://{submitted}").code_dirs() == (submitted, tmp_path / "code")
    assert ServeConfig(opt_ml=str(tmp_path), submit_directory="s3://bucket/sourcedir.tar.gz").code_dirs() == ()


def test_probe_splits_the_cpus_between_processes(monkeypatch):
    from serve import machine as serve_machine

    monkeypatch.setattr(serve_machine, "cpu_count", lambda: 8)
    found = serve_machine.probe(ServeConfig(device="cpu"), processes=2, worker_index=1)
    assert (found.device, found.cpus, found.processes) == ("cpu", 4, 2) and found.memory_bytes > 0
