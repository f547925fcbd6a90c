""".lst + images, as the built-in Image Classification algorithm takes them (train and
train_lst channels), on scikit-learn's digits."""

import numpy as np
import pytest

from container import Channel
from tests.support import digits as digits_data
from train.formats import DataFormatError, FormatOptions, plan
from vision import images


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(120)


def channels(root, names):
    return {name: Channel(name, root / name) for name in names}


def builtin_layout(root, digits, multi_label=None):
    train, valid = digits[:100], digits[100:]
    digits_data.write_lst(root / "train_lst" / "train.lst", train, digits_data.write_files(root / "train", train, "images"), multi_label)
    digits_data.write_lst(
        root / "validation_lst" / "validation.lst", valid, digits_data.write_files(root / "validation", valid, "images"), multi_label
    )
    return channels(root, ["train", "validation", "train_lst", "validation_lst"])


def test_train_lst_channels_read_every_digit(tmp_path, digits):
    data = plan(builtin_layout(tmp_path, digits))
    assert data.train.format == "lst" and data.validation.format == "lst"
    assert "train=lst" in data.describe() and "train_lst" in data.describe()
    train = data.train.read()
    assert [s.labels for s in train] == [(d.label,) for d in digits[:100]]
    for sample, digit in zip(train, digits, strict=False):
        assert np.array_equal(np.asarray(images.load_rgb(sample.source, images.ImageLimits())), digit.rgb)
    assert train[0].where == "train.lst line 1" and train[0].key == digits[0].relative_path("images")
    assert [s.labels for s in data.validation.read()] == [(d.label,) for d in digits[100:]]


@pytest.mark.parametrize("label_format", ["class-id", "multi-hot"])
def test_multi_label_lists(tmp_path, digits, label_format):
    data = plan(builtin_layout(tmp_path, digits, label_format), FormatOptions(label_format=label_format))
    assert [s.labels for s in data.train.read()] == [d.labels for d in digits[:100]]


def test_label_format_from_the_content_type(tmp_path, digits):
    found = builtin_layout(tmp_path, digits, "multi-hot")
    found["train"] = Channel("train", tmp_path / "train", content_type="application/x-image; label-format=multi-hot")
    data = plan(found)
    assert data.train.options.label_format == "multi-hot" and "label-format=multi-hot" in data.describe()
    assert [s.labels for s in data.train.read()] == [d.labels for d in digits[:100]]


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "images/../../outside.png"])
def test_a_path_leaving_the_channel_is_refused_naming_the_line(tmp_path, digits, path):
    found = builtin_layout(tmp_path, digits)
    lst = tmp_path / "train_lst" / "train.lst"
    lines = lst.read_text().splitlines()
    lines[6] = f"6\t{digits[6].label}.000000\t{path}"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=rf"train.lst line 7: path '{path}' is outside the channel"):
        plan(found).train.read()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("7\tdigit_3.png", "expected 'index<TAB>label<TAB>path'"),
        ("7 3.0 images/x.png", "expected .* found 1 field"),
        ("x\t3.0\timages/x.png", "the first field, the image index, is 'x'"),
        ("0\t3.0\timages/x.png", "image index 0 already used on line 1"),
        ("1000\tthree\timages/x.png", "label 'three' is not a number"),
        ("1000\t-1\timages/x.png", "label -1.0 is not a class id"),
    ],
)
def test_malformed_lines_are_located(tmp_path, digits, line, message):
    found = builtin_layout(tmp_path, digits)
    lst = tmp_path / "train_lst" / "train.lst"
    lst.write_text(lst.read_text() + line + "\n")
    with pytest.raises(DataFormatError, match=f"train.lst line 101: {message}"):
        plan(found).train.read()


def test_lst_beside_the_images_in_one_channel(tmp_path, digits):
    root = tmp_path / "train"
    digits_data.write_lst(root / "train.lst", digits[:10], digits_data.write_files(root, digits[:10], "images"))
    data = plan({"train": Channel("train", root)})
    assert data.train.format == "lst" and len(data.train.read()) == 10
