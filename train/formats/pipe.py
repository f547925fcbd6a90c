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
(started by pipe_dataset.StreamSamples.start_pass) that reads the channel FIFO, parses every image's
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
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from container import ConfigError
from train.formats import recordio
from train.formats.base import DataFormatError, Sample
from train.formats.fifo import OPEN_TIMEOUT_S, PipeTimeout, claim_pass, make_fifo, open_for_reading, open_for_writing

log = logging.getLogger(__name__)

__all__ = ["OPEN_TIMEOUT_S", "PipeReader", "PipeTimeout", "PipeTopology", "open_for_reading", "open_for_writing"]


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
