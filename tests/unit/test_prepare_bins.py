"""`train prepare-bins`: metadata JSONs -> seeded, stratified ImageFolder split."""

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from train import prepare_bins
from train.synthetic import make_bins


@pytest.fixture
def bins(tmp_path) -> Path:
    raw = tmp_path / "raw"
    make_bins(raw, count=100, size=32, seed=0, max_quantity=6)  # quantities 1-4: 17 images, 5-6: 16
    return raw


def run(raw: Path, out: Path, *extra: str) -> int:
    return prepare_bins.main(["--images", str(raw / "images"), "--metadata", str(raw / "metadata"), "--out", str(out), *extra])


def tree(out: Path) -> dict[str, dict[str, set[str]]]:
    return {split.name: {cls.name: {f.name for f in cls.iterdir()} for cls in sorted(split.iterdir())} for split in sorted(out.iterdir())}


def test_imagefolder_tree_classes_and_stratified_counts(bins, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(bins, out) == 0
    layout = tree(out)
    assert sorted(layout) == ["test", "train", "valid"]
    for split in layout.values():
        assert sorted(split) == ["1", "2", "3", "4", "5"]  # quantity 6 left out by default
    for quantity in "12345":
        counts = {split: len(layout[split][quantity]) for split in layout}
        total = sum(counts.values())
        assert total == sum(
            1 for p in (bins / "metadata").glob("*.json") if json.loads(p.read_text())["EXPECTED_QUANTITY"] == int(quantity)
        )
        assert counts == dict(zip(("train", "valid", "test"), prepare_bins.split_counts(total, (0.8, 0.1, 0.1)), strict=False))
    # Every image is in exactly one split, under its own quantity.
    placed = [(split, cls, name) for split, classes in layout.items() for cls, names in classes.items() for name in names]
    assert len({name for _, _, name in placed}) == len(placed)
    for _, cls, name in placed:
        meta = json.loads((bins / "metadata" / name.replace(".jpg", ".json")).read_text())
        assert str(meta["EXPECTED_QUANTITY"]) == cls
    printed = capsys.readouterr().out
    assert "quantity" in printed and "train" in printed
    total_row = next(line for line in printed.splitlines() if line.startswith("total"))
    # quantities 1-4 have 17 images (13/2/2), quantity 5 has 16 (13/2/1)
    assert total_row.split() == ["total", "65", "10", "9", "84"]
    assert "16 quantity outside 1-5" in printed  # the sixteen images of quantity 6 are reported


def test_split_counts_sum_to_the_class_size_and_follow_the_fractions():
    assert prepare_bins.split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert prepare_bins.split_counts(17, (0.8, 0.1, 0.1)) == [13, 2, 2]
    assert prepare_bins.split_counts(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert prepare_bins.split_counts(3, (0.5, 0.5, 0.0)) == [2, 1, 0]
    for n in range(0, 40):
        assert sum(prepare_bins.split_counts(n, (0.7, 0.2, 0.1))) == n


def test_same_seed_same_split_other_seed_other_split(bins, tmp_path):
    assert run(bins, tmp_path / "a", "--seed", "3") == 0
    assert run(bins, tmp_path / "b", "--seed", "3") == 0
    assert run(bins, tmp_path / "c", "--seed", "4") == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert tree(tmp_path / "a")["test"] != tree(tmp_path / "c")["test"]


def test_bad_metadata_is_counted_and_reported_not_fatal(bins, tmp_path, capsys):
    (bins / "metadata/00000.json").write_text("{broken")
    (bins / "metadata/00001.json").unlink()
    (bins / "metadata/00002.json").write_text(json.dumps({"BIN_FCSKU_DATA": {}}))
    (bins / "metadata/00003.json").write_text(json.dumps({"EXPECTED_QUANTITY": "3"}))  # a string still counts
    out = tmp_path / "out"
    assert run(bins, out, "--quantities", "1-6") == 0
    printed = capsys.readouterr().out
    assert "1 unparseable metadata" in printed
    assert "1 missing metadata" in printed
    assert "1 no EXPECTED_QUANTITY" in printed
    placed = {f.name for f in out.rglob("*.jpg")}
    assert len(placed) == 97
    assert "00003.jpg" in {f.name for f in out.glob("*/3/*.jpg")}
    assert not {"00000.jpg", "00001.jpg", "00002.jpg"} & placed


def test_quantities_and_split_options(bins, tmp_path):
    out = tmp_path / "out"
    assert run(bins, out, "--quantities", "2,4", "--split", "0.5,0.5,0") == 0
    layout = tree(out)
    assert sorted(layout["train"]) == ["2", "4"]
    assert "test" not in layout or all(not names for names in layout["test"].values())
    assert prepare_bins.parse_quantities("0-2,7") == [0, 1, 2, 7]
    for bad in ("x", "5-1", "-1"):
        with pytest.raises(SystemExit):
            run(bins, tmp_path / "bad", "--quantities", bad)
    for bad in ("0.8,0.1", "0.8,0.3,0.1", "a,b,c"):
        with pytest.raises(SystemExit):
            run(bins, tmp_path / "bad", "--split", bad)


def test_hard_links_by_default_and_copies_or_symlinks_on_request(bins, tmp_path):
    source = bins / "images/00004.jpg"
    assert run(bins, tmp_path / "hard") == 0
    linked = next((tmp_path / "hard").rglob("00004.jpg"))
    assert os.path.samefile(linked, source)
    assert run(bins, tmp_path / "copy", "--link", "copy") == 0
    copied = next((tmp_path / "copy").rglob("00004.jpg"))
    assert not os.path.samefile(copied, source) and copied.read_bytes() == source.read_bytes()
    assert run(bins, tmp_path / "sym", "--link", "symlink") == 0
    symlinked = next((tmp_path / "sym").rglob("00004.jpg"))
    assert symlinked.is_symlink() and os.path.samefile(symlinked, source)


def test_hardlink_falls_back_to_copy_across_filesystems(bins, tmp_path, monkeypatch, capsys):
    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(prepare_bins.os, "link", cross_device)
    assert run(bins, tmp_path / "out") == 0
    placed = list((tmp_path / "out").rglob("*.jpg"))
    assert placed and all(not p.is_symlink() and p.stat().st_nlink == 1 for p in placed)
    assert "84 copy" in capsys.readouterr().out


def test_refuses_a_filled_output_and_missing_inputs(bins, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(bins, out) == 0
    before = Counter(p.parent.name for p in out.rglob("*.jpg"))
    assert run(bins, out) == 2  # a second run would mix two splits
    assert Counter(p.parent.name for p in out.rglob("*.jpg")) == before
    assert "already has files" in capsys.readouterr().err
    assert prepare_bins.main(["--images", str(tmp_path / "nope"), "--metadata", str(bins / "metadata"), "--out", str(tmp_path / "o2")]) == 2
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "metadata").mkdir()
    assert run(empty, tmp_path / "o3") == 2
    assert "none of the 0 images" in capsys.readouterr().err


def test_reached_through_train_cli(bins, tmp_path):
    from train import cli

    out = tmp_path / "out"
    assert cli.main(["prepare-bins", "--images", str(bins / "images"), "--metadata", str(bins / "metadata"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "valid"]
