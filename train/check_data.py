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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from container import EXIT_CONFIG, ConfigError, SageMakerPaths, cpu_count, read_input_data_config
from train.data_report import DataReport, Finding, SplitReport
from train.formats import DATA_FORMATS, LABEL_FORMATS, FormatOptions, RecordRef, Sample, plan
from vision import images

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 32  # below this a 224-pixel model sees mostly interpolation


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

    leakage, conflicting, pairs = _copies_across(groups, reports, list(splits))
    empty, unknown = _class_coverage(reports)
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


def _copies_across(groups: dict[bytes, list[tuple[str, str, str]]], reports: dict[str, SplitReport], order: list[str]):
    """Duplicates within each split (into its report), leakage across splits and
    identical images labelled differently, from the groups of identical images."""
    leakage, conflicting, pairs = Finding(), Finding(), Counter()
    for copies in groups.values():
        in_splits = sorted({split for split, _, _ in copies}, key=order.index)
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
    return leakage, conflicting, pairs


def _class_coverage(reports: dict[str, SplitReport]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per split: the training classes it has no image of, and classes training lacks."""
    empty, unknown = {}, {}
    if "train" not in reports:
        return empty, unknown
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
    return empty, unknown


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
