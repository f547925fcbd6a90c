"""DDP and fault tolerance through the real image, on CPU with gloo.

Small on purpose (32-pixel shapes, a few epochs): the CI host has two cores. What is
checked is the behaviour the issue asks for, not accuracy:
- 2 processes in one container: reduced metrics equal a one-process evaluation of the
  saved model on the same split;
- 2 containers on a user-defined network, each with its own resourceconfig.json, train
  one model and only algo-1 writes it;
- SIGTERM mid-run (alone and through the in-image launcher) checkpoints, exits 143 with
  a stop message, and the restarted container resumes and finishes; SIGTERM on one
  host of two stops every rank at the same step;
- a truncated newest checkpoint, and a newer one whose state dict does not fit the
  model, are skipped with a warning;
- a dead or frozen peer fails the job within a bound, with a failure file naming it;
- torchrun as the outer launcher starts the trainer once per process; a worker killed
  once with max_restarts=1 restarts from the last checkpoint and finishes.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.support.containers import mount, opt_ml, wait_exit, wait_for_log
from tests.support.files import TRAINED_MODEL_FILES
from train import synthetic

HOSTS = ("algo-1", "algo-2")
EPOCHS = 2
# Every run shares these: tiny images, one progress line per step, no loader workers
# (the two cores are shared), a checkpoint every 4 steps.
BASE_HYPERPARAMETERS = {
    "epochs": str(EPOCHS),
    "batch_size": "8",
    "image_size": "32",
    "lr": "0.003",
    "num_workers": "0",
    "log_interval": "1",
    "checkpoint_every_steps": "4",
    "keep_checkpoints": "3",
}
CHECKPOINT = re.compile(r"^checkpoint-e(\d{4})-s(\d{8})\.pt$")


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """Odd-sized evaluation splits (33 images), so two ranks get unequal shards and a
    padded or rank-0-only evaluation would show in the metrics."""
    root = tmp_path_factory.mktemp("small_shapes")
    synthetic.make_shapes(root, {"train": 32, "valid": 11, "test": 11}, size=32, seed=1)
    return root


# --- helpers ---------------------------------------------------------------------


def sagemaker_root(base: Path, data: Path, hyperparameters: dict[str, str], current_host: str | None = None) -> Path:
    """An /opt/ml tree as SageMaker lays it out: hyperparameters.json with string
    values, the `training` channel, and resourceconfig.json for multi-host jobs."""
    base.mkdir(parents=True, exist_ok=True)
    root = opt_ml(base)
    shutil.copytree(data, root / "input/data/training")
    assert all(isinstance(v, str) for v in hyperparameters.values())
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    (root / "input/config/inputdataconfig.json").write_text(
        json.dumps({"training": {"TrainingInputMode": "File", "ContentType": "application/x-image"}})
    )
    if current_host is not None:
        resource = {"current_host": current_host, "hosts": list(HOSTS), "network_interface_name": "eth0"}
        (root / "input/config/resourceconfig.json").write_text(json.dumps(resource))
    return root


def start_train(containers, image, root: Path, args=(), **kwargs):
    return containers.run(image, ["train", *args], volumes=mount(root), **kwargs)


def start_hosts(containers, image, tmp_path: Path, data: Path, hyperparameters: dict[str, str]):
    """algo-1 and algo-2 on a fresh user-defined network, reachable by those names as
    on SageMaker. Returns {host: (container, root)}."""
    network = containers.network()
    started = {}
    for host in HOSTS:
        root = sagemaker_root(tmp_path / host, data, hyperparameters, current_host=host)
        endpoint = containers.client.api.create_endpoint_config(aliases=[host])
        container = start_train(containers, image, root, hostname=host, network=network.name, networking_config={network.name: endpoint})
        started[host] = (container, root)
    return started


def checkpoints(root: Path) -> list[tuple[int, int]]:
    """(epochs completed, steps into the next epoch) of each checkpoint, oldest first."""
    found = []
    for path in (root / "checkpoints").iterdir():
        match = CHECKPOINT.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return sorted(found)


def read_metrics(root: Path) -> dict:
    return json.loads((root / "output/data/metrics.json").read_text())


def train_to_completion(containers, image, root: Path, args=(), timeout: float = 300) -> str:
    container = start_train(containers, image, root, args)
    code, logs = wait_exit(container, timeout)
    assert code == 0, logs
    return logs


def stop_mid_epoch(container, root: Path, epoch: int = 2, after_step: int = 5) -> tuple[float, str]:
    """SIGTERM once epoch `epoch` is `after_step` steps in; returns (seconds from the
    signal to the exit, logs) after checking the stop protocol: exit 143, a stop
    message in the failure file, a checkpoint inside that epoch."""
    wait_for_log(container, rf"epoch={epoch} step={after_step}/")
    signalled = time.monotonic()
    container.kill(signal="SIGTERM")
    code, logs = wait_exit(container, timeout=120)
    elapsed = time.monotonic() - signalled
    assert code == 143, logs
    failure = (root / "output/failure").read_text()
    assert failure.startswith("stopped by SIGTERM at epoch 2"), failure
    assert "a restarted job resumes from it" in failure
    saved = checkpoints(root)
    assert saved and saved[-1][0] == epoch - 1 and saved[-1][1] > 0, (saved, logs)
    assert not (root / "model/model.pt").exists()
    return elapsed, logs


def restart_and_finish(container, root: Path) -> str:
    """Start the same (exited) container again: same mounts, same config, as a spot
    restart does. Returns the logs of the second run only."""
    before = len(container.logs().decode(errors="replace"))
    container.start()
    code, logs = wait_exit(container, timeout=300)
    assert code == 0, logs
    assert not (root / "output/failure").exists(), "the restarted run must clear the stale stop message"
    return logs[before:]


IN_IMAGE_EVALUATION = r"""
import json, sys, torch
from pathlib import Path
from train import data, metrics
from train.formats import imagefolder
from vision import models, presets
from vision.artifact import ModelSpec
spec = ModelSpec.load(Path("/opt/ml/model"))
model = models.build_model(spec.arch, spec.num_classes)
model.load_state_dict(torch.load("/opt/ml/model/model.pt", map_location="cpu", weights_only=True))
model.eval()
samples = [(s.source, spec.classes.index(s.labels[0])) for s in imagefolder.read(Path(sys.argv[1]))]
dataset = data.ImageSamples(samples, presets.eval_transform_for(spec))
confusion = torch.zeros((spec.num_classes, spec.num_classes), dtype=torch.int64)
with torch.inference_mode():
    for start in range(0, len(dataset), 8):
        batch = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
        images = torch.stack([image for image, _ in batch])
        targets = torch.tensor([label for _, label in batch])
        metrics.update_confusion(confusion, model(images), targets)
