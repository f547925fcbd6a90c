import torch

from train.checkpoint import list_checkpoints, load_latest, save_checkpoint


def test_keeps_the_newest_k_and_orders_by_epoch_then_step(tmp_path):
    for epoch, step in [(1, 0), (2, 0), (2, 5), (3, 0)]:
        save_checkpoint({"model": {"w": torch.tensor(epoch)}}, tmp_path, epoch, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-e0003-s00000000.pt", "checkpoint-e0002-s00000005.pt"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_newest_is_skipped(tmp_path, caplog):
    save_checkpoint({"model": {"w": torch.tensor(1)}}, tmp_path, 1, 0, keep=3)
    newest = save_checkpoint({"model": {"w": torch.tensor(2)}}, tmp_path, 2, 0, keep=3)
    newest.write_bytes(newest.read_bytes()[:40])
    state = load_latest(tmp_path)
    assert state["model"]["w"].item() == 1
    assert "skipping unreadable checkpoint" in caplog.text


def test_nothing_to_resume(tmp_path):
    assert load_latest(tmp_path / "missing") is None
