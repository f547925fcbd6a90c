from pathlib import Path

import pytest
from PIL import Image

from container import Channel, ConfigError
from train import data
from train.synthetic import make_shapes


def channel(root: Path, name: str) -> Channel:
    (root / name).mkdir(parents=True, exist_ok=True)
    return Channel(name, root / name)


def test_training_channel_with_split_folders(tmp_path):
    root = channel(tmp_path, "training").path
    for split in ("train", "validation", "test"):
        (root / split).mkdir()
    splits = data.find_split_dirs({"training": Channel("training", root)})
    assert (splits.train.name, splits.valid.name, splits.test.name) == ("train", "validation", "test")


def test_separate_channels_as_sagemaker_users_name_them(tmp_path):
    channels = {name: channel(tmp_path, name) for name in ("train", "valid", "test")}
    splits = data.find_split_dirs(channels)
    assert splits == data.SplitDirs(tmp_path / "train", tmp_path / "valid", tmp_path / "test")


def test_plain_class_tree_is_split_later(tmp_path):
    root = channel(tmp_path, "training").path
    (root / "cat").mkdir()
    splits = data.find_split_dirs({"training": Channel("training", root)})
    assert splits == data.SplitDirs(root, None, None)


def test_missing_channel_lists_what_exists(tmp_path):
    with pytest.raises(ConfigError, match="no training data.*channels found: other"):
        data.find_split_dirs({"other": channel(tmp_path, "other")})


def test_scan_skips_unreadable_files_and_orders_classes(tmp_path):
    make_shapes(tmp_path, {"train": 3}, size=16)
    root = tmp_path / "train"
    (root / "red_circle" / "broken.jpg").write_bytes(b"not an image")
    (root / "red_circle" / "notes.txt").write_text("hello")
    classes, samples, report = data.scan_image_folder(root)
    assert classes == ["blue_triangle", "green_square", "red_circle"]
    assert len(samples) == 9
    assert sorted(Path(p).name for p in report.bad) == ["broken.jpg", "notes.txt"]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    make_shapes(tmp_path, {"train": 2}, size=16)
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(ConfigError, match="empty_class contains no readable images"):
        data.scan_image_folder(tmp_path / "train")


def test_validation_classes_must_exist_in_training(tmp_path):
    make_shapes(tmp_path, {"valid": 2}, size=16)
    with pytest.raises(ConfigError, match="classes the training split lacks"):
        data.scan_image_folder(tmp_path / "valid", ["red_circle"])


def test_holdout_split_is_deterministic_and_stratified():
    samples = [(f"{label}_{i}.png", label) for label in range(3) for i in range(20)]
    train_a, valid_a = data.holdout_split(samples, 0.25, seed=1)
    train_b, valid_b = data.holdout_split(list(reversed(samples)), 0.25, seed=1)
    assert valid_a == valid_b and train_a == train_b
    assert [sum(1 for _, label in valid_a if label == k) for k in range(3)] == [5, 5, 5]
    assert not set(train_a) & set(valid_a)


def test_shard_sampler_sees_every_sample_once_for_evaluation():
    shards = [list(data.ShardSampler(10, rank, 3, seed=0, shuffle=False, pad=False)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))


def test_shard_sampler_pads_training_shards_to_equal_length_and_resumes():
    samplers = [data.ShardSampler(10, rank, 3, seed=0, shuffle=True, pad=True) for rank in range(3)]
    for sampler in samplers:
        sampler.set_epoch(4)
    shards = [list(s) for s in samplers]
    assert {len(s) for s in shards} == {4}
    assert set(i for s in shards for i in s) == set(range(10))
    samplers[0].set_epoch(4, skip=2)
    assert list(samplers[0]) == shards[0][2:]
    samplers[0].set_epoch(5)
    assert list(samplers[0]) != shards[0]  # reshuffled per epoch


def test_truncated_image_is_replaced_not_fatal(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good)
    bad = tmp_path / "bad.jpg"
    Image.new("RGB", (64, 64), (0, 255, 0)).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    dataset = data.ImageSamples([(str(bad), 0), (str(good), 1)], transform=lambda image: image.size)
    assert dataset[0] == ((8, 8), 1)
