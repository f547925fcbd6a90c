"""Checkpoints are plain data, loaded with weights_only=True; resume takes the newest one
that loads, belongs to this run (architecture and class list) and loads into its model."""

import logging
from types import SimpleNamespace

import torch

from train.checkpoint import list_checkpoints, load_latest, resume, write_snapshot
from train.state import Progress

CLASSES = ["cat", "dog"]


def save(directory, epoch, step=0, keep=3, arch="resnet18", classes=CLASSES):
    snapshot = {"arch": arch, "classes": classes, "model": {"w": torch.tensor(epoch)}}
    return write_snapshot(snapshot, directory, epoch, step, keep)


def test_keeps_the_newest_k_and_orders_by_epoch_then_step(tmp_path):
    for epoch, step in [(1, 0), (2, 0), (2, 5), (3, 0)]:
        save(tmp_path, epoch, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-e0003-s00000000.pt", "checkpoint-e0002-s00000005.pt"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_newest_is_skipped(tmp_path, caplog):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:40])
    state = load_latest(tmp_path, "resnet18", CLASSES)
    assert state["model"]["w"].item() == 1
    assert "skipping unreadable checkpoint" in caplog.text


def test_nothing_to_resume(tmp_path):
    assert load_latest(tmp_path / "missing", "resnet18", CLASSES) is None


class Payload:
    """What a planted file in the S3-synced checkpoint folder could hold: unpickling it
    calls open(path, "w"), i.e. runs code as the training job's user."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_is_not_executed_and_an_older_good_checkpoint_is_used(tmp_path, caplog):
    save(tmp_path, 1)
    marker = tmp_path.parent / f"{tmp_path.name}-payload-ran"
    planted = tmp_path / "checkpoint-e0009-s00000000.pt"
    torch.save({"format": "sagemaker-vision-checkpoint", "model": Payload(marker)}, planted)

    with caplog.at_level(logging.WARNING):
        state = load_latest(tmp_path, "resnet18", CLASSES)
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert state["model"]["w"].item() == 1 and state["path"].endswith("checkpoint-e0001-s00000000.pt")
    assert f"skipping unreadable checkpoint {planted}" in caplog.text

    # The plant is real: a loader that unpickles objects would have run it.
    torch.load(planted, weights_only=False)
    assert marker.exists()


def test_a_newer_checkpoint_of_another_run_is_skipped_for_an_older_matching_one(tmp_path, caplog):
    save(tmp_path, 1)
    save(tmp_path, 2, arch="resnet50")
    save(tmp_path, 3, classes=["cat", "dog", "bird"])
    with caplog.at_level(logging.WARNING):
        state = load_latest(tmp_path, "resnet18", CLASSES)
    assert state["model"]["w"].item() == 1
    assert "checkpoint-e0003-s00000000.pt: written for 3 classes" in caplog.text
    assert "checkpoint-e0002-s00000000.pt: written for arch='resnet50'" in caplog.text
    assert load_latest(tmp_path, "resnet18", ["ant", "bee"]) is None


def test_pruning_never_counts_another_runs_newer_checkpoints(tmp_path):
    # Another run's checkpoints at epochs 7 and 8 must not push this run's own out.
    save(tmp_path, 7, classes=["x", "y"])
    save(tmp_path, 8, classes=["x", "y"])
    for epoch in (1, 2, 3):
        save(tmp_path, epoch, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == [f"checkpoint-e000{e}-s00000000.pt" for e in (8, 7, 3, 2)]
    assert load_latest(tmp_path, "resnet18", CLASSES)["model"]["w"].item() == 3


# --- resume loads a candidate into the run before choosing it (issue 22) ------------------


def run_state(directory, inputs: int = 4):
    """What resume reads and fills: a small model with its optimizer, scheduler and scaler."""
    model = torch.nn.Linear(inputs, len(CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return SimpleNamespace(
        process=SimpleNamespace(is_main=True, distributed=False),
        model_without_ddp=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        config=SimpleNamespace(arch="resnet18"),
        classes=CLASSES,
        checkpoint_dir=directory,
        progress=Progress(),
    )


def save_run(run, directory, epoch: int, fill: float) -> None:
    torch.nn.init.constant_(run.model_without_ddp.weight, fill)
    snapshot = {
        "arch": "resnet18",
        "classes": CLASSES,
        "model": run.model_without_ddp.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": Progress(epoch=epoch).to_dict(),
    }
    write_snapshot(snapshot, directory, epoch, 0, keep=5)


def test_a_newer_checkpoint_that_does_not_fit_loses_to_an_older_one_that_does(tmp_path, caplog):
    save_run(run_state(tmp_path), tmp_path, epoch=1, fill=1.0)
    save_run(run_state(tmp_path, inputs=8), tmp_path, epoch=2, fill=2.0)  # same arch and classes, other parameters
    run = run_state(tmp_path)
    with caplog.at_level(logging.WARNING):
        resume(run)
    assert run.progress.epoch == 1 and torch.all(run.model_without_ddp.weight == 1.0)
    assert "checkpoint-e0002-s00000000.pt: it does not load into this run" in caplog.text


def test_a_candidate_that_loads_half_way_is_undone(tmp_path):
    """load_state_dict copies the parameters that fit before it raises: with no candidate
    left the run starts from its own weights, not half of a foreign checkpoint's."""
    other = run_state(tmp_path)
    other.model_without_ddp.bias = torch.nn.Parameter(torch.zeros(5))  # the weight fits, the bias does not
    save_run(other, tmp_path, epoch=3, fill=7.0)
    run = run_state(tmp_path)
    before = run.model_without_ddp.weight.detach().clone()
    resume(run)
    assert run.progress.epoch == 0 and torch.equal(run.model_without_ddp.weight, before)
