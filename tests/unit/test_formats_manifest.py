"""Plain manifests (CSV or JSON lines of path and label beside the images) and class
folders, on scikit-learn's digits."""

import json

import numpy as np
import pytest

from container import Channel
from tests.support import digits as digits_data
from train.formats import DataFormatError, FormatOptions, census, plan
from vision import images


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(40)


def test_csv_with_header(tmp_path, digits):
    paths = digits_data.write_files(tmp_path, digits, "images")
    rows = ["id,filename,label,width"] + [f"{d.index},{p},{d.name},32" for d, p in zip(digits, paths, strict=True)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = plan({"train": Channel("train", tmp_path)})
    assert data.train.format == "manifest" and "labels.csv" in data.describe()
    samples = data.train.read()
    assert [s.labels for s in samples] == [(d.name,) for d in digits]
    assert samples[0].where == "labels.csv line 2" and samples[0].key == paths[0]
    for sample, digit in zip(samples, digits, strict=True):
        assert np.array_equal(np.asarray(images.load_rgb(sample.source, images.ImageLimits())), digit.rgb)


def test_csv_without_header_and_with_several_labels(tmp_path, digits):
    paths = digits_data.write_files(tmp_path, digits, "images")
    rows = [f"{p},{d.name},{'even' if d.label % 2 == 0 else 'odd'}" for d, p in zip(digits, paths, strict=True)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    samples = plan({"train": Channel("train", tmp_path)}).train.read()
    assert [s.labels for s in samples] == [(d.name, digits_data.CLASS_NAMES[d.labels[1]]) for d in digits]
    assert census(samples).multi_label


def test_jsonl_with_label_lists_and_a_separator(tmp_path, digits):
    paths = digits_data.write_files(tmp_path, digits, "images")
    lines = [{"image": p, "tags": f"{d.name} {digits_data.CLASS_NAMES[d.labels[1]]}"} for d, p in zip(digits, paths, strict=True)]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    samples = plan({"train": Channel("train", tmp_path)}, FormatOptions(label_separator=" ")).train.read()
    assert [set(s.labels) for s in samples] == [{d.name, digits_data.CLASS_NAMES[d.labels[1]]} for d in digits]
    (tmp_path / "labels.jsonl").write_text(json.dumps({"path": paths[0], "labels": ["digit_0", "even"]}) + "\n")
    (sample,) = plan({"train": Channel("train", tmp_path)}).train.read()
    assert sample.labels == ("digit_0", "even")


def test_numeric_class_names_sort_as_numbers(tmp_path, digits):
    paths = digits_data.write_files(tmp_path, digits, "images")
    rows = ["path,label"] + [f"{p},{d.label + 1}" for d, p in zip(digits, paths, strict=True)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    classes = census(plan({"train": Channel("train", tmp_path)}).train.read()).classes()
    assert classes == [str(i) for i in range(1, 11)]


@pytest.mark.parametrize("path", ["../x.png", "/etc/passwd"])
def test_path_leaving_the_channel_is_refused(tmp_path, path):
    (tmp_path / "labels.csv").write_text(f"path,label\n{path},cat\n")
    with pytest.raises(DataFormatError, match=f"labels.csv line 2: path '{path}' is outside the channel"):
        plan({"train": Channel("train", tmp_path)}).train.read()


def test_header_without_a_label_column(tmp_path):
    (tmp_path / "labels.csv").write_text("path,colour\nx.png,red\n")
    with pytest.raises(DataFormatError, match="labels.csv line 1: the header .* needs a path column .* and a label column"):
        plan({"train": Channel("train", tmp_path)}).train.read()


def test_class_folders(tmp_path, digits):
    digits_data.write_image_folder(tmp_path, digits)
    data = plan({"train": Channel("train", tmp_path)})
    assert data.train.format == "imagefolder"
    samples = data.train.read()
    assert sorted(s.labels[0] for s in samples) == sorted(d.name for d in digits)
    assert census(samples).classes() == sorted({d.name for d in digits})
