"""Pipe mode: each rank reads its share of a streamed channel, once per pass, without
holding the stream in memory.

SageMaker delivers a Pipe-mode channel as a FIFO per pass over the data,
/opt/ml/input/data/<channel>_0, <channel>_1, ..., each read once, in order, by one
reader. What this module adds on top:

Shares. A consumer is one DataLoader worker of one rank (the rank itself with
num_workers=0). The stream's images are dealt round-robin: image i goes to consumer
i % consumers. With FullyReplicated every host receives the whole stream, so the
consumers are all of the job's (world_size x workers); with ShardedByS3Key each host
receives its own part and deals it among its own consumers. Only the owner of an image
decodes it. With `complete_rounds` (training) an incomplete last round is dropped, so
every consumer, and so every rank, takes the same number of images and of steps (under
ShardedByS3Key hosts still differ: the loop must agree when to stop).

Reading on one host. A FIFO has one reader. When a host has one consumer, it reads the
channel FIFO itself and keeps its share. Otherwise local rank 0 runs a fan-out thread
(started by StreamSamples.start_pass) that reads the channel FIFO, parses every image's
labels (not its pixels) and writes each owned image, framed as RecordIO, to its
consumer's own FIFO under `state_dir`. Bounded memory: at most one round of images.

Pass numbers. The channel FIFOs count passes for the life of the container, across
worker restarts; a small counter file per channel in `state_dir` remembers the next one,
so a census pass, the epochs, the evaluations and a restarted worker each open the next
FIFO. Consumer FIFOs are numbered by StreamSamples' own pass sequence instead.

Undecodable images are replaced by the consumer's next readable image (counted in
BadImages), which keeps every consumer's count equal: a skipped image would leave one
rank a step short in a collective.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import multiprocessing
import os
import select
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from torch.utils.data import IterableDataset, get_worker_info

from container import ConfigError
from train.formats import recordio
from train.formats.bad_images import BadImages
from train.formats.base import DataFormatError, Sample
from train.formats.labels import Targets
from vision import images

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 600.0  # SageMaker starts streaming within seconds; a missing peer should not hang a job forever
READ_BUFFER = 1 << 20


class PipeTimeout(ConfigError):
    """A FIFO whose other end never came."""


@dataclass(frozen=True)
class PipeTopology:
    """Where this process sits in the job: torchrun's RANK, WORLD_SIZE, LOCAL_RANK and
    LOCAL_WORLD_SIZE (ranks of one host are consecutive)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ=None) -> PipeTopology:
        environ = os.environ if environ is None else environ
        return cls(
            int(environ.get("RANK", "0")),
            int(environ.get("WORLD_SIZE", "1")),
            int(environ.get("LOCAL_RANK", "0")),
            int(environ.get("LOCAL_WORLD_SIZE", "1")),
        )


def default_state_dir(environ=None) -> Path:
    """Shared by the ranks of one host and kept across worker restarts of one launch
    (torchrun's run id), distinct between launches."""
    environ = os.environ if environ is None else environ
    run = environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    return Path(tempfile.gettempdir()) / f"sm-vision-pipes-{run}"


# --- FIFOs ------------------------------------------------------------------------------

# The ends of FIFOs this process holds for a whole pass (the channel's read end, the
# fan-out's write ends). A DataLoader worker forked while the fan-out thread holds them
# would get copies, and a consumer whose write end has a copy never sees its stream end.
# So they are tracked, and a forked child points its copies at /dev/null.
_tracked_fds: set[int] = set()
_tracked_lock = threading.Lock()
_fork_hook_installed = False


def _child_drops_tracked_fds() -> None:
    # Not os.close: the parent's file objects copied into the child may still close these
    # numbers; a /dev/null in their place keeps that harmless.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in _tracked_fds:
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)
    _tracked_fds.clear()
    _tracked_lock.release()  # taken before the fork by the forking thread


def _open_tracked(path: Path, flags: int) -> int:
    global _fork_hook_installed
    with _tracked_lock:
        if not _fork_hook_installed:
            os.register_at_fork(
                before=_tracked_lock.acquire, after_in_parent=_tracked_lock.release, after_in_child=_child_drops_tracked_fds
            )
            _fork_hook_installed = True
        fd = os.open(path, flags)
        _tracked_fds.add(fd)
        return fd


