"""Which reader runs: inputdataconfig.json's input mode, record wrapper and content type,
then the files in the channel; the log line naming the choice."""

import json

import pytest

from container import Channel, ConfigError, read_input_data_config
from tests.support import digits as digits_data
from train.formats import FormatOptions, plan
from train.formats.select import parse_content_type


def write_config(sm_paths, config):
    sm_paths.input_data_config_file.write_text(json.dumps(config))


def test_input_data_config_gives_mode_wrapper_and_distribution(sm_paths):
    write_config(
        sm_paths,
        {
            "train": {
                "ContentType": "application/x-recordio",
                "TrainingInputMode": "Pipe",
                "S3DistributionType": "ShardedByS3Key",
                "RecordWrapperType": "RecordIO",
            },
            "validation": {"TrainingInputMode": "File", "RecordWrapperType": "None"},
            "test": {},
        },
    )
    channels = read_input_data_config(sm_paths)
    train = channels["train"]
    assert (train.input_mode, train.record_wrapper, train.distribution, train.pipe) == ("Pipe", "RecordIO", "ShardedByS3Key", True)
    assert train.pipe_path(3) == sm_paths.data_dir / "train_3"
    assert (channels["validation"].input_mode, channels["validation"].record_wrapper) == ("File", None)
    assert (channels["test"].input_mode, channels["test"].distribution, channels["test"].pipe) == ("File", "FullyReplicated", False)


def test_unknown_input_mode_names_the_channel_and_field(sm_paths):
    write_config(sm_paths, {"train": {"TrainingInputMode": "Stream"}})
    with pytest.raises(ConfigError, match="channel 'train' has TrainingInputMode='Stream'; expected one of File, FastFile, Pipe"):
        read_input_data_config(sm_paths)


def test_pipe_channels_pick_by_wrapper_and_content_type(tmp_path):
    def pick(**fields):
        return plan({"train": Channel("train", tmp_path / "train", input_mode="Pipe", **fields)}).train.format

    assert pick(record_wrapper="RecordIO", content_type="application/x-recordio") == "groundtruth"
    assert pick(record_wrapper="RecordIO", content_type="image/jpeg") == "groundtruth"
    assert pick(content_type="application/x-recordio") == "recordio"
    assert pick() == "recordio"
    with pytest.raises(ConfigError, match="Pipe mode with content type 'application/x-image' and no RecordWrapperType"):
        pick(content_type="application/x-image")
    with pytest.raises(ConfigError, match="data_format=lst needs File mode"):
        plan({"train": Channel("train", tmp_path, input_mode="Pipe")}, FormatOptions(data_format="lst"))


def test_file_channels_pick_by_their_files(tmp_path):
    digits = digits_data.load(4)
    root = tmp_path / "train"
    digits_data.write_image_folder(root, digits)
    assert plan({"train": Channel("train", root)}).train.format == "imagefolder"
    (root / "labels.csv").write_text("path,label\n")
    assert plan({"train": Channel("train", root)}).train.format == "manifest"
    assert plan({"train": Channel("train", root)}, FormatOptions(data_format="imagefolder")).train.format == "imagefolder"
    digits_data.write_manifest(root / "gt.manifest", [digits_data.ground_truth_line(digits[0], "s3://b/x.png")])
    assert plan({"train": Channel("train", root)}).train.format == "groundtruth"
    digits_data.write_rec(root / "train.rec", digits)
    assert plan({"train": Channel("train", root)}).train.format == "recordio"
    (root / "train.lst").write_text("")
    assert plan({"train": Channel("train", root)}).train.format == "lst"
    chosen = plan({"train": Channel("train", root, content_type="application/x-recordio")})
    assert chosen.train.format == "recordio"
    assert chosen.describe().startswith(f"data format: train=recordio ({root / 'train.rec'}; images under {root}, label-format=class-id)")


def test_recordio_content_type_without_rec_files(tmp_path):
    with pytest.raises(ConfigError, match="content type is application/x-recordio, but .* holds no .rec file"):
        plan({"train": Channel("train", tmp_path, content_type="application/x-recordio")})


def test_training_channel_with_split_folders(tmp_path):
    digits = digits_data.load(6)
    digits_data.write_image_folder(tmp_path / "training" / "train", digits[:4])
    digits_data.write_image_folder(tmp_path / "training" / "valid", digits[4:])
    data = plan({"training": Channel("training", tmp_path / "training")})
    assert (data.train.root.name, data.validation.root.name, data.test) == ("train", "valid", None)
    assert (
        data.describe()
        == f"data format: train=imagefolder ({tmp_path / 'training' / 'train'}); validation=imagefolder ({tmp_path / 'training' / 'valid'})"
    )


def test_no_training_channel(tmp_path):
    with pytest.raises(ConfigError, match="no training data: expected a 'train' channel .*channels found: pretrained"):
        plan({"pretrained": Channel("pretrained", tmp_path)})


def test_content_type_parameters():
    assert parse_content_type("application/x-image; label-format=multi-hot") == ("application/x-image", {"label-format": "multi-hot"})
    assert parse_content_type(None) == ("", {})
    with pytest.raises(ConfigError, match="label_format='one-hot'"):
        plan({"train": Channel("train", "/nonexistent", content_type="application/x-recordio;label-format=one-hot", input_mode="Pipe")})


def test_separate_channels_as_sagemaker_users_name_them_and_a_plain_class_tree(tmp_path):
    digits = digits_data.load(6)
    for name in ("train", "valid", "test"):
        digits_data.write_image_folder(tmp_path / name, digits)
    data = plan({name: Channel(name, tmp_path / name) for name in ("train", "valid", "test")})
    assert [(split, source.root.name) for split, source in data.splits().items()] == [
        ("train", "train"),
        ("validation", "valid"),
        ("test", "test"),
    ]
    digits_data.write_image_folder(tmp_path / "training", digits)
    tree = plan({"training": Channel("training", tmp_path / "training")})
    assert (tree.train.root, tree.validation, tree.test) == (tmp_path / "training", None, None)  # validation held out later
