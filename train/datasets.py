"""The data of a run, decided once at start and alike on every rank: which format each
split is in (train.formats.plan; its description is the first data log line), the
dataset check (train.check_data) on the main process, the class list every rank trains
on, and each File-mode split's samples as (source, target) pairs. Pipe-mode splits are
streamed by their loaders (train.loaders); here they are read once, by the main process,
for the check or the census that gives the classes and the images per pass.

What the main process finds is broadcast, so every rank builds the same classes and
targets; each rank reads the File-mode index itself (cheap: no image is opened).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from container import ConfigError, SageMakerPaths, read_input_data_config
from train import check_data, data, distributed, formats
from train.config import TrainConfig
from train.data_report import DataReport
from train.formats import DataPlan, LabelCensus, Sample, Targets
from train.formats.imagefolder import list_image_folder
from train.formats.pipe import PipeReader, PipeTopology

log = logging.getLogger(__name__)

CHECK_FILE = "data_check.json"  # the full check report, beside metrics.json


@dataclass
class RunData:
    plan: DataPlan
    classes: list[str]
    targets: Targets  # how a sample's labels become its target (single- or multi-label)
    train_census: LabelCensus  # the training split's labels, as read
    report: DataReport | None  # None with check_data=false
    samples: dict[str, list[tuple]]  # File-mode splits ("train", "validation", "test") -> [(source, target)]
    stream_images: dict[str, int]  # Pipe-mode splits -> images in one pass, where counted

    @property
    def multi_label(self) -> bool:
        return self.targets.multi_label

    def class_counts(self) -> list[int]:
        """Training images per class, in class order."""
        keys = range(len(self.classes)) if self.train_census.kind == "id" else self.classes
        return [self.train_census.counts.get(key, 0) for key in keys]

    def summary(self) -> dict:
        """The check's compact summary (fingerprint, counts of each problem); {} unchecked."""
        return self.report.summary() if self.report is not None else {}

    def is_pipe(self, split: str) -> bool:
        return is_pipe_split(self.plan, split)


def is_pipe_split(plan: DataPlan, split: str) -> bool:
    source = plan.splits().get(split)
    return source is not None and source.pipe


@dataclass
class Survey:
    """What the main process found and every rank needs."""

    report: DataReport | None
    censuses: dict[str, LabelCensus]


def load(config: TrainConfig, paths: SageMakerPaths, process: distributed.Process, output_dir: Path) -> RunData:
    plan = formats.plan(read_input_data_config(paths), config.format_options(), config.train_dir, config.valid_dir, config.test_dir)
    if process.is_main:
        log.info("%s", plan.describe())
    refuse_unsupported(config, plan, process)
    files = {name: source.read() for name, source in plan.splits().items() if not source.pipe}
    survey = distributed.broadcast_from_main(run_survey(config, plan, files, process) if process.is_main else None, process)
    if survey.report is not None:
        if process.is_main:
            report_check(survey.report, output_dir)
        files = {name: [s for s in found if s.key not in survey.report.splits[name].unreadable_keys] for name, found in files.items()}
        check_unreadable(config, survey.report)
    train_census = survey.censuses["train"]
    classes = train_census.classes(config.num_classes)
    targets = Targets(classes, train_census.kind, decide_multi_label(config, plan, train_census))
    check_classes(config, plan, targets, files)
    samples = {name: [(s.source, targets.index(s)) for s in found] for name, found in files.items()}
    if plan.validation is None:
        samples["train"], samples["validation"] = data.holdout_split(samples["train"], config.val_fraction, config.seed)
        if process.is_main:
            log.info("no validation split found: holding out %.0f%% of %s", 100 * config.val_fraction, plan.train.root)
    if not is_pipe_split(plan, "validation") and not samples["validation"]:
        raise ConfigError("the validation split is empty: add images to valid/ or raise val_fraction")
    streams = {name: census.images for name, census in survey.censuses.items() if plan.splits()[name].pipe}
    run_data = RunData(plan, classes, targets, train_census, survey.report, samples, streams)
    if process.is_main:
        log_counts(run_data)
    return run_data


