"""train check-data: what is wrong with a dataset before a job spends hours on it, and
which version of it this is.

    train check-data [--train-dir DIR --valid-dir DIR --test-dir DIR] [--decode] [--output report.json]

Without directories it reads the job's channels (/opt/ml/input/data) in any format the
trainer reads (train.formats). For every split it reports:
- unreadable images: missing files, non-images, sizes the decoder refuses (header only;
  --decode also decodes the pixels, which finds truncated files);
- tiny images: a side shorter than --min-side pixels;
- exact duplicates (same bytes) within a split, and across train/validation/test
  (leakage: a test image the model trained on), with duplicates labelled differently;
- class counts, classes with no images and the imbalance ratio (largest / smallest);
- a fingerprint: SHA-256 over the sorted list of `split, key, labels, SHA-256 of the
  image bytes` lines (key: the path relative to the channel, or file#record), so a
  renamed, edited, added, removed or relabelled image changes it and nothing else does.

Cost: one read and one SHA-256 of every image plus a header parse (no pixel decoding
unless --decode); the trainer runs it at start (phase 2). Nothing runs at import.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from container import EXIT_CONFIG, ConfigError, SageMakerPaths, cpu_count, read_input_data_config
from train.formats import DATA_FORMATS, LABEL_FORMATS, FormatOptions, LabelCensus, RecordRef, Sample, plan
from vision import images

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 32  # below this a 224-pixel model sees mostly interpolation
EXAMPLES = 20  # examples kept per finding


@dataclass
class Finding:
    """How many images have one problem, and the first few."""

    count: int = 0
    examples: list = field(default_factory=list)

    def add(self, example, count: int = 1) -> None:
        self.count += count
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def to_dict(self) -> dict:
        return {"count": self.count, "examples": self.examples}


@dataclass
class SplitReport:
    images: int = 0
    bytes: int = 0
    unreadable: Finding = field(default_factory=Finding)
    tiny: Finding = field(default_factory=Finding)
    duplicates: Finding = field(default_factory=Finding)  # copies beyond the first, within this split
    census: LabelCensus = field(default_factory=LabelCensus)
    fingerprint: str = ""
    unreadable_keys: set[str] = field(default_factory=set)  # every one, for the trainer to leave out (not in the report)

    def class_counts(self) -> dict[str, int]:
        counts = self.census.counts
        if self.census.kind == "id":
            return {self.census.id_names.get(i) or str(i): counts[i] for i in sorted(counts)}
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        counts = self.class_counts()
        nonzero = [c for c in counts.values() if c]
        return {
            "images": self.images,
            "bytes": self.bytes,
            "classes": len(counts),
            "class_counts": counts,
            "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None,
            "multi_label": self.census.multi_label,
            "unreadable": self.unreadable.to_dict(),
            "tiny": self.tiny.to_dict(),
            "duplicates": self.duplicates.to_dict(),
            "fingerprint": self.fingerprint,
        }


@dataclass
class DataReport:
    splits: dict[str, SplitReport]
    leakage: Finding  # groups of identical images in more than one split
    leakage_pairs: dict[str, int]  # "train/test": groups shared by those two splits
    conflicting_labels: Finding  # identical images labelled differently
    empty_classes: dict[str, list[str]]  # split -> training classes it has no image of
    unknown_classes: dict[str, list[str]]  # split -> classes the training split lacks
    fingerprint: str
    seconds: float
    min_side: int
    decoded: bool

    def problems(self) -> list[str]:
        found = []
        for name, split in self.splits.items():
            if split.unreadable.count:
                found.append(f"{name}: {split.unreadable.count} unreadable images")
            if split.tiny.count:
                found.append(f"{name}: {split.tiny.count} images with a side under {self.min_side} px")
            if split.duplicates.count:
                found.append(f"{name}: {split.duplicates.count} duplicate images")
        if self.leakage.count:
            pairs = ", ".join(f"{pair}: {n}" for pair, n in self.leakage_pairs.items())
            found.append(f"leakage: {self.leakage.count} images in more than one split ({pairs})")
        if self.conflicting_labels.count:
            found.append(f"{self.conflicting_labels.count} identical images carry different labels")
        found += [f"{name}: no images of classes {names[:10]}" for name, names in self.empty_classes.items() if names]
        found += [f"{name}: classes the training split lacks: {names[:10]}" for name, names in self.unknown_classes.items() if names]
        return found

    def summary(self) -> dict:
        """The compact form for metrics.json, the model spec, MLflow and the registry."""
        return {
            "fingerprint": self.fingerprint,
            "images": {name: split.images for name, split in self.splits.items()},
            "unreadable": sum(s.unreadable.count for s in self.splits.values()),
            "tiny": sum(s.tiny.count for s in self.splits.values()),
            "duplicates": sum(s.duplicates.count for s in self.splits.values()),
            "leakage": self.leakage.count,
            "conflicting_labels": self.conflicting_labels.count,
            "imbalance_ratio": self.splits["train"].to_dict()["imbalance_ratio"] if "train" in self.splits else None,
            "problems": len(self.problems()),
        }

    def to_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "splits": {name: split.to_dict() for name, split in self.splits.items()},
            "leakage": {**self.leakage.to_dict(), "pairs": self.leakage_pairs},
            "conflicting_labels": self.conflicting_labels.to_dict(),
            "empty_classes": self.empty_classes,
            "unknown_classes": self.unknown_classes,
            "problems": self.problems(),
            "settings": {"min_side": self.min_side, "decoded": self.decoded},
            "seconds": round(self.seconds, 3),
        }

    def lines(self) -> list[str]:
        out = [f"dataset fingerprint {self.fingerprint}"]
        for name, split in self.splits.items():
            data = split.to_dict()
            out.append(
                f"{name}: {data['images']} images, {data['classes']} classes, imbalance {data['imbalance_ratio']}, "
                f"{data['unreadable']['count']} unreadable, {data['tiny']['count']} tiny, {data['duplicates']['count']} duplicates"
            )
        problems = self.problems()
        out += [f"problem: {p}" for p in problems] or ["no problems found"]
        out.append(f"checked in {self.seconds:.1f}s")
        return out


def _read_bytes(source: str | RecordRef | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, RecordRef):
        return source.read_image()
    return Path(source).read_bytes()


def _image_size(data: bytes, decode: bool, limits: images.ImageLimits) -> tuple[int, int]:
    """(width, height); ImageRejected, or the decoder's own error, when unreadable."""
    if decode:
        image = images.load_rgb(data, limits)
        return image.size
    with Image.open(io.BytesIO(data)) as image:
        images.check_geometry(*image.size, limits)
        return image.size


