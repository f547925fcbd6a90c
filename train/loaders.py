"""Each rank's loader of every split, File or Pipe mode behind one interface.

File mode: a sampler shards the (source, target) list; training is shuffled (or drawn
class-balanced) and padded so all ranks take the same number of steps, evaluation is
unpadded so every image counts once. Pipe mode: a StreamSamples dataset reads this
rank's share of the next pass over the channel's FIFOs (train.formats.pipe); training
takes complete rounds, so every rank again takes the same number of steps.

`SplitLoader.begin(epoch, skip_batches)` starts each pass (an epoch, or an evaluation):
it sets the sampler's epoch, or opens the stream's next pass, on every rank.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from torch.utils.data import DataLoader

from train import data, distributed
from train.config import TrainConfig
from train.datasets import RunData
from train.formats import BadImages, MultiHot
from train.formats.pipe import PipeReader, PipeTopology
from train.formats.pipe_dataset import StreamSamples
from vision import presets


@dataclass
class SplitLoader:
    loader: DataLoader
    steps: int | None  # batches per pass on this rank (training: the same on every rank); None when unknown
    stream: StreamSamples | None = None  # Pipe mode

    def begin(self, epoch: int = 0, skip_batches: int = 0) -> DataLoader:
        """The loader, ready for a pass: `skip_batches` already done (mid-epoch resume)."""
        if self.stream is not None:
            self.stream.start_pass(skip_batches=skip_batches, batch_size=self.loader.batch_size)
        else:
            self.loader.sampler.set_epoch(epoch, skip=skip_batches * self.loader.batch_size)
        return self.loader


@dataclass
class Loaders:
    train: SplitLoader
    valid: SplitLoader
    test: SplitLoader | None
    bad: BadImages  # undecodable images of this rank, counted by its loader workers
    train_images: int  # images in an epoch, all ranks together

    @property
    def steps_per_epoch(self) -> int:
        return self.train.steps


def transforms(config: TrainConfig, prep: presets.Preprocessing):
    """(training, evaluation) transforms: random-resized crop and flip for training, or with
    augment=false the evaluation transform for both, so a training image is seen exactly as served."""
    evaluation = presets.eval_transform_for(prep)
    if not config.augment:
        return evaluation, evaluation
    return presets.train_transform(prep.image_size, prep.mean, prep.std, prep.interpolation), evaluation


def make_loaders(config: TrainConfig, run_data: RunData, prep: presets.Preprocessing, process: distributed.Process) -> Loaders:
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = config.num_workers if config.num_workers >= 0 else data.default_num_workers(local_processes)
    topology = PipeTopology(process.rank, process.world_size, process.local_rank, local_processes)
    bad = BadImages(config.max_bad_fraction)
    train_tf, eval_tf = transforms(config, prep)
    target_tf = MultiHot(len(run_data.classes)) if run_data.multi_label else None
    pin = process.device.type == "cuda"

    def split_loader(split: str, training: bool) -> SplitLoader:
        transform = train_tf if training else eval_tf
        if run_data.is_pipe(split):
            reader = PipeReader(run_data.plan.splits()[split], topology, workers, complete_rounds=training)
            stream = StreamSamples(reader, run_data.targets, transform, target_tf, bad)
            loader = DataLoader(
                stream,
                batch_size=config.batch_size,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
                worker_init_fn=data._leave_process_group,
            )
            images = run_data.stream_images.get(split)
            return SplitLoader(loader, None if images is None else reader.batches_per_pass(images, config.batch_size), stream)
        samples = run_data.samples[split]
        dataset = data.ImageSamples(samples, transform, target_transform=target_tf, bad=bad)
        if training and config.sampler == "balanced":
            sampler = data.BalancedSampler(data.balance_weights(samples), process.rank, process.world_size, config.seed)
        else:
            sampler = data.ShardSampler(len(samples), process.rank, process.world_size, config.seed, shuffle=training, pad=training)
        return SplitLoader(data.make_loader(dataset, sampler, config.batch_size, workers, pin), math.ceil(len(sampler) / config.batch_size))

    train = split_loader("train", training=True)
    valid = split_loader("validation", training=False)
    test = split_loader("test", training=False) if "test" in run_data.plan.splits() else None
    train_images = run_data.stream_images["train"] if run_data.is_pipe("train") else len(run_data.samples["train"])
    return Loaders(train, valid, test, bad, train_images)