class _TrackedFile(io.BufferedIOBase):
    """A buffered file over a tracked descriptor that stops tracking it on close."""

    def __init__(self, fd: int, mode: str):
        self._file = os.fdopen(fd, mode, buffering=READ_BUFFER)
        self._fd = fd

    def read(self, size=-1):
        return self._file.read(size)

    def write(self, data):
        return self._file.write(data)

    def close(self):
        if not self.closed:
            if self._file.writable():
                self._file.flush()  # may wait for the reader: never while holding the lock a fork waits for
            with _tracked_lock:
                _tracked_fds.discard(self._fd)
                self._file.close()
        super().close()


def _wait_for(path: Path, deadline: float, what: str) -> None:
    while not path.exists():
        if time.monotonic() > deadline:
            raise PipeTimeout(f"{path} did not appear ({what})")
        time.sleep(0.02)


def open_for_reading(path: Path, timeout_s: float = OPEN_TIMEOUT_S) -> BinaryIO:
    """Open a FIFO (or, for local runs, a plain file holding the stream) for reading,
    waiting at most `timeout_s` for it to appear and for its writer to send data."""
    deadline = time.monotonic() + timeout_s
    _wait_for(path, deadline, "the channel's pass FIFO, or its writer, is missing")
    if not stat.S_ISFIFO(path.stat().st_mode):
        return open(path, "rb", buffering=READ_BUFFER)
    # Opened non-blocking, a FIFO read end does not wait for a writer; poll then waits for
    # the first data (POLLIN) or a writer that came and left (POLLHUP: an empty stream).
    file = _TrackedFile(_open_tracked(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    try:
        poller = select.poll()
        poller.register(file._fd, select.POLLIN | select.POLLHUP)
        if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise PipeTimeout(f"nothing was written to {path} within {timeout_s:.0f}s")
        os.set_blocking(file._fd, True)
        return file
    except BaseException:
        file.close()
        raise


def open_for_writing(path: Path, timeout_s: float = OPEN_TIMEOUT_S) -> BinaryIO:
    """Open a FIFO for writing once its reader has opened it (at most `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = _open_tracked(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as err:  # ENOENT: not made yet; ENXIO: no reader yet
            if err.errno not in (errno.ENOENT, errno.ENXIO):
                raise
            if time.monotonic() > deadline:
                raise PipeTimeout(f"no reader opened {path} within {timeout_s:.0f}s") from None
            time.sleep(0.02)
    os.set_blocking(fd, True)
    return _TrackedFile(fd, "wb")


def make_fifo(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)


def claim_pass(state_dir: Path, channel: str) -> int:
    """The next pass number of `channel` on this host, counted across worker restarts."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir / f"{channel}.next-pass", "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        text = file.read().strip()
        number = int(text) if text else 0
        file.seek(0)
        file.truncate()
        file.write(f"{number + 1}\n")
        return number


# --- shares ------------------------------------------------------------------------------


def take_share(samples: Iterator[Sample], consumers: int, mine: int, complete_rounds: bool) -> Iterator[Sample]:
    """Images i with i % consumers == mine. With complete_rounds, an image is given out
    only once its round of `consumers` images is complete, so all consumers end equal."""
    held = None
    for i, sample in enumerate(samples):
        position = i % consumers
        if position == mine:
            if not complete_rounds:
                yield sample
                continue
            held = sample
        if complete_rounds and position == consumers - 1 and held is not None:
            yield held
            held = None


def write_forwarded(file: BinaryIO, sample: Sample) -> None:
    """A sample on a consumer FIFO: its labels and location as JSON, then its image."""
    meta = {"labels": list(sample.labels), "names": list(sample.names), "key": sample.key, "where": sample.where}
    file.write(recordio.encode_record(json.dumps(meta).encode()))
    file.write(recordio.encode_record(sample.source))


def write_error(file: BinaryIO, message: str) -> None:
    file.write(recordio.encode_record(json.dumps({"error": message}).encode()))


def read_forwarded(file: BinaryIO, name: str) -> Iterator[Sample]:
    records = recordio.iter_records(file, name)
    for meta_record in records:
        meta = json.loads(meta_record.payload)
        if "error" in meta:
            raise DataFormatError(meta["error"])
        image = next(records, None)
        if image is None:
            raise DataFormatError(f"{name}: the fan-out stream ended inside an image")
        yield Sample(image.payload, tuple(meta["labels"]), key=meta["key"], where=meta["where"], names=tuple(meta["names"]))


class PipeReader:
    """How the consumers of one rank read a Pipe-mode channel (a SplitSource from
    train.formats.select). Made in the main process; picklable, so DataLoader workers
    carry it."""

    def __init__(
        self,
        source,
        topology: PipeTopology,
        workers: int,
        state_dir: Path | None = None,
        complete_rounds: bool = True,
        open_timeout_s: float = OPEN_TIMEOUT_S,
    ):
        if source.channel is None or not source.channel.pipe:
            raise ConfigError(f"{source.split}: PipeReader needs a Pipe-mode channel")
        self.source = source
        self.topology = topology
        self.workers = workers  # the DataLoader's num_workers (0: the rank's main process reads)
        self.state_dir = state_dir or default_state_dir()
        self.complete_rounds = complete_rounds
        self.open_timeout_s = open_timeout_s

    @property
    def channel(self):
        return self.source.channel

    @property
    def consumers_per_rank(self) -> int:
        return max(1, self.workers)

    @property
    def sharded(self) -> bool:
        return self.channel.distribution == "ShardedByS3Key"

    @property
    def stream_consumers(self) -> int:
        """How many consumers one host's stream is dealt among."""
        ranks = self.topology.local_world_size if self.sharded else self.topology.world_size
        return ranks * self.consumers_per_rank

    def stream_consumer(self, local_rank: int, worker: int) -> int:
        rank = local_rank if self.sharded else self.topology.rank - self.topology.local_rank + local_rank
        return rank * self.consumers_per_rank + worker

    @property
    def fanout(self) -> bool:
        """Whether this host's stream is split by a fan-out thread (more than one consumer
        here) rather than read by its only consumer."""
        return self.topology.local_world_size * self.consumers_per_rank > 1

    def consumer_fifo(self, sequence: int, local_rank: int, worker: int) -> Path:
        return self.state_dir / f"{self.channel.name}.{sequence}.{local_rank}.{worker}"

    def channel_samples(self, number: int | None = None) -> Iterator[Sample]:
        """Every image of the channel's pass `number` (default: the next one): one reader
        per host, the census pass, the fan-out thread or a host's only consumer."""
        number = claim_pass(self.state_dir, self.channel.name) if number is None else number
        path = self.channel.pipe_path(number)
        log.debug("reading %s", path)
        with open_for_reading(path, self.open_timeout_s) as stream:
            yield from self.source.stream(stream)

    def samples(self, sequence: int, worker: int) -> Iterator[Sample]:
        """This consumer's share of pass `sequence`."""
        local_rank = self.topology.local_rank
        if not self.fanout:
            mine = self.stream_consumer(local_rank, worker)
            yield from take_share(self.channel_samples(), self.stream_consumers, mine, self.complete_rounds)
            return
        path = self.consumer_fifo(sequence, local_rank, worker)
        make_fifo(path)
        try:
            with open_for_reading(path, self.open_timeout_s) as stream:
                yield from read_forwarded(stream, f"{self.channel.name} (fan-out to rank {self.topology.rank} worker {worker})")
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def distribute(self, sequence: int, number: int) -> None:
        """The fan-out (local rank 0): deal the channel's pass `number` to this host's
        consumers' FIFOs of pass `sequence`."""
        local = {}  # stream consumer id -> (local rank, worker)
        for local_rank in range(self.topology.local_world_size):
            for worker in range(self.consumers_per_rank):
                local[self.stream_consumer(local_rank, worker)] = (local_rank, worker)
        outputs: dict[int, BinaryIO] = {}
        try:
            for consumer, (local_rank, worker) in local.items():
                outputs[consumer] = open_for_writing(self.consumer_fifo(sequence, local_rank, worker), self.open_timeout_s)
            held: dict[int, Sample] = {}
            consumers = self.stream_consumers
            for i, sample in enumerate(self.channel_samples(number)):
                position = i % consumers
                if position in outputs:
                    held[position] = sample
                if position == consumers - 1 or not self.complete_rounds:
                    for consumer, kept in held.items():
                        write_forwarded(outputs[consumer], kept)
                    held.clear()
        except BrokenPipeError:
            log.warning("a consumer of %s closed its pipe early; the fan-out of pass %d stops", self.channel.name, sequence)
        except Exception as err:  # noqa: BLE001 - every consumer must hear why its stream ends
            message = str(err) if isinstance(err, ConfigError) else f"{self.channel.name}: fan-out failed: {type(err).__name__}: {err}"
            for output in outputs.values():
                with contextlib.suppress(OSError):
                    write_error(output, message)
            raise
        finally:
            for output in outputs.values():
                with contextlib.suppress(OSError):
                    output.close()

    def batches_per_pass(self, stream_images: int, batch_size: int) -> int:
        """Steps a rank takes in a pass over a stream of `stream_images` (a census count):
        each of its consumers makes its own batches, the last one partial."""
        consumers = self.stream_consumers
        per_consumer = stream_images // consumers if self.complete_rounds else -(-stream_images // consumers)
        return self.consumers_per_rank * -(-per_consumer // batch_size)


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
