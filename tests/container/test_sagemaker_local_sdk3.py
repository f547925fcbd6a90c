"""The real image through SageMaker Python SDK 3's local container mode (ModelTrainer
with Mode.LOCAL_CONTAINER), the way a current notebook drives it:

- the built-in trainer on two hosts with hyperparameters only: SDK 3's compose file
  starts the container with no command (2.x passed `train`), so the image must
  recognise a training container by its config files;
- a `source_code` script: SDK 3 replaces the entrypoint with its bash driver
  (needs bash, python3 and pip on PATH);
- `Torchrun(process_count_per_node=2)`: the driver runs torchrun on the user's script;
- SDK 3 tuning's path: no source_code, the image's own `train` runs the script named
  by sagemaker_program / sagemaker_submit_directory.

Runs in the main test venv (requirements-test.txt: SDK 3, the tools' SDK). Each test
checks every host's own exit code (compose stops at the first exit) and the
model.tar.gz the SDK packs. Containers are found by their compose project (the local root's folder name)
and removed afterwards, also on failure.
"""

from __future__ import annotations

import json
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest
from sagemaker.core.training.configs import Compute, InputData, SourceCode
from sagemaker.train.distributed import Torchrun
from sagemaker.train.model_trainer import Mode, ModelTrainer

from tests.support.sdk_local import LOCAL_ROLE
from train import synthetic

pytestmark = pytest.mark.container

HPS = {"epochs": 1, "image-size": 64, "batch-size": 8, "num-workers": 0, "lr": 0.003}


@pytest.fixture
def local_root(sdk_local_mode, docker_client, tmp_path):
    """The ModelTrainer's local_container_root; its folder name is the compose project."""
    root = tmp_path / f"smv3{uuid.uuid4().hex[:10]}"
    root.mkdir()
    yield root
    for container in project_containers(docker_client, root):
        container.remove(force=True)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "shapes"
    synthetic.make_shapes(data, {"train": 16, "valid": 6, "test": 6}, size=64, seed=1)
    return data


def project_containers(docker_client, root: Path) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={root.name}"})


def host_logs(docker_client, root: Path, count: int) -> dict[str, str]:
    """{algo-N: log} after checking that each host's own container exited 0."""
    containers = project_containers(docker_client, root)
    assert len(containers) == count, [c.name for c in containers]
    logs = {}
    for container in containers:
        host = container.labels["com.docker.compose.service"]
        logs[host] = container.logs().decode(errors="replace")
        assert container.attrs["State"]["ExitCode"] == 0, f"{host} failed:\n{logs[host][-3000:]}"
    return logs


def trainer(image: str, root: Path, count: int = 1, **kwargs) -> ModelTrainer:
    return ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=image,
        role=LOCAL_ROLE,
        compute=Compute(instance_type="local_cpu", instance_count=count),
        local_container_root=str(root),
        base_job_name="smv-sdk3",
        **kwargs,
    )


