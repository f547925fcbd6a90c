"""Ground Truth / Rekognition Custom Labels manifests, in File mode (manifest beside the
images) and as the Pipe-mode augmented-manifest stream, on scikit-learn's digits."""

import io
import json

import numpy as np
import pytest

from container import Channel
from tests.support import digits as digits_data
from tests.support import recordio_writer
from train.formats import DataFormatError, FormatOptions, census, plan
from train.formats import groundtruth as gt
from vision import images


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(60)


def file_channel(root, digits, multi_label=False, attribute="class"):
    """Images kept in their S3 layout (digits/...) under the channel, the manifest beside them."""
    lines = []
    for digit in digits:
        relative = f"digits/{digit.name}/{digit.index:04d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(digit.png())
        lines.append(digits_data.ground_truth_line(digit, f"s3://my-bucket/labeling/{relative}", attribute, multi_label))
    digits_data.write_manifest(root / "output.manifest", lines)
    return {"train": Channel("train", root)}


def test_single_label_manifest_gives_ids_and_names(tmp_path, digits):
    data = plan(file_channel(tmp_path, digits))
    assert data.train.format == "groundtruth"
    samples = data.train.read()
    assert [s.labels for s in samples] == [(d.label,) for d in digits]
    assert [s.names for s in samples] == [(d.name,) for d in digits]
    for sample, digit in zip(samples, digits, strict=True):
        assert np.array_equal(np.asarray(images.load_rgb(sample.source, images.ImageLimits())), digit.rgb)
    classes = census(samples).classes()
    assert classes == digits_data.CLASS_NAMES[:10]


def test_multi_label_manifest_with_class_map(tmp_path, digits):
    samples = plan(file_channel(tmp_path, digits, multi_label=True)).train.read()
    assert [s.labels for s in samples] == [d.labels for d in digits]
    found = census(samples)
    assert found.multi_label and found.classes() == digits_data.CLASS_NAMES


def test_label_attribute_found_from_its_metadata_or_named(tmp_path, digits):
    found = file_channel(tmp_path, digits, attribute="digit-job")
    assert [s.labels for s in plan(found).train.read()] == [(d.label,) for d in digits]
    with pytest.raises(
        DataFormatError, match=r"output.manifest line 1: no label attribute 'class' \(this line has \['digit-job', 'source-ref'\]\)"
    ):
        plan(found, FormatOptions(label_attribute="class")).train.read()


def test_missing_source_ref_is_located(tmp_path, digits):
    found = file_channel(tmp_path, digits)
    manifest = tmp_path / "output.manifest"
    lines = manifest.read_text().splitlines()
    broken = json.loads(lines[4])
    broken["source"] = broken.pop("source-ref")
    lines[4] = json.dumps(broken)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"output.manifest line 5: no 'source-ref'"):
        plan(found).train.read()


def test_line_without_a_classification_label_is_located(tmp_path, digits):
    found = file_channel(tmp_path, digits)
    manifest = tmp_path / "output.manifest"
    manifest.write_text(manifest.read_text() + json.dumps({"source-ref": "s3://my-bucket/labeling/digits/x.png", "note": 1}) + "\n")
    with pytest.raises(DataFormatError, match=rf"output.manifest line {len(digits) + 1}: no image-classification label"):
        plan(found).train.read()


def test_images_missing_from_the_channel(tmp_path, digits):
    digits_data.write_manifest(tmp_path / "m.manifest", [digits_data.ground_truth_line(digits[0], "s3://b/elsewhere/0.png")])
    with pytest.raises(DataFormatError, match="m.manifest line 1: source-ref 's3://b/elsewhere/0.png' is not under the channel"):
        plan({"train": Channel("train", tmp_path)}).train.read()


def test_rekognition_style_labels_one_attribute_each(tmp_path, digits):
    digit = digits[0]
    (tmp_path / "0.png").write_bytes(digit.png())
    line = {"source-ref": "s3://b/0.png"}
    for name in ("zero", "even"):
        line[name] = 1
        line[f"{name}-metadata"] = {"class-name": name.title(), "type": "groundtruth/image-classification", "confidence": 1}
    digits_data.write_manifest(tmp_path / "rek.manifest", [line])
    (sample,) = plan({"train": Channel("train", tmp_path)}).train.read()
    assert sample.labels == ("Even", "Zero")


def pipe_channel(tmp_path, content_type="application/x-recordio"):
    return Channel("train", tmp_path / "train", content_type=content_type, input_mode="Pipe", record_wrapper="RecordIO")


def test_pipe_stream_single_label(tmp_path, digits):
    source = plan({"train": pipe_channel(tmp_path)}).train
    assert source.format == "groundtruth" and source.pipe
    assert "augmented manifest (Pipe mode, channel train" in source.describe()
    samples = list(source.stream(io.BytesIO(digits_data.augmented_stream(digits))))
    assert [s.labels for s in samples] == [(d.label,) for d in digits]
    assert all(
        np.array_equal(np.asarray(images.load_rgb(s.source, images.ImageLimits())), d.rgb) for s, d in zip(samples, digits, strict=True)
    )


def test_pipe_stream_multi_label_with_metadata(tmp_path, digits):
    names = ("source-ref", "class", "class-metadata")
    options = FormatOptions(attribute_names=names)
    source = plan({"train": pipe_channel(tmp_path)}, options).train
    samples = list(source.stream(io.BytesIO(digits_data.augmented_stream(digits, names, multi_label=True))))
    assert [s.labels for s in samples] == [d.labels for d in digits]
    assert census(samples).classes() == digits_data.CLASS_NAMES


def test_pipe_stream_with_attributes_in_another_order_is_explained(tmp_path, digits):
    stream = digits_data.augmented_stream(digits, ("class", "source-ref"))
    source = plan({"train": pipe_channel(tmp_path)}).train
    with pytest.raises(DataFormatError, match=r"train image 0 \(record 0, byte 0\): attribute 'source-ref' holds JSON text"):
        list(source.stream(io.BytesIO(stream)))


def test_pipe_stream_unknown_label_attribute(tmp_path):
    with pytest.raises(
        DataFormatError, match=r"label attribute 'label' is not among the channel's attribute_names \['source-ref', 'class'\]"
    ):
        gt.AttributeRoles(("source-ref", "class"), "label")


def test_pipe_stream_cut_between_attributes(tmp_path, digits):
    stream = io.BytesIO()
    for digit in digits[:3]:
        recordio_writer.write_record(stream, digit.png())
        recordio_writer.write_record(stream, str(digit.label).encode())
    recordio_writer.write_record(stream, digits[3].png())
    source = plan({"train": pipe_channel(tmp_path)}).train
    with pytest.raises(DataFormatError, match="the stream ends after 1 of the 2 attributes of the image at record 6"):
        list(source.stream(io.BytesIO(stream.getvalue())))


def test_pipe_label_that_is_not_json(tmp_path, digits):
    stream = io.BytesIO()
    recordio_writer.write_record(stream, digits[0].png())
    recordio_writer.write_record(stream, digits[1].png())  # an image where the label should be
    source = plan({"train": pipe_channel(tmp_path)}).train
    with pytest.raises(DataFormatError, match="attribute 'class' should be JSON text"):
        list(source.stream(io.BytesIO(stream.getvalue())))
