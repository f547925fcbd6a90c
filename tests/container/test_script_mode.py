"""Script mode through the real image: `docker run IMAGE train` with the hyperparameters
the SageMaker SDK writes for entry_point=/source_dir=, as in AWS's PyTorch images
(docs/script-mode.md): user flags verbatim, SM_* variables, channels, requirements.txt installed
first, the model in SM_MODEL_DIR, and a failing script reported in the failure file."""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
import zipfile
from pathlib import Path

from tests.support.containers import mount, opt_ml, wait_exit

# The user's script, written the way the COMPAT projects write theirs: environment
# variables read with os.environ[...] while building the parser (a missing one crashes).
USER_SCRIPT = textwrap.dedent(
    """
    import argparse, json, os, sys

    import torch
    import smv_testpkg  # installed from requirements.txt before this script runs

    from helper import describe  # a second module of the source dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--test-batch-size", type=int)
    parser.add_argument("--model_name", type=str)
    parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
    parser.add_argument("--output-data-dir", default=os.environ["SM_OUTPUT_DATA_DIR"])
    parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAINING"])
    parser.add_argument("--valid", default=os.environ["SM_CHANNEL_VALID"])
    args = parser.parse_args()

    names = ["SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_CHANNEL_TRAINING", "SM_CHANNEL_VALID",
             "SM_HOSTS", "SM_CURRENT_HOST", "SM_NUM_GPUS", "SM_HPS", "SM_CHANNELS",
             "SM_USER_ARGS", "MASTER_ADDR", "MASTER_PORT"]
    seen = {
        "argv": sys.argv[1:],
        "env": {name: os.environ.get(name) for name in names},
        "train_files": sorted(os.listdir(args.train)),
        "package": smv_testpkg.VALUE,
        "helper": describe(),
        "cwd": os.getcwd(),
    }
    os.makedirs(args.output_data_dir, exist_ok=True)
    with open(os.path.join(args.output_data_dir, "seen.json"), "w") as f:
        json.dump(seen, f)
    model = torch.nn.Linear(4, 2)
    torch.save(model.state_dict(), os.path.join(args.model_dir, "model.pth"))
    print("user script done")
    """
)

FAILING_SCRIPT = textwrap.dedent(
    """
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float)
    args = parser.parse_args()
    raise ValueError(f"learning rate {args.learning_rate} is too high for this bin")
    """
)


def sdk_hyperparameters(program: str, **user: str) -> dict[str, str]:
    """hyperparameters.json as the SDK writes it: every value JSON-encoded to a string."""
    hps = {key: json.dumps(value) for key, value in user.items()}
    hps.update(
        sagemaker_program=json.dumps(program),
        sagemaker_submit_directory=json.dumps("/opt/ml/code"),
        sagemaker_container_log_level="20",
        sagemaker_job_name=json.dumps("script-mode-test"),
        sagemaker_region=json.dumps("us-east-1"),
    )
    return hps


