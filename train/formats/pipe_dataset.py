"""StreamSamples: a rank's share of a Pipe-mode channel (train.formats.pipe.PipeReader)
as a torch IterableDataset of (tensor, target), decoded in the DataLoader's workers."""

from __future__ import annotations

import logging
import multiprocessing
import threading

from torch.utils.data import IterableDataset, get_worker_info

from train.formats.bad_images import BadImages
from train.formats.fifo import claim_pass
from train.formats.labels import Targets
from train.formats.pipe import PipeReader
from vision import images

log = logging.getLogger(__name__)


class StreamSamples(IterableDataset):
    """A rank's share of a Pipe-mode channel as (tensor, target) pairs, for a DataLoader
    with num_workers=reader.workers and no sampler.

    Call `start_pass()` on every rank, in the main process, before each iter(loader): it
    numbers the pass, and on local rank 0 of a fan-out host starts the thread that deals
    the stream. `skip_batches` resumes a pass mid-way (the batches this rank already did).
    """

    def __init__(self, reader: PipeReader, targets: Targets, transform, target_transform=None, bad: BadImages | None = None, limits=None):
        self.reader = reader
        self.targets = targets
        self.transform = transform
        self.target_transform = target_transform
        self.bad = bad
        self.limits = limits or images.ImageLimits()
        context = multiprocessing.get_context()
        self._sequence = context.Value("q", -1)  # shared with persistent workers
        self._skip = context.Value("q", 0)
        self._batch_size = context.Value("q", 1)
        self.fanout_thread: threading.Thread | None = None
        self.fanout_error: BaseException | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["fanout_thread"] = None  # threads stay in the main process
        return state

    def start_pass(self, skip_batches: int = 0, batch_size: int = 1) -> int:
        if self.fanout_error is not None:
            raise self.fanout_error
        with self._sequence.get_lock():
            self._sequence.value += 1
            sequence = self._sequence.value
        self._skip.value, self._batch_size.value = skip_batches, batch_size
        if self.reader.fanout and self.reader.topology.local_rank == 0:
            # Claimed here, not in the thread: a loader worker forked while the thread held
            # the counter file's lock would keep it locked.
            number = claim_pass(self.reader.state_dir, self.reader.channel.name)
            self.fanout_thread = threading.Thread(
                target=self._distribute, args=(sequence, number), name=f"pipe-fanout-{sequence}", daemon=True
            )
            self.fanout_thread.start()
        return sequence

    def _distribute(self, sequence: int, number: int) -> None:
        try:
            self.reader.distribute(sequence, number)
        except BaseException as err:  # noqa: BLE001 - kept for start_pass; the consumers got the message
            self.fanout_error = err

    def _skip_for(self, worker: int, workers: int) -> int:
        # The DataLoader takes batches from its workers in turn: worker w made batches w, w + W, ...
        done = len(range(worker, self._skip.value, max(1, workers)))
        return done * self._batch_size.value

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 0)
        if workers != self.reader.workers:
            raise RuntimeError(f"StreamSamples was set up for num_workers={self.reader.workers}, the DataLoader has {workers}")
        sequence = self._sequence.value
        if sequence < 0:
            raise RuntimeError("call StreamSamples.start_pass() before each pass over the loader")
        skip = self._skip_for(worker, workers)
        pending = 0
        for number, sample in enumerate(self.reader.samples(sequence, worker)):
            if number < skip:
                continue
            target = self.targets.index(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            try:
                tensor = self.transform(images.load_rgb(sample.source, self.limits))
            except (OSError, ValueError) as err:  # images.ImageRejected is a ValueError
                log.warning("skipping undecodable image %s: %s", sample.where, err)
                if self.bad is not None:
                    self.bad.record_bad(sample.where, err)
                pending += 1
                continue
            if self.bad is not None:
                self.bad.record_ok()
            for _ in range(pending + 1):  # a skipped image's place goes to this one
                yield tensor, target
            pending = 0
