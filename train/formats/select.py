"""Which reader reads each split, picked from the channel's input mode, content type and
files; `DataPlan.describe()` is the first data log line, naming the format chosen.

Splits come from channels as the built-in algorithms name them: `train` (or the one
`training` channel, which may hold train/ valid/ test/ folders), `validation` (also
`valid`, `val`) and `test`, each with an optional `<channel>_lst` channel of .lst files
(`train_lst`, `validation_lst`).

Pipe mode (the channel's TrainingInputMode) streams records, so the content decides:
- RecordWrapperType=RecordIO: an augmented manifest (Ground Truth), each attribute a record;
- otherwise application/x-recordio: im2rec .rec files, concatenated.
File (and FastFile) mode looks at the files, most specific first:
- a `<channel>_lst` channel, or .lst files in the channel: `lst`;
- .rec files (or content type application/x-recordio): `recordio`;
- a JSON-lines manifest whose lines have "source-ref" (.manifest, .jsonl, .json): `groundtruth`;
- a .csv or JSON-lines file of path and label: `manifest`;
- class folders: `imagefolder`.
`FormatOptions.data_format` overrides the choice. A content type's `label-format`
parameter (application/x-image; label-format=multi-hot) sets the label format when the
options do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from container import Channel, ConfigError
from train.formats import groundtruth, imagefolder, lst, manifest, recordio
from train.formats.base import FormatOptions, Sample
from train.formats.imagefolder import TEST_NAMES, TRAIN_NAMES, VALID_NAMES, first_existing

SPLIT_CHANNELS = {"train": ("train",), "validation": ("validation", "valid", "val"), "test": ("test", "testing")}
RECORDIO_TYPES = ("application/x-recordio",)


def parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """'application/x-image; label-format=multi-hot' -> ('application/x-image', {'label-format': 'multi-hot'})."""
    if not content_type:
        return "", {}
    media, *params = (part.strip() for part in content_type.split(";"))
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return media.lower(), parsed


@dataclass(frozen=True)
class SplitSource:
    """One split: its format, where its images and index files are, how to read it."""

    split: str  # train, validation or test
    format: str
    root: Path  # image paths are relative to it (File mode)
    index: tuple[Path, ...]  # the .rec / .lst / manifest files read, in order
    options: FormatOptions
    channel: Channel | None = None

    @property
    def pipe(self) -> bool:
        return self.channel is not None and self.channel.pipe

    def describe(self) -> str:
        if self.pipe:
            wrapper = f", RecordWrapperType={self.channel.record_wrapper}" if self.channel.record_wrapper else ""
            attributes = f", attributes {list(self.options.pipe_attributes())}" if self.format == "groundtruth" else ""
            what = "augmented manifest" if self.format == "groundtruth" else self.format
            return (
                f"{self.split}={what} (Pipe mode, channel {self.channel.name}, {self.channel.distribution}{wrapper}{attributes}, "
                f"label-format={self.options.label_format or 'class-id'})"
            )
        files = ", ".join(str(p) for p in self.index[:3]) + (f" and {len(self.index) - 3} more" if len(self.index) > 3 else "")
        where = f"{files}; images under {self.root}" if self.index else str(self.root)
        label = f", label-format={self.options.label_format or 'class-id'}" if self.format in ("lst", "recordio") else ""
        return f"{self.split}={self.format} ({where}{label})"

    def read(self) -> list[Sample]:
        """Every sample of a File-mode split (the index only: images are not opened)."""
        if self.pipe:
            raise ConfigError(f"{self.split} is a Pipe-mode channel: stream it (train.formats.pipe), it cannot be listed")
        multi_hot = self.options.multi_hot
        if self.format == "imagefolder":
            return imagefolder.read(self.root)
        samples: list[Sample] = []
        for path in self.index:
            if self.format == "recordio":
                samples += recordio.scan(path, multi_hot)
            elif self.format == "lst":
                samples += lst.read(path, self.root, multi_hot)
            elif self.format == "groundtruth":
                samples += groundtruth.read(path, self.root, self.options)
            else:
                samples += manifest.read(path, self.root, self.options.label_separator)
        return samples

    def stream(self, stream: BinaryIO) -> Iterator[Sample]:
        """The samples of one pass over a Pipe-mode channel, read from `stream`."""
        name = self.channel.name if self.channel else self.split
        if self.format == "groundtruth":
            return groundtruth.stream_samples(stream, name, self.options)
        return recordio.stream_samples(stream, name, self.options.multi_hot)


@dataclass(frozen=True)
class DataPlan:
    train: SplitSource
    validation: SplitSource | None
    test: SplitSource | None

    def splits(self) -> dict[str, SplitSource]:
        return {s.split: s for s in (self.train, self.validation, self.test) if s is not None}

    def describe(self) -> str:
        return "data format: " + "; ".join(s.describe() for s in self.splits().values())

    @property
    def pipe(self) -> bool:
        return any(s.pipe for s in self.splits().values())


def _files(root: Path, suffixes: tuple[str, ...], recursive: bool) -> list[Path]:
    # Top level only for the data channel: walking a million-image tree to look for index
    # files would cost seconds; a _lst channel is small, so it is searched throughout.
    if not root.is_dir():
        return []
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def _first_line(path: Path) -> dict | None:
    with open(path, encoding="utf-8") as file:
        for text in file:
            if text.strip():
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    return None
                return line if isinstance(line, dict) else None
    return None


def _detect_file_format(root: Path, lst_channel: Channel | None, media_type: str, options: FormatOptions) -> tuple[str, list[Path]]:
    wanted = options.data_format
    if lst_channel is not None and wanted in ("auto", "lst"):
        lists = _files(lst_channel.path, (".lst",), recursive=True)
        if not lists:
            raise ConfigError(f"channel {lst_channel.name} ({lst_channel.path}) holds no .lst file")
        return "lst", lists
    candidates: dict[str, list[Path]] = {
        "recordio": _files(root, (".rec",), recursive=False),
        "lst": _files(root, (".lst",), recursive=False),
    }
    jsonl = _files(root, manifest.JSONL_SUFFIXES, recursive=False)
    ground_truth = [p for p in jsonl if (line := _first_line(p)) is not None and groundtruth.SOURCE_REF in line]
    candidates["groundtruth"] = ground_truth
    candidates["manifest"] = _files(root, manifest.CSV_SUFFIXES, recursive=False) + [p for p in jsonl if p not in ground_truth]
    if wanted != "auto":
        if wanted == "imagefolder":
            return "imagefolder", []
        if not candidates[wanted]:
            raise ConfigError(f"data_format={wanted}, but {root} holds no {wanted} files")
        return wanted, candidates[wanted]
    if media_type in RECORDIO_TYPES:
        if not candidates["recordio"]:
            raise ConfigError(f"the channel's content type is {media_type}, but {root} holds no .rec file")
        return "recordio", candidates["recordio"]
    for name in ("lst", "recordio", "groundtruth", "manifest"):
        if candidates[name]:
            return name, candidates[name]
    return "imagefolder", []


def _detect_pipe_format(channel: Channel, media_type: str, options: FormatOptions) -> str:
    if options.data_format not in ("auto", "recordio", "groundtruth"):
        raise ConfigError(f"channel {channel.name} is in Pipe mode: data_format={options.data_format} needs File mode")
    if channel.record_wrapper == "RecordIO" and options.data_format != "recordio":
        return "groundtruth"
    if options.data_format == "groundtruth":
        raise ConfigError(f"channel {channel.name}: an augmented manifest in Pipe mode needs RecordWrapperType=RecordIO")
    if media_type in RECORDIO_TYPES or options.data_format == "recordio" or not media_type:
        return "recordio"
    raise ConfigError(
        f"channel {channel.name} is in Pipe mode with content type {channel.content_type!r} and no RecordWrapperType: "
        "images streamed back to back cannot be told apart. Stream .rec files (application/x-recordio), or an augmented "
        "manifest with RecordWrapperType=RecordIO, or use File mode"
    )


def source_for(split: str, root: Path, channel: Channel | None, lst_channel: Channel | None, options: FormatOptions) -> SplitSource:
    media_type, params = parse_content_type(channel.content_type if channel else None)
    label_format = options.label_format or params.get("label-format")
    options = replace(options, label_format=label_format)  # validated by FormatOptions
    if channel is not None and channel.pipe:
        return SplitSource(split, _detect_pipe_format(channel, media_type, options), root, (), options, channel)
    if not root.is_dir():
        raise ConfigError(f"channel directory {root} does not exist")
    chosen, index = _detect_file_format(root, lst_channel, media_type, options)
    return SplitSource(split, chosen, root, tuple(index), options, channel)


def plan(
    channels: dict[str, Channel],
    options: FormatOptions | None = None,
    train_dir: str | Path | None = None,
    valid_dir: str | Path | None = None,
    test_dir: str | Path | None = None,
) -> DataPlan:
    """The split sources of a job: explicit directories win, then separate channels
    (train, validation, test and their _lst channels), then the one `training` channel."""
    options = options or FormatOptions()
    if train_dir:

        def from_dir(split, directory):
            return source_for(split, Path(directory), None, None, options) if directory else None

        return DataPlan(from_dir("train", train_dir), from_dir("validation", valid_dir), from_dir("test", test_dir))

    def split_source(split: str) -> SplitSource | None:
        name = next((n for n in SPLIT_CHANNELS[split] if n in channels), None)
        if name is None:
            return None
        return source_for(split, channels[name].path, channels[name], channels.get(f"{name}_lst"), options)

    if "train" in channels:
        return DataPlan(split_source("train"), split_source("validation"), split_source("test"))
    if "training" not in channels:
        found = ", ".join(sorted(channels)) or "none"
        raise ConfigError(
            "no training data: expected a 'train' channel (with 'validation' and optional 'train_lst'/'validation_lst') or a "
            f"'training' channel; channels found: {found}. On EC2 mount your data with "
            "-v $PWD/data:/opt/ml/input/data/training, or pass --train-dir."
        )
    training = channels["training"]
    if training.pipe:
        return DataPlan(source_for("train", training.path, training, None, options), split_source("validation"), split_source("test"))
    root = training.path
    if not root.is_dir():
        raise ConfigError(f"channel directory {root} does not exist")
    nested = first_existing(root, TRAIN_NAMES)
    if nested is None:
        return DataPlan(source_for("train", root, training, channels.get("training_lst"), options), None, None)
    valid, test = first_existing(root, VALID_NAMES), first_existing(root, TEST_NAMES)
    return DataPlan(
        source_for("train", nested, training, None, options),
        source_for("validation", valid, training, None, options) if valid else None,
        source_for("test", test, training, None, options) if test else None,
    )