def local_wheel(folder: Path) -> str:
    """A tiny pure wheel, so requirements.txt installs something with no network."""
    name = "smv_testpkg-1.0-py3-none-any.whl"
    files = {
        "smv_testpkg/__init__.py": b"VALUE = 42\n",
        "smv_testpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: smv-testpkg\nVersion: 1.0\n",
        "smv_testpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append("smv_testpkg-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(folder / name, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr("smv_testpkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return name


def write_job(root: Path, script: str, hyperparameters: dict[str, str], sagemaker_config: bool = True) -> None:
    code = root / "code"
    code.mkdir()
    (code / "train_bins.py").write_text(script)
    (code / "helper.py").write_text("def describe():\n    return 'helper imported'\n")
    wheel = local_wheel(code)
    (code / "requirements.txt").write_text(f"# installed before the script runs; no network needed\n--no-index\n./{wheel}\n")
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    for channel in ("training", "valid"):
        (root / "input/data" / channel).mkdir(parents=True)
        (root / "input/data" / channel / "part-0.txt").write_text(channel)
    if sagemaker_config:  # what SageMaker (and the SDK's local mode) writes
        (root / "input/config/resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
        )
        (root / "input/config/inputdataconfig.json").write_text(
            json.dumps({name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in ("training", "valid")})
        )


USER_HPS = {"learning_rate": 0.01, "batch_size": 32, "epochs": 2, "test-batch-size": 100, "model_name": "resnet50"}


def test_user_script_gets_flags_env_channels_and_writes_its_model(image, containers, tmp_path):
    root = opt_ml(tmp_path)
    write_job(root, USER_SCRIPT, sdk_hyperparameters("train_bins.py", **USER_HPS))
    container = containers.run(image, ["train"], volumes=mount(root), hostname="algo-1")
    code, logs = wait_exit(container, timeout=600)
    assert code == 0, logs
    assert "user script done" in logs
    assert not (root / "output/failure").exists(), (root / "output/failure").read_text()

    seen = json.loads((root / "output/data/seen.json").read_text())
    # Flags verbatim, sorted by name as the toolkit passes them; no sagemaker_* keys.
    assert seen["argv"] == [
        "--batch_size",
        "32",
        "--epochs",
        "2",
        "--learning_rate",
        "0.01",
        "--model_name",
        "resnet50",
        "--test-batch-size",
        "100",
    ]
    env = seen["env"]
    assert env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert env["SM_OUTPUT_DATA_DIR"] == "/opt/ml/output/data"
    assert env["SM_CHANNEL_TRAINING"] == "/opt/ml/input/data/training"
    assert env["SM_CHANNEL_VALID"] == "/opt/ml/input/data/valid"
    assert json.loads(env["SM_CHANNELS"]) == ["training", "valid"]
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"]
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_NUM_GPUS"] == "0"  # no GPU given to the container
    assert json.loads(env["SM_HPS"]) == USER_HPS
    assert env["MASTER_ADDR"] == "algo-1" and env["MASTER_PORT"] == "7777"
    assert seen["train_files"] == ["part-0.txt"]
    assert seen["package"] == 42 and seen["helper"] == "helper imported"
    assert seen["cwd"] == "/opt/ml/code"

    model = root / "model/model.pth"
    assert model.read_bytes()[:2] == b"PK"  # torch.save's zip format


def test_plain_docker_run_without_sagemaker_config_files(image, containers, tmp_path):
    """EC2 / local docker: only hyperparameters.json and channel folders are mounted."""
    root = opt_ml(tmp_path)
    write_job(root, USER_SCRIPT, sdk_hyperparameters("train_bins.py", **USER_HPS), sagemaker_config=False)
    container = containers.run(image, ["train"], volumes=mount(root))
    code, logs = wait_exit(container, timeout=600)
    assert code == 0, logs
    seen = json.loads((root / "output/data/seen.json").read_text())
    assert json.loads(seen["env"]["SM_CHANNELS"]) == ["training", "valid"]
    assert seen["env"]["SM_CHANNEL_VALID"] == "/opt/ml/input/data/valid"
    hosts = json.loads(seen["env"]["SM_HOSTS"])
    assert hosts == [seen["env"]["SM_CURRENT_HOST"]]
    assert (root / "model/model.pth").stat().st_size > 0


def test_failing_script_exits_non_zero_with_its_error_in_the_failure_file(image, containers, tmp_path):
    root = opt_ml(tmp_path)
    write_job(root, FAILING_SCRIPT, sdk_hyperparameters("train_bins.py", learning_rate=0.5), sagemaker_config=True)
    container = containers.run(image, ["train"], volumes=mount(root), hostname="algo-1")
    code, logs = wait_exit(container, timeout=600)
    assert code != 0, logs
    failure = (root / "output/failure").read_text()
    assert "ValueError" in failure and "learning rate 0.5 is too high" in failure, failure


def test_missing_entry_point_is_reported(image, containers, tmp_path):
    root = opt_ml(tmp_path)
    write_job(root, USER_SCRIPT, sdk_hyperparameters("no_such_script.py", **USER_HPS))
    container = containers.run(image, ["train"], volumes=mount(root), hostname="algo-1")
    code, logs = wait_exit(container, timeout=600)
    assert code != 0, logs
    assert (root / "output/failure").read_text().strip(), logs


def test_smdebug_import_explains_itself(image, containers):
    """Scripts that create an smdebug hook get the reason and the fix, as an ImportError
    (so `try: import smdebug / except ImportError` still works)."""
    script = "try:\n    import smdebug.pytorch\nexcept ImportError as err:\n    print('IMPORT-ERROR:', err)\n"
    container = containers.run(image, ["python", "-c", script])
    code, logs = wait_exit(container, timeout=120)
    assert code == 0, logs
    assert "IMPORT-ERROR: smdebug (SageMaker Debugger) is not installed" in logs
    assert "numpy" in logs and "remove the debugger hook" in logs
