"""What the trainer decides from the data before it trains (train.datasets): the first
data log line names the format, the check's report is written and its unreadable images
left out, the class list and single- or multi-label targets, and what Pipe mode refuses
up front."""

import json
import logging

import pytest
import torch

from container import ConfigError
from tests.support import digits as digits_data
from tests.support.files import write_json
from train import datasets, distributed
from train.config import TrainConfig
from train.formats import DataFormatError

ONE_PROCESS = distributed.Process(0, 0, 1, torch.device("cpu"), "algo-1")


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(40)


def lst_channels(sm_paths, digits, multi_label=None):
    for split, found in (("train", digits[:30]), ("validation", digits[30:])):
        paths = digits_data.write_files(sm_paths.data_dir / split, found, split="images")
        digits_data.write_lst(sm_paths.data_dir / f"{split}_lst" / f"{split}.lst", found, paths, multi_label)


def load(sm_paths, process=ONE_PROCESS, **settings):
    return datasets.load(TrainConfig(device="cpu", **settings), sm_paths, process, sm_paths.output_data_dir)


def test_lst_data_is_planned_checked_and_labelled(sm_paths, digits, caplog, monkeypatch):
    monkeypatch.setenv("SM_VISION_OPT_ML", str(sm_paths.root))
    lst_channels(sm_paths, digits)
    with caplog.at_level(logging.INFO, logger="train.datasets"):
        run_data = load(sm_paths)
    assert caplog.messages[0].startswith("data format: train=lst (")  # the first data log line names the format
    assert run_data.classes == [str(i) for i in range(10)] and not run_data.multi_label
    assert [len(run_data.samples[s]) for s in ("train", "validation")] == [30, 10]
    assert run_data.samples["train"][0][1] == digits[0].label
    report = json.loads((sm_paths.output_data_dir / datasets.CHECK_FILE).read_text())
    assert report["fingerprint"] == run_data.summary()["fingerprint"] and report["splits"]["train"]["images"] == 30


def test_multi_hot_lists_train_multi_label_and_multi_label_false_refuses_them(sm_paths, digits):
    lst_channels(sm_paths, digits, multi_label="multi-hot")
    write_json(sm_paths.input_data_config_file, {name: {} for name in ("train", "validation", "train_lst", "validation_lst")})
    run_data = load(sm_paths, label_format="multi-hot")
    assert run_data.multi_label and len(run_data.classes) == 12
    assert run_data.samples["train"][0][1] == digits[0].labels
    with pytest.raises(DataFormatError, match=r"train.lst line 1: 2 labels on a single-label task"):
        load(sm_paths, label_format="multi-hot", multi_label="false")


def test_unreadable_images_are_left_out_until_too_many(sm_paths, digits, tmp_path):
    root = tmp_path / "folders"
    digits_data.write_image_folder(root / "train", digits[:30])
    digits_data.write_image_folder(root / "valid", digits[30:])
    (root / "train/digit_0/broken.png").write_bytes(b"\x89PNG not really")
    run_data = load(sm_paths, train_dir=str(root / "train"), valid_dir=str(root / "valid"))
    assert len(run_data.samples["train"]) == 30 and run_data.summary()["unreadable"] == 1
    for number in range(5):
        (root / f"train/digit_1/broken{number}.png").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"6 of 46 files \(13.0%\) are not readable images, more than max_bad_fraction=0.05"):
        load(sm_paths, train_dir=str(root / "train"), valid_dir=str(root / "valid"))


def test_an_empty_class_folder_and_a_map_objective_on_single_label_data_fail(sm_paths, digits, tmp_path):
    root = tmp_path / "folders"
    digits_data.write_image_folder(root, digits)
    with pytest.raises(ConfigError, match="objective=val_map is for multi-label training"):
        load(sm_paths, train_dir=str(root), objective="val_map")
    (root / "digit_x").mkdir()
    with pytest.raises(ConfigError, match=r"class folder .*digit_x contains no readable images"):
        load(sm_paths, train_dir=str(root))


PIPE = {"TrainingInputMode": "Pipe", "RecordWrapperType": "RecordIO", "ContentType": "application/x-recordio"}


@pytest.mark.parametrize(
    "channels, settings, world, message",
    [
        ({"train": PIPE, "validation": PIPE}, {"sampler": "balanced"}, 1, "sampler=balanced needs File mode"),
        ({"train": PIPE}, {}, 1, "no validation split can be held out of it: add a 'validation' channel"),
        (
            {"train": {**PIPE, "S3DistributionType": "ShardedByS3Key"}, "validation": PIPE},
            {},
            2,
            "ShardedByS3Key on 2 hosts gives the hosts different amounts of data",
        ),
    ],
)
def test_what_pipe_mode_refuses_before_reading(sm_paths, monkeypatch, channels, settings, world, message):
    write_json(sm_paths.input_data_config_file, channels)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    process = distributed.Process(0, 0, world, torch.device("cpu"), "algo-1")
    with pytest.raises(ConfigError, match=message):
        load(sm_paths, process, **settings)


def test_a_validation_class_that_training_lacks_is_named(sm_paths, digits, tmp_path):
    root = tmp_path / "folders"
    digits_data.write_image_folder(root / "train", [d for d in digits if d.label < 5])
    digits_data.write_image_folder(root / "valid", [d for d in digits if d.label >= 5])
    with pytest.raises(DataFormatError, match=r"valid/digit_[5-9]/\d{4}\.png: class 'digit_[5-9]' is not among the training classes"):
        load(sm_paths, train_dir=str(root / "train"), valid_dir=str(root / "valid"))
