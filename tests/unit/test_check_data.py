"""train check-data on scikit-learn's digits: planted leakage across splits, duplicates,
unreadable and tiny images, class counts and the fingerprint."""

import json

import pytest

from container import Channel
from tests.support import digits as digits_data
from train import check_data
from train.formats import plan


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(300)


def splits_on_disk(root, digits):
    """train / valid / test class folders of 200 / 50 / 50 distinct digits (the digits set
    itself has no byte-identical images among these)."""
    for split, part in (("train", digits[:200]), ("valid", digits[200:250]), ("test", digits[250:])):
        digits_data.write_image_folder(root / "training" / split, part)
    return {"training": Channel("training", root / "training")}


def run(channels):
    return check_data.check({name: source.read() for name, source in plan(channels).splits().items()})


def test_clean_splits_report_counts_and_no_problems(tmp_path, digits):
    report = run(splits_on_disk(tmp_path, digits))
    assert report.problems() == []
    train = report.splits["train"].to_dict()
    assert train["images"] == 200 and train["classes"] == 10
    expected = {name: sum(1 for d in digits[:200] if d.name == name) for name in digits_data.CLASS_NAMES[:10]}
    assert train["class_counts"] == expected
    assert train["imbalance_ratio"] == round(max(expected.values()) / min(expected.values()), 3)
    assert report.summary()["leakage"] == 0 and len(report.fingerprint) == 64


def test_duplicates_planted_across_splits_are_found(tmp_path, digits):
    channels = splits_on_disk(tmp_path, digits)
    root = tmp_path / "training"
    # Leak: two training digits copied into test, one into validation (new file names).
    for digit, split in ((digits[3], "test"), (digits[17], "test"), (digits[42], "valid")):
        (root / split / digit.name / f"copy_{digit.index}.png").write_bytes(digit.png())
    # A duplicate within train, labelled as another class.
    wrong = "digit_9" if digits[5].label != 9 else "digit_8"
    (root / "train" / wrong / "again.png").write_bytes(digits[5].png())
    report = run(channels)
    assert report.leakage.count == 3
    assert report.leakage_pairs == {"train/test": 2, "train/validation": 1}
    leaked = {entry["image"] for group in report.leakage.examples for entry in group}
    assert f"{digits[3].name}/copy_{digits[3].index}.png" in leaked and f"{digits[42].name}/{digits[42].index:04d}.png" in leaked
    assert report.splits["train"].duplicates.count == 1
    assert report.conflicting_labels.count == 1
    problems = " ".join(report.problems())
    assert "leakage: 3 images in more than one split (train/test: 2, train/validation: 1)" in problems


def test_unreadable_and_tiny_images(tmp_path, digits):
    channels = splits_on_disk(tmp_path, digits)
    root = tmp_path / "training" / "train"
    (root / "digit_0" / "notes.png").write_bytes(b"this is not an image")
    from PIL import Image

    Image.fromarray(digits[0].pixels[:10, :10]).save(root / "digit_0" / "tiny.png")
    truncated = digits[1].png()[:-30]
    (root / "digit_1" / "truncated.png").write_bytes(truncated)
    report = run(channels)
    train = report.splits["train"]
    assert [e["image"] for e in train.unreadable.examples] == ["digit_0/notes.png"]  # the header of the truncated one is fine
    assert train.unreadable_keys == {"digit_0/notes.png"}
    assert train.tiny.examples == [{"image": "digit_0/tiny.png", "size": [10, 10]}]
    decoded = check_data.check({"train": plan(channels).train.read()}, decode=True)
    assert {e["image"] for e in decoded.splits["train"].unreadable.examples} == {"digit_0/notes.png", "digit_1/truncated.png"}


def test_fingerprint_is_stable_and_sees_every_change(tmp_path, digits):
    channels = splits_on_disk(tmp_path, digits)
    first = run(channels).fingerprint
    assert run(channels).fingerprint == first
    again = tmp_path / "again"
    splits_on_disk(again, digits)  # the same data elsewhere: same fingerprint
    assert run({"training": Channel("training", again / "training")}).fingerprint == first
    image = tmp_path / "training" / "train" / digits[0].name / f"{digits[0].index:04d}.png"
    image.write_bytes(digits[1].png())  # edited content
    edited = run(channels).fingerprint
    assert edited != first
    image.rename(image.with_name("renamed.png"))
    assert run(channels).fingerprint not in (first, edited)


def test_ids_with_names_and_empty_classes(tmp_path, digits):
    root = tmp_path / "train"
    for digit in digits[:50]:
        (root / f"{digit.index}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{digit.index}.png").write_bytes(digit.png())
    lines = [digits_data.ground_truth_line(d, f"s3://b/{d.index}.png") for d in digits[:50] if d.label != 4]
    digits_data.write_manifest(root / "m.manifest", lines)
    report = check_data.check({"train": plan({"train": Channel("train", root)}).train.read()})
    counts = report.splits["train"].to_dict()["class_counts"]
    assert "digit_4" not in counts and counts["digit_3"] == sum(1 for d in digits[:50] if d.label == 3)
    assert report.empty_classes["train"] == ["4"]  # no image names id 4, so it keeps its number


def test_command_line_writes_the_report(tmp_path, digits, capsys):
    splits_on_disk(tmp_path, digits)
    root = tmp_path / "training"
    (root / "test" / digits[0].name / "leak.png").write_bytes(digits[0].png())
    output = tmp_path / "out" / "check.json"
    code = check_data.main(
        ["--train-dir", str(root / "train"), "--valid-dir", str(root / "valid"), "--test-dir", str(root / "test"), "--output", str(output)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("data format: train=imagefolder") and "problem: leakage: 1 images" in printed
    report = json.loads(output.read_text())
    assert report["leakage"]["count"] == 1 and report["splits"]["train"]["images"] == 200
    assert check_data.main(["--train-dir", str(root / "train"), "--test-dir", str(root / "test"), "--strict"]) == 1
    assert check_data.main(["--train-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
