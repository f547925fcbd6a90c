"""What `train check-data` (train.check_data) finds in a dataset: per split the unreadable,
tiny and duplicate images and the label census; across splits leakage and conflicting
labels; and the dataset fingerprint. `DataReport.summary()` is the compact form that
metrics.json, the model spec, MLflow and the model registry carry; `to_dict()` is the
full report (output/data/data_check.json)."""

from __future__ import annotations

from dataclasses import dataclass, field

from train.formats import LabelCensus

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
