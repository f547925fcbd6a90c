"""Plain manifests: a CSV or JSON-lines file of image path and label beside the images,
as Kaggle-style datasets and other tools ship them.

CSV: with a header naming the columns (a path column such as `path`, `image`, `file` or
`filename`, and a label column such as `label`, `labels`, `class` or `category`; other
columns are ignored), or without one: the path first, then one or more labels.
JSON lines: {"path": "cats/1.jpg", "label": "cat"}, with the same key names; a list of
labels is a multi-label image. Labels are class names; `label_separator` splits one cell
into several (e.g. " " for "haze primary"). Paths are relative to the manifest's folder
and may not leave the channel.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from train.formats.base import DataFormatError, Sample, inside, json_objects

PATH_COLUMNS = ("path", "image", "file", "filename", "image_path", "filepath", "file_path", "image_id")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "tags")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".json", ".manifest")


def _split(cell, separator: str | None) -> tuple[str, ...]:
    text = str(cell).strip()
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(separator) if part.strip()) if separator else (text,)


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [cell.strip().lower() for cell in header]
    return next((lowered.index(name) for name in names if name in lowered), None)


def read_csv(manifest: Path, channel_root: Path, separator: str | None) -> list[Sample]:
    folder = manifest.parent
    base = folder.relative_to(channel_root).as_posix() if folder != channel_root else ""
    samples = []
    with open(manifest, encoding="utf-8-sig", newline="") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header is None:
            raise DataFormatError(f"{manifest.name} is empty")
        path_column, label_column = _column(header, PATH_COLUMNS), _column(header, LABEL_COLUMNS)
        has_header = path_column is not None or label_column is not None
        if has_header and (path_column is None or label_column is None):
            raise DataFormatError(
                f"{manifest.name} line 1: the header {header} needs a path column (one of {', '.join(PATH_COLUMNS)}) "
                f"and a label column (one of {', '.join(LABEL_COLUMNS)})"
            )
        numbered = enumerate(rows, 2) if has_header else enumerate(itertools.chain([header], rows), 1)
        for number, row in numbered:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{manifest.name} line {number}"
            if has_header:
                if len(row) <= max(path_column, label_column):
                    raise DataFormatError(f"{where}: {len(row)} columns, the header has {len(header)}")
                relative, labels = row[path_column], _split(row[label_column], separator)
            else:
                if len(row) < 2:
                    raise DataFormatError(f"{where}: expected 'path,label', found {row[:3]}")
                relative = row[0]
                labels = tuple(label for cell in row[1:] for label in _split(cell, separator))
            samples.append(_sample(channel_root, base, relative, labels, where))
    return samples


def read_jsonl(manifest: Path, channel_root: Path, separator: str | None) -> list[Sample]:
    folder = manifest.parent
    base = folder.relative_to(channel_root).as_posix() if folder != channel_root else ""
    samples = []
    for where, line in json_objects(manifest):
        keys = {key.lower(): key for key in line}
        path_key = next((keys[name] for name in PATH_COLUMNS if name in keys), None)
        label_key = next((keys[name] for name in LABEL_COLUMNS if name in keys), None)
        if path_key is None or label_key is None:
            raise DataFormatError(
                f"{where}: needs a path key (one of {', '.join(PATH_COLUMNS)}) and a label key "
                f"(one of {', '.join(LABEL_COLUMNS)}); found {sorted(line)}"
            )
        value = line[label_key]
        if isinstance(value, list):
            labels = tuple(label for item in value for label in _split(item, separator))
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            labels = _split(value, separator)
        else:
            raise DataFormatError(f"{where}: label {value!r} is not a class name or a list of them")
        samples.append(_sample(channel_root, base, str(line[path_key]), labels, where))
    return samples


def _sample(channel_root: Path, base: str, relative: str, labels: tuple[str, ...], where: str) -> Sample:
    key = f"{base}/{relative.strip()}" if base else relative.strip()
    inside(channel_root, relative, where)  # the path alone must not leave the channel
    return Sample(str(inside(channel_root, key, where)), labels, key=key, where=where)


def read(manifest: Path, channel_root: Path, separator: str | None) -> list[Sample]:
    if manifest.suffix.lower() in CSV_SUFFIXES:
        return read_csv(manifest, channel_root, separator)
    return read_jsonl(manifest, channel_root, separator)