def model_files(root: Path) -> dict[str, bytes]:
    with tarfile.open(root / "compressed_artifacts" / "model.tar.gz") as archive:
        return {Path(m.name).name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def test_builtin_trainer_on_two_hosts_without_a_command(image, docker_client, local_root, shapes):
    job = trainer(image, local_root, count=2, hyperparameters=HPS)
    job.train(input_data_config=[InputData(channel_name="training", data_source=str(shapes))], wait=True, logs=False)

    logs = host_logs(docker_client, local_root, 2)
    assert set(logs) == {"algo-1", "algo-2"}
    for host, log in logs.items():
        assert "world size 2" in log, f"{host} did not join the 2-host job:\n{log[-3000:]}"
        assert "sagemaker-vision: PyTorch image classification" not in log, f"{host} printed the usage text"
    assert "val_macro_f1=" in logs["algo-1"] and "test_macro_f1=" in logs["algo-1"]
    files = model_files(local_root)
    assert {"model.pt", "model_spec.json"} <= set(files), sorted(files)
    spec = json.loads(files["model_spec.json"])
    assert spec["classes"] == sorted(synthetic.SHAPE_CLASSES), spec


SCRIPT = textwrap.dedent(
    """
    import json, os, pathlib, sys
    import torch

    model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
    data = pathlib.Path(os.environ["SM_CHANNEL_TRAINING"])
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        total = torch.tensor([rank + 1.0])
        dist.all_reduce(total)
        world = dist.get_world_size()
    else:
        total = torch.tensor([1.0])
    if rank == 0:
        torch.save({"weight": torch.ones(2)}, model_dir / "model.pth")
        (model_dir / "run.json").write_text(json.dumps({
            "world_size": world,
            "rank_sum": total.item(),
            "args": sys.argv[1:],
            "train_images": sum(1 for _ in (data / "train").rglob("*.png")),
        }))
    if world > 1:
        dist.destroy_process_group()  # as torch asks: without it gloo's threads can abort the exit
    print(f"script rank {rank} of {world} done", flush=True)
    """
)


@pytest.fixture
def script_dir(tmp_path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(SCRIPT)
    return code


def test_source_code_script(image, docker_client, local_root, shapes, script_dir):
    job = trainer(
        image,
        local_root,
        source_code=SourceCode(source_dir=str(script_dir), entry_script="train.py"),
        hyperparameters={"epochs": 3, "learning_rate": 0.01},
    )
    job.train(input_data_config=[InputData(channel_name="training", data_source=str(shapes))], wait=True, logs=False)

    logs = host_logs(docker_client, local_root, 1)
    assert "script rank 0 of 1 done" in logs["algo-1"], logs["algo-1"][-3000:]
    files = model_files(local_root)
    assert "model.pth" in files, sorted(files)
    run = json.loads(files["run.json"])
    assert run["world_size"] == 1 and run["train_images"] == 3 * 16, run
    # SDK 3's driver passes hyperparameters as flags, names as the user wrote them
    assert "--learning_rate" in run["args"] and "--epochs" in run["args"], run


def test_torchrun_two_processes(image, docker_client, local_root, shapes, script_dir):
    job = trainer(
        image,
        local_root,
        source_code=SourceCode(source_dir=str(script_dir), entry_script="train.py"),
        distributed=Torchrun(process_count_per_node=2),
    )
    job.train(input_data_config=[InputData(channel_name="training", data_source=str(shapes))], wait=True, logs=False)

    log = host_logs(docker_client, local_root, 1)["algo-1"]
    assert "script rank 0 of 2 done" in log and "script rank 1 of 2 done" in log, log[-3000:]
    run = json.loads(model_files(local_root)["run.json"])
    assert run["world_size"] == 2 and run["rank_sum"] == 3.0, run


def test_tuning_path_runs_the_script_through_the_images_train(image, docker_client, local_root, shapes, script_dir):
    """SDK 3 tuning cannot replace the entrypoint: the image's own `train` must run the
    script that sagemaker_program / sagemaker_submit_directory name."""
    job = trainer(
        image,
        local_root,
        hyperparameters={"sagemaker_program": "train.py", "sagemaker_submit_directory": script_dir.as_uri(), "epochs": 2},
    )
    job.train(input_data_config=[InputData(channel_name="training", data_source=str(shapes))], wait=True, logs=False)

    logs = host_logs(docker_client, local_root, 1)
    assert "script rank 0 of 1 done" in logs["algo-1"], logs["algo-1"][-3000:]
    run = json.loads(model_files(local_root)["run.json"])
    assert run["args"] == ["--epochs", "2"], run


def test_cli_train_local_runs_sdk3_local_container_mode(image, docker_client, local_root, shapes, tmp_path):
    """`smvision-aws train --local` with SDK 3 installed: the same ModelTrainer path,
    every host checked, model.tar.gz copied to --output-path, containers removed."""
    from smvision_aws import cli
    from smvision_aws.commands.training import cmd_train

    out = tmp_path / "out"
    args = cli.get_args_parser().parse_args(
        ["train", "--local", "--image", image, "--instance-count", "2", "--channel", f"training={shapes.as_uri()}"]
        + ["--output-path", out.as_uri(), "--job-name", "smv-cli-sdk3"]
        + [arg for name, value in HPS.items() for arg in ("--hp", f"{name}={value}")]
    )
    before = {c.id for c in docker_client.containers.list(all=True)}
    result = cmd_train(args)

    assert result["hosts"] == {"algo-1": 0, "algo-2": 0}, result
    assert result["model_data"] == (out / "smv-cli-sdk3" / "model.tar.gz").as_uri()
    with tarfile.open(out / "smv-cli-sdk3" / "model.tar.gz") as archive:
        assert {"model.pt", "model_spec.json"} <= {Path(n).name for n in archive.getnames()}
    left = [c.name for c in docker_client.containers.list(all=True) if c.id not in before and c.attrs["Config"]["Image"] == image]
    assert left == [], f"local containers left behind: {left}"


def test_cli_tune_local_runs_one_trial_of_the_search_space(image, docker_client, local_root, shapes, tmp_path):
    """`smvision-aws tune --local`: one sampled point of the tuning space (local mode has
    no tuning service) trained through the same local container mode, containers removed."""
    from smvision_aws import cli, tuning
    from smvision_aws.commands.training import cmd_tune

    args = cli.get_args_parser().parse_args(
        ["tune", "--local", "--image", image, "--channel", f"training={shapes.as_uri()}", "--output-path", (tmp_path / "out").as_uri()]
        + ["--hp", "epochs=1", "--hp", "image-size=64", "--hp", "num-workers=0", "--seed", "3"]
    )
    before = {c.id for c in docker_client.containers.list(all=True)}
    result = cmd_tune(args)

    assert result["hyperparameters"] == tuning.sample(seed=3) and result["hosts"] == {"algo-1": 0}, result
    with tarfile.open(Path(result["model_data"].removeprefix("file://"))) as archive:
        assert "model_spec.json" in {Path(n).name for n in archive.getnames()}
    left = [c.name for c in docker_client.containers.list(all=True) if c.id not in before and c.attrs["Config"]["Image"] == image]
    assert left == [], f"local containers left behind: {left}"