@dataclass(frozen=True)
class Inspected:
    size: int  # bytes read; -1 when the image could not be read at all
    digest: bytes | None
    dimensions: tuple[int, int] | None
    problem: str | None


def inspect(sample: Sample, decode: bool, limits: images.ImageLimits) -> Inspected:
    """One image's bytes, hash, size and what is wrong with it (runs in a thread pool:
    reading and hashing release the GIL)."""
    try:
        data = _read_bytes(sample.source)
    except OSError as err:
        return Inspected(-1, None, None, f"cannot read: {err.strerror or err}")
    digest = hashlib.sha256(data).digest()
    try:
        return Inspected(len(data), digest, _image_size(data, decode, limits), None)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure makes the image unreadable
        return Inspected(len(data), digest, None, str(err) or type(err).__name__)


def _batches(samples: Iterable[Sample], size: int):
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _labels_text(sample: Sample) -> str:
    return "|".join(str(label) for label in sample.labels)


def check(
    splits: Mapping[str, Iterable[Sample]],
    min_side: int = DEFAULT_MIN_SIDE,
    decode: bool = False,
    limits: images.ImageLimits | None = None,
    threads: int | None = None,
) -> DataReport:
    """Check every image of every split (train first: its classes are the reference),
    `threads` images at a time (default: the CPUs this container may use)."""
    limits = limits or images.ImageLimits()
    started = time.perf_counter()
    reports: dict[str, SplitReport] = {}
    lines: dict[str, list[str]] = {}
    first_seen: dict[bytes, tuple[str, str, str]] = {}  # digest -> (split, key, labels) of its first copy
    groups: dict[bytes, list[tuple[str, str, str]]] = {}  # digest -> every copy, for digests seen twice
    with ThreadPoolExecutor(threads or cpu_count()) as pool:
        for name, samples in splits.items():
            report = reports[name] = SplitReport()
            entries = lines[name] = []
            for batch in _batches(samples, 256):  # bounded: a stream is never held whole
                for sample, found in zip(batch, pool.map(lambda s: inspect(s, decode, limits), batch), strict=True):
                    report.images += 1
                    report.census.add(sample)
                    labels = _labels_text(sample)
                    entries.append(f"{name}\t{sample.key}\t{labels}\t{found.digest.hex() if found.digest else 'missing'}\n")
                    if found.problem is not None:
                        report.unreadable.add({"image": sample.key, "reason": found.problem})
                        report.unreadable_keys.add(sample.key)
                    if found.digest is None:
                        continue
                    report.bytes += found.size
                    copy = (name, sample.key, labels)
                    if found.digest in first_seen:
                        groups.setdefault(found.digest, [first_seen[found.digest]]).append(copy)
                    else:
                        first_seen[found.digest] = copy
                    if found.dimensions is not None and min(found.dimensions) < min_side:
                        report.tiny.add({"image": sample.key, "size": list(found.dimensions)})
            entries.sort()
            report.fingerprint = hashlib.sha256("".join(entries).encode()).hexdigest()

    leakage, conflicting, pairs = Finding(), Finding(), Counter()
    for copies in groups.values():
        in_splits = sorted({split for split, _, _ in copies}, key=list(splits).index)
        for split in in_splits:
            keys = [key for s, key, _ in copies if s == split]
            if len(keys) > 1:
                reports[split].duplicates.add(keys[:5], count=len(keys) - 1)
        example = [{"split": s, "image": key, "labels": labels} for s, key, labels in copies[:5]]
        if len(in_splits) > 1:
            leakage.add(example)
            for i, first in enumerate(in_splits):
                for second in in_splits[i + 1 :]:
                    pairs[f"{first}/{second}"] += 1
        if len({labels for _, _, labels in copies}) > 1:
            conflicting.add(example)

    empty, unknown = {}, {}
    if "train" in reports:
        train = reports["train"].census
        train_labels = set(train.counts)
        for name, report in reports.items():
            labels = set(report.census.counts)
            if name == "train":
                if train.kind == "id" and train.counts:
                    empty[name] = [train.id_names.get(i) or str(i) for i in range(max(train.counts) + 1) if i not in train.counts]
                continue
            empty[name] = sorted(str(label) for label in train_labels - labels)
            unknown[name] = sorted(str(label) for label in labels - train_labels)
    fingerprint = hashlib.sha256("".join(sorted(line for entries in lines.values() for line in entries)).encode()).hexdigest()
    return DataReport(
        splits=reports,
        leakage=leakage,
        leakage_pairs=dict(sorted(pairs.items())),
        conflicting_labels=conflicting,
        empty_classes=empty,
        unknown_classes=unknown,
        fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        min_side=min_side,
        decoded=decode,
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train check-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", help="training split (default: from the SageMaker channels)")
    parser.add_argument("--valid-dir", help="validation split")
    parser.add_argument("--test-dir", help="test split")
    parser.add_argument("--data-format", default="auto", choices=DATA_FORMATS, help="how the splits are stored (default: detected)")
    parser.add_argument("--label-format", choices=LABEL_FORMATS, help="RecordIO and .lst labels: class ids or a multi-hot vector")
    parser.add_argument("--label-attribute", help="Ground Truth manifests: the label attribute (default: found from its metadata)")
    parser.add_argument("--label-separator", help="plain manifests: split a label cell into several labels")
    parser.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="report images with a side shorter than this (pixels)")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (finds truncated files; costs a decode per image)")
    parser.add_argument("--output", help="write the full report as JSON to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any problem is found")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    options = FormatOptions(
        data_format=args.data_format,
        label_format=args.label_format,
        label_attribute=args.label_attribute,
        label_separator=args.label_separator,
    )
    try:
        channels = {} if args.train_dir else read_input_data_config(SageMakerPaths.from_env())
        data = plan(channels, options, args.train_dir, args.valid_dir, args.test_dir)
        print(data.describe(), flush=True)
        streamed = [name for name, source in data.splits().items() if source.pipe]
        if streamed:
            print(f"not checked here: {streamed} stream in Pipe mode (the trainer checks them in its census pass)", flush=True)
        report = check({name: source.read() for name, source in data.splits().items() if not source.pipe}, args.min_side, args.decode)
    except ConfigError as err:
        print(f"check-data: {err}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    for line in report.lines():
        print(line, flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 1 if args.strict and report.problems() else 0
