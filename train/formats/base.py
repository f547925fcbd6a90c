"""What every reader yields, the options that shape how labels are read, and the checks
every reader shares (paths must stay inside their channel, labels must be class ids)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from container import ConfigError

DATA_FORMATS = ("auto", "imagefolder", "lst", "recordio", "groundtruth", "manifest")
LABEL_FORMATS = ("class-id", "multi-hot")


class DataFormatError(ConfigError):
    """A record the reader cannot use; the message says where it is (file and line,
    record index and byte offset) and what is wrong with it."""


@dataclass(frozen=True)
class FormatOptions:
    """How to read labels and which format to use; phase 2 maps hyperparameters onto
    these fields. None means "not set": the channel (its content type) or the data decides."""

    data_format: str = "auto"  # DATA_FORMATS: auto picks from the input mode, content type and files
    # The built-in algorithm's label-format: class ids (one per label) or a multi-hot vector
    # of num_classes 0/1 values. None: the channel content type's label-format parameter
    # (e.g. application/x-recordio; label-format=multi-hot), else class-id.
    label_format: str | None = None
    # Ground Truth: the attribute holding the label. None: found from the attribute whose
    # "<attr>-metadata" has type groundtruth/image-classification[-multilabel].
    label_attribute: str | None = None
    # Pipe mode augmented manifests: the channel's AttributeNames, in order. Empty:
    # ("source-ref", label_attribute or "class").
    attribute_names: tuple[str, ...] = ()
    # Plain manifests: split a label cell into several labels (e.g. " " for "haze primary").
    label_separator: str | None = None

    def __post_init__(self):
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format={self.data_format!r}: choose one of {', '.join(DATA_FORMATS)}")
        if self.label_format is not None and self.label_format not in LABEL_FORMATS:
            raise ConfigError(f"label_format={self.label_format!r}: choose one of {', '.join(LABEL_FORMATS)}")

    @property
    def multi_hot(self) -> bool:
        return self.label_format == "multi-hot"

    def pipe_attributes(self) -> tuple[str, ...]:
        return self.attribute_names or ("source-ref", self.label_attribute or "class")


@dataclass(frozen=True)
class Sample:
    """One labelled image as a reader found it.

    `source` is an image file path, a RecordRef, or the encoded image bytes (Pipe mode).
    `labels` are class ids (ints: RecordIO, .lst, Ground Truth) or class names (strs:
    class folders, plain manifests, Rekognition-style manifests); an empty tuple is a
    multi-label image with no positive class. `names` are the class names of `labels`
    where the data carries them beside ids (Ground Truth's class-name / class-map), in the
    same order; "" where one is unknown. `key` identifies the image stably for the dataset
    fingerprint (a path relative to its channel, or file#record); `where` says where it is
    for error messages.
    """

    source: str | bytes | object  # a path, the encoded image, or a recordio.RecordRef
    labels: tuple[int, ...] | tuple[str, ...]
    key: str
    where: str
    names: tuple[str, ...] = ()


def inside(root: Path, relative: str, where: str) -> Path:
    """`root/relative`, refusing paths that leave `root` (absolute, or with ..): a
    manifest or .lst must not make the trainer read files outside its channel."""
    text = relative.strip()
    path = PurePosixPath(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise DataFormatError(
            f"{where}: path {relative!r} is outside the channel {root}: give a path relative to the channel, without '..'"
        )
    return root / path


def class_ids(values, where: str, multi_hot: bool) -> tuple[int, ...]:
    """Numeric labels (floats as im2rec writes them) as class ids: each an integral value
    >= 0, or, for a multi-hot vector, the positions holding 1."""
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataFormatError(f"{where}: label {value!r} is not a number") from None
        numbers.append(number)
    if multi_hot:
        if any(n not in (0.0, 1.0) for n in numbers):
            raise DataFormatError(f"{where}: label-format=multi-hot needs 0/1 values, got {values!r}")
        return tuple(i for i, n in enumerate(numbers) if n == 1.0)
    for number in numbers:
        if not math.isfinite(number) or number < 0 or number != int(number):
            raise DataFormatError(
                f"{where}: label {number!r} is not a class id (a whole number >= 0); multi-hot labels need label-format=multi-hot"
            )
    return tuple(int(n) for n in numbers)


def json_objects(manifest: Path) -> Iterator[tuple[str, dict]]:
    """Each non-blank line of a JSON-lines manifest as (where, object), `where` naming
    the file and line for errors; a line that is not a JSON object is a DataFormatError."""
    with open(manifest, encoding="utf-8") as file:
        for number, text in enumerate(file, 1):
            if not text.strip():
                continue
            where = f"{manifest.name} line {number}"
            try:
                line = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: not a JSON object: {err}") from None
            if not isinstance(line, dict):
                raise DataFormatError(f"{where}: not a JSON object")
            yield where, line