print("RESULT " + json.dumps({"n": int(confusion.sum()), **metrics.summarize(confusion, list(spec.classes))}))
"""


def evaluate_in_one_process(containers, image, root: Path, split: str) -> dict:
    container = containers.run(image, ["python", "-c", IN_IMAGE_EVALUATION, f"/opt/ml/input/data/training/{split}"], volumes=mount(root))
    code, logs = wait_exit(container, timeout=180)
    assert code == 0, logs
    return json.loads(re.search(r"^RESULT (.*)$", logs, re.MULTILINE).group(1))


# --- tests -----------------------------------------------------------------------


def test_two_processes_report_the_global_metrics(image, containers, tmp_path, small_shapes):
    # nproc as a SageMaker hyperparameter (a string), next to the switch users set.
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="2", nproc="2", sagemaker_torch_distributed_enabled="true")
    root = sagemaker_root(tmp_path, small_shapes, hyperparameters)
    logs = train_to_completion(containers, image, root)
    assert "launched 2 processes" in logs and "world size 2" in logs, logs

    final = read_metrics(root)["final"]
    assert final["split"] == "test"
    assert sum(row["support"] for row in final["per_class"].values()) == 33  # every test image once, not one shard
    reference = evaluate_in_one_process(containers, image, root, "test")
    assert reference["n"] == 33
    assert final["acc"] == pytest.approx(reference["acc"], abs=1e-9)
    assert final["macro_f1"] == pytest.approx(reference["macro_f1"], abs=1e-9)
    for name, row in reference["per_class"].items():
        assert final["per_class"][name]["support"] == row["support"]
        assert final["per_class"][name]["f1"] == pytest.approx(row["f1"], abs=1e-9)


def test_two_containers_train_one_model_written_by_algo_1(image, containers, tmp_path, small_shapes):
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="2", batch_size="16", checkpoint_every_steps="0")
    started = start_hosts(containers, image, tmp_path, small_shapes, hyperparameters)
    results = {host: wait_exit(container, timeout=300) for host, (container, _) in started.items()}
    for host, (code, logs) in results.items():
        assert code == 0, f"{host}:\n{logs}"
    leader_logs = results["algo-1"][1]
    assert "node 0 of 2, world size 2, master algo-1" in leader_logs, leader_logs
    assert "node 1 of 2, world size 2, master algo-1" in results["algo-2"][1]

    leader, follower = started["algo-1"][1], started["algo-2"][1]
    assert sorted(p.name for p in (leader / "model").iterdir()) == TRAINED_MODEL_FILES
    assert list((follower / "model").iterdir()) == []
    assert list((follower / "checkpoints").iterdir()) == []
    assert not (follower / "output/data/metrics.json").exists()
    report = read_metrics(leader)
    assert len(report["epochs"]) == 2
    assert report["data"]["train_images"] == 96


def test_sigterm_mid_run_checkpoints_and_restart_matches_uninterrupted_run(image, containers, tmp_path, small_shapes):
    reference_root = sagemaker_root(tmp_path / "reference", small_shapes, BASE_HYPERPARAMETERS)
    train_to_completion(containers, image, reference_root)
    reference = read_metrics(reference_root)

    root = sagemaker_root(tmp_path / "interrupted", small_shapes, BASE_HYPERPARAMETERS)
    container = start_train(containers, image, root)
    elapsed, _ = stop_mid_epoch(container, root)
    assert elapsed < 20, f"SIGTERM to exit took {elapsed:.1f} s"
    epochs_done, step = checkpoints(root)[-1]
    second = restart_and_finish(container, root)
    assert f"resumed at epoch 2 step {step} from /opt/ml/checkpoints/checkpoint-e0001-s{step:08d}.pt" in second, second

    resumed = read_metrics(root)
    assert [row["epoch"] for row in resumed["epochs"]] == list(range(1, EPOCHS + 1))
    # Epoch 1 ran identically before the interruption (same seeds, same data order).
    assert resumed["epochs"][0]["train_loss"] == pytest.approx(reference["epochs"][0]["train_loss"], rel=1e-6)
    assert resumed["epochs"][0]["val_acc"] == reference["epochs"][0]["val_acc"]
    # After it, only the augmentation draws of the resumed part of epoch 2 differ. Its
    # train_loss covers the whole epoch (the sums before the stop travel in the
    # checkpoint), not just the steps after the restart, where the loss is lower.
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(reference["epochs"][-1]["train_loss"], rel=0.25)
    assert resumed["epochs"][-1]["train_acc"] == pytest.approx(reference["epochs"][-1]["train_acc"], abs=0.15)
    assert resumed["epochs"][-1]["val_acc"] == pytest.approx(reference["epochs"][-1]["val_acc"], abs=0.15)
    assert resumed["final"]["acc"] == pytest.approx(reference["final"]["acc"], abs=0.15)
    assert sorted(p.name for p in (root / "model").iterdir()) == TRAINED_MODEL_FILES


def test_sigterm_through_the_launcher_stops_both_processes(image, containers, tmp_path, small_shapes):
    # 96 images, 2 ranks, batch 4: 12 steps per epoch per rank; stopped in epoch 2 of 2.
    # One DataLoader worker per rank: the launcher signals each worker's process group,
    # and the loader processes must outlive the signal until the checkpoint is saved.
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="2", nproc="2", batch_size="4", num_workers="1")
    root = sagemaker_root(tmp_path, small_shapes, hyperparameters)
    container = start_train(containers, image, root)
    elapsed, logs = stop_mid_epoch(container, root)
    assert elapsed < 30, f"SIGTERM to exit took {elapsed:.1f} s"
    # Both workers stopped at the same step: neither died in a collective its peer left.
    assert "training failed" not in logs and "Traceback" not in logs, logs
    assert len(re.findall(r"SIGTERM received", logs)) >= 1, logs

    second = restart_and_finish(container, root)
    assert "resumed at epoch 2 step" in second, second
    assert [row["epoch"] for row in read_metrics(root)["epochs"]] == [1, 2]


def test_sigterm_on_one_host_stops_every_rank_at_the_same_step(image, containers, tmp_path, small_shapes):
    # Spot reclaims and StopTrainingJob reach hosts at different moments; here only
    # algo-2 gets the signal. 48 images per host, batch 4: 12 steps per epoch.
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="50", batch_size="4", checkpoint_every_steps="0")
    started = start_hosts(containers, image, tmp_path, small_shapes, hyperparameters)
    (leader, leader_root), (follower, follower_root) = started["algo-1"], started["algo-2"]
    wait_for_log(leader, r"epoch=1 step=3/")
    follower.kill(signal="SIGTERM")
    results = {host: wait_exit(container, timeout=120) for host, (container, _) in started.items()}
    for host, (code, logs) in results.items():
        assert code == 143, f"{host}:\n{logs}"
        assert "training failed" not in logs, f"{host}:\n{logs}"
    # Rank 0 on algo-1 saved the mid-epoch checkpoint and says why it stopped.
    saved = checkpoints(leader_root)
    assert saved and saved[-1][0] == 0 and saved[-1][1] > 0, (saved, results["algo-1"][1])
    failure = (leader_root / "output/failure").read_text()
    assert failure.startswith("stopped by a stop request on another rank at epoch 1"), failure
    assert list((follower_root / "checkpoints").iterdir()) == []
    follower_failure = (follower_root / "output/failure").read_text()
    assert follower_failure.startswith("stopped by a signal on host algo-2"), follower_failure


# A checkpoint of this run's arch and classes whose classifier head has another shape:
# it reads as plain data and passes the arch and class checks, and only loading it
# into the model can tell.
MISFIT = """
import sys, torch
good, out = sys.argv[1:]
snapshot = torch.load(good, weights_only=True)
head = next(name for name in snapshot["model"] if name.endswith("fc.weight"))
snapshot["model"][head] = torch.zeros(snapshot["model"][head].shape[0], 7)
torch.save(snapshot, out)
"""


def test_unusable_newer_checkpoints_are_skipped(image, containers, tmp_path, small_shapes):
    """A truncated newest checkpoint, and a newer one whose state dict does not fit the
    model (which every restart used to choose, and fail on), both lose to the older good one."""
    root = sagemaker_root(tmp_path, small_shapes, dict(BASE_HYPERPARAMETERS, epochs="1", checkpoint_every_steps="0"))
    train_to_completion(containers, image, root)
    assert checkpoints(root) == [(1, 0)]
    good = root / "checkpoints/checkpoint-e0001-s00000000.pt"
    # What an interrupted S3 sync leaves: the start of a real checkpoint, under a newer name.
    truncated = root / "checkpoints/checkpoint-e0002-s00000000.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    misfit = containers.run(
        image,
        ["python", "-c", MISFIT, "/opt/ml/checkpoints/checkpoint-e0001-s00000000.pt", "/opt/ml/checkpoints/checkpoint-e0003-s00000000.pt"],
        volumes=mount(root),
    )
    assert wait_exit(misfit, 120)[0] == 0

    logs = train_to_completion(containers, image, root, ["--epochs", "2"])
    assert re.search(
        r"WARNING .*skipping checkpoint /opt/ml/checkpoints/checkpoint-e0003-s00000000\.pt: it does not load into this run", logs
    ), logs
    assert re.search(r"WARNING .*skipping unreadable checkpoint /opt/ml/checkpoints/checkpoint-e0002-s00000000\.pt", logs), logs
    assert "resumed at epoch 2 step 0 from /opt/ml/checkpoints/checkpoint-e0001-s00000000.pt" in logs, logs
    assert [row["epoch"] for row in read_metrics(root)["epochs"]] == [1, 2]


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_dead_or_hung_peer_fails_the_job_within_the_timeout(image, containers, tmp_path, small_shapes, how):
    timeout_s, bound_s = 30, 90
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="50", dist_timeout_s=str(timeout_s), checkpoint_every_steps="0")
    started = start_hosts(containers, image, tmp_path, small_shapes, hyperparameters)
    leader, leader_root = started["algo-1"]
    follower = started["algo-2"][0]
    wait_for_log(leader, r"epoch=1 step=3/")
    lost_at = time.monotonic()
    if how == "killed":
        follower.kill()  # SIGKILL: no goodbye from algo-2
    else:
        follower.pause()  # alive but silent: only the collective timeout can notice
    code, logs = wait_exit(leader, timeout=bound_s + 60)
    elapsed = time.monotonic() - lost_at
    assert code not in (0, 143), logs
    assert elapsed < bound_s, f"algo-1 took {elapsed:.0f} s to fail (bound {bound_s} s):\n{logs}"
    failure = (leader_root / "output/failure").read_text()
    assert re.search(r"rank \d+ on host algo-1", failure), failure
    assert not (leader_root / "model/model.pt").exists()


def test_torchrun_starts_the_trainer_once_with_world_size_2(image, containers, tmp_path, small_shapes):
    # An outer launcher (here torchrun itself, as SDK 3's Torchrun driver or a
    # PyTorchJob pod runs it) makes each process one worker: train must not launch more.
    root = sagemaker_root(tmp_path, small_shapes, dict(BASE_HYPERPARAMETERS, epochs="1", checkpoint_every_steps="0"))
    command = ["torchrun", "--nproc_per_node=2", "-m", "train.cli", "--device", "cpu"]
    container = containers.run(image, command, volumes=mount(root))
    code, logs = wait_exit(container, timeout=300)
    assert code == 0, logs
    assert "joined the job: world size 2, rank 0" in logs, logs
    assert "launched" not in logs, logs  # our own launcher never ran inside torchrun's workers
    report = read_metrics(root)
    assert [row["epoch"] for row in report["epochs"]] == [1]
    assert sum(row["support"] for row in report["final"]["per_class"].values()) == 33  # both shards
    assert checkpoints(root) == [(1, 0)]
    assert sorted(p.name for p in (root / "model").iterdir()) == TRAINED_MODEL_FILES


FIND_WORKER = "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -qx LOCAL_RANK={rank} && echo ${{p#/proc/}}; done"


def test_a_worker_killed_once_restarts_with_max_restarts_and_finishes(image, containers, tmp_path, small_shapes):
    # 96 images, 2 ranks, batch 4: 12 steps per epoch, 3 epochs; a checkpoint every 4 steps.
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="3", nproc="2", batch_size="4", max_restarts="1")
    root = sagemaker_root(tmp_path, small_shapes, hyperparameters)
    container = start_train(containers, image, root)
    wait_for_log(container, r"epoch=2 step=6/")
    found = container.exec_run(["sh", "-c", FIND_WORKER.format(rank=1)]).output.decode().split()
    assert len(found) == 1, found
    container.exec_run(["kill", "-9", found[0]])  # a transient fault: no goodbye from rank 1
    code, logs = wait_exit(container, timeout=300)
    assert code == 0, logs
    # The first attempt wrote no checkpoint before epoch 2: a resume means a restart.
    assert re.search(r"resumed at epoch [23] step \d+ from /opt/ml/checkpoints/checkpoint-e000[12]-s\d{8}\.pt", logs), logs
    assert [row["epoch"] for row in read_metrics(root)["epochs"]] == [1, 2, 3]
    assert not (root / "output/failure").exists(), (root / "output/failure").read_text()
    assert sorted(p.name for p in (root / "model").iterdir()) == TRAINED_MODEL_FILES


def test_a_failed_worker_without_restarts_names_itself_in_the_failure_file(image, containers, tmp_path, small_shapes):
    hyperparameters = dict(BASE_HYPERPARAMETERS, epochs="2", nproc="2", batch_size="4")
    root = sagemaker_root(tmp_path, small_shapes, hyperparameters)
    container = start_train(containers, image, root)
    wait_for_log(container, r"epoch=1 step=3/")
    found = container.exec_run(["sh", "-c", FIND_WORKER.format(rank=1)]).output.decode().split()
    container.exec_run(["kill", "-9", found[0]])
    code, logs = wait_exit(container, timeout=180)
    assert code == 137, logs  # the root cause's code: killed by SIGKILL
    failure = (root / "output/failure").read_text()
    assert failure.startswith("rank 1 on host ") and "exit code 137: Signal 9 (SIGKILL)" in failure, failure
