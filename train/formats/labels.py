"""From the labels readers find to the class list a model is trained on, and the
targets the loss sees.

Readers give class ids (RecordIO, .lst, Ground Truth) or class names (class folders,
plain manifests). A `LabelCensus` of the training split decides the classes:
- ids: classes 0 .. N-1, N = num_classes when given (the built-in algorithm's
  hyperparameter) else the largest id + 1; each named by the data where it says (Ground
  Truth's class-name / class-map), else by its number;
- names: sorted, numerically when every name is a whole number (so "2" < "10").
Every rank must train on the same class list: in File mode each rank reads the same
index; in Pipe mode the census comes from one pass over the stream (or num_classes), and
censuses of different hosts (ShardedByS3Key) merge (`merge`, `to_dict`/`from_dict` for
torch.distributed.all_gather_object).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from train.formats.base import DataFormatError, Sample


@dataclass
class LabelCensus:
    counts: Counter = field(default_factory=Counter)  # class id or name -> images
    id_names: dict[int, str] = field(default_factory=dict)
    images: int = 0
    max_labels: int = 0  # most labels on one image: > 1 (or 0) means multi-label data
    min_labels: int | None = None
    kind: str | None = None  # "id" or "name", from the first labelled image
    first_where: str = ""

    def add(self, sample: Sample) -> None:
        self.images += 1
        self.max_labels = max(self.max_labels, len(sample.labels))
        self.min_labels = len(sample.labels) if self.min_labels is None else min(self.min_labels, len(sample.labels))
        if not sample.labels:
            return
        kind = "id" if isinstance(sample.labels[0], int) else "name"
        if self.kind is None:
            self.kind, self.first_where = kind, sample.where
        elif kind != self.kind:
            raise DataFormatError(f"{sample.where}: labels are class {kind}s, but {self.first_where} has class {self.kind}s")
        self.counts.update(sample.labels)
        for label, name in zip(sample.labels, sample.names, strict=False):  # names may be absent
            if not name:
                continue
            known = self.id_names.setdefault(label, name)
            if known != name:
                raise DataFormatError(f"{sample.where}: class id {label} is named {name!r} here but {known!r} elsewhere")

    def merge(self, other: LabelCensus) -> LabelCensus:
        merged = LabelCensus.from_dict(self.to_dict())
        if other.kind and merged.kind and other.kind != merged.kind:
            raise DataFormatError(f"labels are class {merged.kind}s on one host and class {other.kind}s on another")
        merged.kind = merged.kind or other.kind
        merged.counts.update(other.counts)
        for label, name in other.id_names.items():
            if merged.id_names.setdefault(label, name) != name:
                raise DataFormatError(f"class id {label} is named {name!r} on one host and {merged.id_names[label]!r} on another")
        merged.images += other.images
        merged.max_labels = max(merged.max_labels, other.max_labels)
        lows = [m for m in (merged.min_labels, other.min_labels) if m is not None]
        merged.min_labels = min(lows) if lows else None
        return merged

    @property
    def multi_label(self) -> bool:
        """Whether the data itself shows multi-label images (several labels, or none)."""
        return self.max_labels > 1 or self.min_labels == 0

    def classes(self, num_classes: int | None = None) -> list[str]:
        if not self.counts and not num_classes:
            raise DataFormatError("no labelled images found")
        if self.kind == "name":
            names = list(self.counts)
            if num_classes is not None and num_classes != len(names):
                raise DataFormatError(f"num_classes={num_classes}, but the data names {len(names)} classes")
            numeric = all(name.lstrip("-").isdigit() for name in names)
            return sorted(names, key=int) if numeric else sorted(names)
        largest = max(self.counts, default=-1)
        if num_classes is not None and largest >= num_classes:
            raise DataFormatError(f"class id {largest} found, but num_classes={num_classes} (ids run from 0 to num_classes-1)")
        size = num_classes if num_classes is not None else largest + 1
        return [self.id_names.get(i) or str(i) for i in range(size)]

    def to_dict(self) -> dict:
        return {
            "counts": [[k, v] for k, v in self.counts.items()],
            "id_names": [[k, v] for k, v in self.id_names.items()],
            "images": self.images,
            "max_labels": self.max_labels,
            "min_labels": self.min_labels,
            "kind": self.kind,
            "first_where": self.first_where,
        }

    @classmethod
    def from_dict(cls, data: dict) -> LabelCensus:
        return cls(
            counts=Counter({k: v for k, v in data["counts"]}),
            id_names={k: v for k, v in data["id_names"]},
            images=data["images"],
            max_labels=data["max_labels"],
            min_labels=data["min_labels"],
            kind=data["kind"],
            first_where=data["first_where"],
        )


def census(samples) -> LabelCensus:
    result = LabelCensus()
    for sample in samples:
        result.add(sample)
    return result


class Targets:
    """A sample's labels as class indices into `classes`: an int for single-label
    training, a tuple of ints for multi-label (MultiHot makes the loss target of it).
    Picklable, so DataLoader workers carry it."""

    def __init__(self, classes: list[str], kind: str, multi_label: bool):
        self.classes = list(classes)
        self.kind = kind
        self.multi_label = multi_label
        self.by_name = {name: i for i, name in enumerate(self.classes)}

    def index(self, sample: Sample) -> int | tuple[int, ...]:
        if self.kind == "name":
            try:
                indices = tuple(self.by_name[label] for label in sample.labels)
            except KeyError as err:
                raise DataFormatError(f"{sample.where}: class {err.args[0]!r} is not among the training classes") from None
        else:
            for label in sample.labels:
                if not 0 <= label < len(self.classes):
                    raise DataFormatError(f"{sample.where}: class id {label} is outside 0..{len(self.classes) - 1}")
            indices = tuple(sample.labels)
        if self.multi_label:
            return tuple(sorted(set(indices)))
        if len(indices) != 1:
            raise DataFormatError(
                f"{sample.where}: {len(indices)} labels on a single-label task; train multi-label for images with several (or no) labels"
            )
        return indices[0]


class MultiHot:
    """A tuple of class indices -> a float 0/1 vector of num_classes (BCE targets)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, indices: tuple[int, ...]):
        import torch  # here, so the readers and train.config stay importable without torch (docs/reference.py)

        target = torch.zeros(self.num_classes, dtype=torch.float32)
        if indices:
            target[list(indices)] = 1.0
        return target
