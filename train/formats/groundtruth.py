"""SageMaker Ground Truth and Rekognition Custom Labels image-classification manifests.

A manifest is JSON lines, one image each:

    {"source-ref": "s3://bucket/dogs/1.jpg", "class": 3,
     "class-metadata": {"class-name": "dog", "type": "groundtruth/image-classification", ...}}
    {"source-ref": "s3://bucket/2.jpg", "labels": [1, 8],
     "labels-metadata": {"class-map": {"1": "bicycle", "8": "car"},
                         "type": "groundtruth/image-classification-multilabel", ...}}

The label attribute is named by the labelling job. Unless told (label_attribute), it is
the attribute whose "<attr>-metadata" has one of those types. Rekognition Custom Labels
writes a multi-label image as several such attributes, one per label: with no
label_attribute given, every one of them counts and the class names are the labels.

In a training job the manifest arrives as an AugmentedManifestFile channel in Pipe mode:
for each line, SageMaker sends the attributes named in the channel's AttributeNames, in
that order, each wrapped in a RecordIO record (RecordWrapperType=RecordIO); attributes
ending in "-ref" are replaced by the bytes of the S3 object they point at, the others
arrive as JSON text. With AttributeNames ["source-ref", "class"] the stream is: image
bytes, "3", image bytes, "5", ... (`stream_samples`).

In File mode (local runs, EC2) the manifest sits in the channel beside the images. An
s3:// source-ref is looked up by its key: the images keep their S3 layout under the
channel, from any depth of the key (s3://b/data/dogs/1.jpg may be dogs/1.jpg or
data/dogs/1.jpg in the channel); the depth found for the first line is used for all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from train.formats import recordio
from train.formats.base import DataFormatError, FormatOptions, Sample, class_ids, inside, json_objects

SOURCE_REF = "source-ref"
CLASSIFICATION_TYPES = ("groundtruth/image-classification", "groundtruth/image-classification-multilabel")


def label_attributes(line: dict, options: FormatOptions, where: str) -> list[str]:
    """The attribute(s) holding this line's label."""
    if options.label_attribute:
        if options.label_attribute not in line:
            keys = sorted(k for k in line if not k.endswith("-metadata"))
            raise DataFormatError(f"{where}: no label attribute {options.label_attribute!r} (this line has {keys})")
        return [options.label_attribute]
    found = [
        key
        for key, value in line.items()
        if isinstance(meta := line.get(f"{key}-metadata"), dict) and meta.get("type") in CLASSIFICATION_TYPES and key != SOURCE_REF
    ]
    if not found:
        raise DataFormatError(
            f"{where}: no image-classification label: expected an attribute '<name>' with '<name>-metadata' of type "
            f"{' or '.join(CLASSIFICATION_TYPES)}; name the label attribute with label_attribute (keys: {sorted(line)})"
        )
    return found


def _label_value(value, metadata, attribute: str, where: str, multi_hot: bool) -> tuple[tuple[int, ...] | tuple[str, ...], tuple[str, ...]]:
    """A label attribute's value (and metadata) as (class ids, their names) or class names."""
    metadata = metadata if isinstance(metadata, dict) else {}
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)  # "3" or "[1, 8]" as SageMaker sends JSON text, or a string label
        except json.JSONDecodeError:
            return (text,), ()  # a class name
        if isinstance(value, str):
            return (value,), ()
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise DataFormatError(f"{where}: label attribute {attribute!r} holds {value!r}, not a class id or a list of them")
    values = value if isinstance(value, list) else [value]
    if values and all(isinstance(v, str) and not _numeric(v) for v in values):
        return tuple(values), ()  # class names
    ids = class_ids(values, f"{where} ({attribute!r})", multi_hot)
    if "class-map" in metadata and isinstance(metadata["class-map"], dict):
        names = tuple(str(metadata["class-map"].get(str(i), "")) for i in ids)
    elif "class-name" in metadata and len(ids) == 1:
        names = (str(metadata["class-name"]),)
    else:
        names = ()
    return ids, names


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def line_labels(line: dict, options: FormatOptions, where: str) -> tuple[tuple, tuple[str, ...]]:
    attributes = label_attributes(line, options, where)
    if len(attributes) == 1:
        return _label_value(line[attributes[0]], line.get(f"{attributes[0]}-metadata"), attributes[0], where, options.multi_hot)
    # Rekognition Custom Labels: one attribute per label, each naming its class.
    names = []
    for attribute in attributes:
        name = line[f"{attribute}-metadata"].get("class-name")
        if not name:
            raise DataFormatError(f"{where}: {attribute}-metadata has no class-name; set label_attribute to pick one attribute")
        names.append(str(name))
    return tuple(sorted(set(names))), ()


def _key_parts(source_ref: str) -> tuple[str, ...]:
    if source_ref.startswith("s3://"):
        return PurePosixPath(source_ref[len("s3://") :]).parts[1:]  # without the bucket
    return PurePosixPath(source_ref).parts