def refuse_unsupported(config: TrainConfig, plan: DataPlan, process: distributed.Process) -> None:
    """What Pipe mode cannot do, said before anything is read."""
    if not plan.train.pipe:
        return
    if config.sampler == "balanced":
        raise ConfigError("sampler=balanced needs File mode: a Pipe-mode stream cannot be resampled; use class_weighted_loss=true instead")
    if plan.validation is None:
        raise ConfigError(
            f"the training channel {plan.train.channel.name} is in Pipe mode, so no validation split can be held out of it: "
            "add a 'validation' channel"
        )
    hosts = process.world_size // PipeTopology.from_env().local_world_size
    if plan.train.channel.distribution == "ShardedByS3Key" and hosts > 1:
        raise ConfigError(
            f"channel {plan.train.channel.name}: Pipe mode with S3DistributionType=ShardedByS3Key on {hosts} hosts gives the hosts "
            "different amounts of data, so their ranks could not take the same steps; use FullyReplicated (as the built-in "
            "algorithm requires in Pipe mode)"
        )


def run_survey(config: TrainConfig, plan: DataPlan, files: dict[str, list[Sample]], process: distributed.Process) -> Survey:
    """Main process: the check over every split (train first), or without it the census
    of each split. A Pipe-mode split is read here, in a pass of its own (its channel's
    first FIFO); without the check only the training stream is read."""
    streams = {name: stream_samples(source, process) for name, source in plan.splits().items() if source.pipe}
    if config.check_data:
        report = check_data.check({name: files.get(name, streams.get(name)) for name in plan.splits()})
        return Survey(report, {name: split.census for name, split in report.splits.items()})
    censuses = {name: formats.census(found) for name, found in files.items()}
    if "train" in streams:
        censuses["train"] = formats.census(streams["train"])
    return Survey(None, censuses)


def stream_samples(source, process: distributed.Process):
    """Every sample of the next pass over a Pipe-mode split (read here, on the main process)."""
    topology = PipeTopology(process.rank, process.world_size, process.local_rank, PipeTopology.from_env().local_world_size)
    return PipeReader(source, topology, workers=0, complete_rounds=False).channel_samples()


def report_check(report: DataReport, output_dir: Path) -> None:
    for line in report.lines():
        log.info("check-data: %s", line)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CHECK_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def check_unreadable(config: TrainConfig, report: DataReport) -> None:
    """Unreadable images are left out; more than max_bad_fraction of them fails the job."""
    bad = sum(split.unreadable.count for split in report.splits.values())
    if not bad:
        return
    total = sum(split.images for split in report.splits.values())
    examples = [example["image"] for split in report.splits.values() for example in split.unreadable.examples][:3]
    log.warning("skipped %d unreadable or non-image files, e.g. %s", bad, examples)
    if bad / total > config.max_bad_fraction:
        raise ConfigError(
            f"{bad} of {total} files ({100 * bad / total:.1f}%) are not readable images, more than "
            f"max_bad_fraction={config.max_bad_fraction}; first: {examples}"
        )


def decide_multi_label(config: TrainConfig, plan: DataPlan, census: LabelCensus) -> bool:
    if config.multi_label != "auto":
        return config.multi_label == "true"
    return census.multi_label or plan.train.options.multi_hot


def check_classes(config: TrainConfig, plan: DataPlan, targets: Targets, files: dict[str, list[Sample]]) -> None:
    """Enough classes, and (class folders) no training class folder left without images."""
    if config.objective == "val_map" and not targets.multi_label:
        raise ConfigError("objective=val_map is for multi-label training: this data is single-label (or set multi_label=true)")
    if len(targets.classes) < (1 if targets.multi_label else 2):
        raise ConfigError(f"the training data has {len(targets.classes)} class(es); classification needs at least 2")
    if plan.train.format == "imagefolder" and "train" in files:
        counts = Counter(label for sample in files["train"] for label in sample.labels)
        for name in list_image_folder(plan.train.root)[0]:
            if not counts[name]:
                raise ConfigError(f"class folder {plan.train.root / name} contains no readable images")


def log_counts(run_data: RunData) -> None:
    def count(split: str) -> str:
        if split in run_data.stream_images:
            return f"{run_data.stream_images[split]} (per pass)"
        if run_data.is_pipe(split):
            return "streamed"
        return str(len(run_data.samples[split])) if split in run_data.samples else "no"

    log.info(
        "data: %d classes%s, %s train / %s valid / %s test images",
        len(run_data.classes),
        " (multi-label)" if run_data.multi_label else "",
        count("train"),
        count("validation"),
        count("test"),
    )