def read(manifest: Path, root: Path, options: FormatOptions) -> list[Sample]:
    """Samples of a File-mode manifest, source-refs resolved to files under `root`."""
    samples, depth = [], None
    for where, line in json_objects(manifest):
        source_ref = line.get(SOURCE_REF)
        if not isinstance(source_ref, str) or not source_ref.strip():
            raise DataFormatError(f"{where}: no {SOURCE_REF!r} (the image's S3 URI or path); keys: {sorted(line)}")
        parts = _key_parts(source_ref.strip())
        if depth is None:
            depth = next((d for d in range(len(parts)) if (root.joinpath(*parts[d:])).is_file()), None)
            if depth is None:
                raise DataFormatError(
                    f"{where}: {SOURCE_REF} {source_ref!r} is not under the channel {root} at any depth of its key; "
                    "copy the images into the channel keeping their S3 layout, or train in Pipe mode (AugmentedManifestFile)"
                )
        relative = "/".join(parts[depth:])
        path = inside(root, relative, where)
        labels, names = line_labels(line, options, where)
        samples.append(Sample(str(path), labels, key=relative, where=where, names=names))
    return samples


class AttributeRoles:
    """Which of a Pipe-mode channel's AttributeNames is the image, the label and its
    metadata; the others are read and ignored."""

    def __init__(self, attribute_names: tuple[str, ...], label_attribute: str | None):
        names = list(attribute_names)
        refs = [i for i, name in enumerate(names) if name.endswith("-ref")]
        if len(refs) != 1:
            raise DataFormatError(f"attribute_names {names}: expected exactly one '-ref' attribute (the image), found {len(refs)}")
        candidates = [i for i, name in enumerate(names) if i not in refs and not name.endswith("-metadata")]
        if label_attribute is not None:
            if label_attribute not in names:
                raise DataFormatError(f"label attribute {label_attribute!r} is not among the channel's attribute_names {names}")
            candidates = [names.index(label_attribute)]
        if not candidates:
            raise DataFormatError(f"attribute_names {names}: no label attribute (an attribute that is neither '-ref' nor '-metadata')")
        self.names = tuple(names)
        self.image = refs[0]
        self.label = candidates[0]
        metadata = f"{names[self.label]}-metadata"
        self.metadata = names.index(metadata) if metadata in names else None

    def __len__(self) -> int:
        return len(self.names)


def _json_attribute(payload: bytes, attribute: str, where: str, roles: AttributeRoles):
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataFormatError(
            f"{where}: attribute {attribute!r} should be JSON text but is {len(payload)} bytes starting {payload[:8]!r}: "
            f"the channel's AttributeNames must be {list(roles.names)} in this order (set attribute_names to match them)"
        ) from None


def group_records(records: Iterator[recordio.Record], size: int, name: str) -> Iterator[tuple[recordio.Record, ...]]:
    """Consecutive records, `size` at a time: one manifest line's attributes."""
    group: list[recordio.Record] = []
    for record in records:
        group.append(record)
        if len(group) == size:
            yield tuple(group)
            group = []
    if group:
        raise DataFormatError(
            f"{name}: the stream ends after {len(group)} of the {size} attributes of the image at record {group[0].index} "
            f"(byte {group[0].offset}): the AttributeNames and attribute_names disagree, or the stream was cut"
        )


def unit_sample(group: tuple[recordio.Record, ...], number: int, roles: AttributeRoles, name: str, multi_hot: bool) -> Sample:
    """The sample in one manifest line's records (`number`: the line, from 0)."""
    first = group[0]
    where = f"{name} image {number} (record {first.index}, byte {first.offset})"
    image = group[roles.image].payload
    if len(image) < 64 and _looks_like_json(image):
        raise DataFormatError(
            f"{where}: attribute {roles.names[roles.image]!r} holds JSON text {image[:40]!r}, not image bytes: "
            f"the channel's AttributeNames must be {list(roles.names)} in this order"
        )
    label_name = roles.names[roles.label]
    value = _json_attribute(group[roles.label].payload, label_name, where, roles)
    metadata = None
    if roles.metadata is not None:
        metadata = _json_attribute(group[roles.metadata].payload, roles.names[roles.metadata], where, roles)
    labels, names = _label_value(value, metadata, label_name, where, multi_hot)
    return Sample(image, labels, key=f"{name}#{number}", where=where, names=names)


def _looks_like_json(payload: bytes) -> bool:
    try:
        json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def stream_samples(stream: BinaryIO, name: str, options: FormatOptions) -> Iterator[Sample]:
    """Samples of an augmented-manifest Pipe stream (RecordIO-wrapped attributes)."""
    roles = AttributeRoles(options.pipe_attributes(), options.label_attribute)
    groups = group_records(recordio.iter_records(stream, name), len(roles), name)
    for number, group in enumerate(groups):
        yield unit_sample(group, number, roles, name, options.multi_hot)
