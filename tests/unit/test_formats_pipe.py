"""Pipe mode through real FIFOs (os.mkfifo), written by a thread while the readers read,
as SageMaker does: each rank reads its share, counts stay equal across ranks, passes
open the next FIFO, undecodable images are replaced and counted."""

import io
import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from container import Channel
from tests.support import digits as digits_data
from tests.support import recordio_writer
from train.formats import BadImages, DataFormatError, FormatOptions, MultiHot, Targets, TooManyBadImages, census, pipe, plan
from train.formats.pipe import PipeReader, PipeTimeout, PipeTopology
from train.formats.pipe_dataset import StreamSamples

TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def digits():
    return digits_data.load(51)


class Feeder:
    """Writes `data` into the FIFO at `path` from a thread, as SageMaker's agent does."""

    def __init__(self, path: Path, data: bytes):
        os.mkfifo(path)
        self.error = None
        self.thread = threading.Thread(target=self._write, args=(path, data), daemon=True)
        self.thread.start()

    def _write(self, path, data):
        try:
            with open(path, "wb") as fifo:  # blocks until the reader opens it
                for start in range(0, len(data), 4096):
                    fifo.write(data[start : start + 4096])
        except BaseException as err:  # noqa: BLE001 - reported by join()
            self.error = err

    def join(self):
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the writer is still blocked"
        if self.error is not None:
            raise self.error


def pipe_source(data_dir: Path, record_wrapper="RecordIO", distribution="FullyReplicated"):
    channel = Channel(
        "train",
        data_dir / "train",
        content_type="application/x-recordio",
        input_mode="Pipe",
        record_wrapper=record_wrapper,
        distribution=distribution,
    )
    return plan({"train": channel}, FormatOptions()).train


def dataset(source, topology, workers, state_dir, bad=None, complete_rounds=True):
    reader = PipeReader(source, topology, workers, state_dir, complete_rounds=complete_rounds, open_timeout_s=TIMEOUT_S)
    classes = [str(i) for i in range(10)]
    return StreamSamples(reader, Targets(classes, "id", multi_label=False), v2.PILToTensor(), bad=bad)


def read_all(stream: StreamSamples, workers=0, batch_size=4, **start):
    stream.start_pass(batch_size=batch_size, **start)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=workers, multiprocessing_context="fork" if workers else None)
    images, targets = [], []
    for batch, labels in loader:
        images += list(batch)
        targets += labels.tolist()
    return images, targets


def identify(images, digits):
    """Which digit each image tensor is (exact pixels)."""
    by_pixels = {d.rgb.tobytes(): d.index for d in digits}
    return [by_pixels[image.permute(1, 2, 0).numpy().tobytes()] for image in images]


def in_threads(*calls):
    results, errors = [None] * len(calls), []

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 2)
        assert not thread.is_alive(), "a reader is stuck"
    if errors:
        raise errors[0]
    return results


def test_two_hosts_each_read_their_share_of_their_own_fifo(tmp_path, digits):
    """FullyReplicated, one rank per host: each host's FIFO carries the whole stream and
    each rank keeps images i % 2 == rank; the 51st image (an incomplete round) is dropped
    so both ranks take the same number of steps."""
    stream = digits_data.augmented_stream(digits)
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    feeders = []
    for host in hosts:
        host.mkdir()
        feeders.append(Feeder(host / "train_0", stream))
    ranks = [dataset(pipe_source(host), PipeTopology(rank, 2, 0, 1), 0, host / "state") for rank, host in enumerate(hosts)]
    assert not ranks[0].reader.fanout
    (images0, targets0), (images1, targets1) = in_threads(*(lambda s=s: read_all(s) for s in ranks))
    for feeder in feeders:
        feeder.join()
    assert identify(images0, digits) == [d.index for d in digits[0:50:2]]
    assert identify(images1, digits) == [d.index for d in digits[1:50:2]]
    assert targets0 == [d.label for d in digits[0:50:2]] and targets1 == [d.label for d in digits[1:50:2]]


def test_one_host_fans_its_fifo_out_to_two_local_ranks(tmp_path, digits):
    """Two ranks on one host share one FIFO: local rank 0's fan-out thread reads it and
    deals each rank its images, decoded only by their owner."""
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.augmented_stream(digits))
    source = pipe_source(tmp_path / "data")
    ranks = [dataset(source, PipeTopology(rank, 2, rank, 2), 0, tmp_path / "state") for rank in (0, 1)]
    assert ranks[0].reader.fanout
    (images0, _), (images1, _) = in_threads(*(lambda s=s: read_all(s) for s in ranks))
    feeder.join()
    ranks[0].fanout_thread.join(TIMEOUT_S)
    assert identify(images0, digits) == [d.index for d in digits[0:50:2]]
    assert identify(images1, digits) == [d.index for d in digits[1:50:2]]


def test_fan_out_to_dataloader_workers(tmp_path, digits):
    """One rank, two loader worker processes: each worker is a consumer of its own."""
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.rec_stream(digits))
    source = pipe_source(tmp_path / "data", record_wrapper=None)
    assert source.format == "recordio"
    stream = dataset(source, PipeTopology(), 2, tmp_path / "state")
    images, targets = read_all(stream, workers=2, batch_size=5)
    feeder.join()
    found = identify(images, digits)
    assert sorted(found) == [d.index for d in digits[:50]]  # 25 per worker: the 51st closes no round
    assert targets == [digits[i].label for i in found]


def test_passes_open_the_next_fifo_and_survive_a_restart(tmp_path, digits):
    (tmp_path / "data").mkdir()
    source = pipe_source(tmp_path / "data")
    state = tmp_path / "state"
    first = dataset(source, PipeTopology(), 0, state)
    for number, count in enumerate((10, 20)):
        feeder = Feeder(tmp_path / "data" / f"train_{number}", digits_data.augmented_stream(digits[:count]))
        images, _ = read_all(first)
        feeder.join()
        assert identify(images, digits) == [d.index for d in digits[:count]]
    restarted = dataset(source, PipeTopology(), 0, state)  # a worker restart: same host, same launch
    feeder = Feeder(tmp_path / "data" / "train_2", digits_data.augmented_stream(digits[:3]))
    images, _ = read_all(restarted)
    feeder.join()
    assert len(images) == 3


def test_census_pass_then_training_pass(tmp_path, digits):
    (tmp_path / "data").mkdir()
    source = pipe_source(tmp_path / "data")
    reader = PipeReader(source, PipeTopology(), 0, tmp_path / "state", open_timeout_s=TIMEOUT_S)
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.augmented_stream(digits))
    found = census(reader.channel_samples())
    feeder.join()
    assert found.images == len(digits) and found.classes() == [str(i) for i in range(10)]
    assert reader.batches_per_pass(found.images, 4) == 13  # 51 images, one consumer, batches of 4
    feeder = Feeder(tmp_path / "data" / "train_1", digits_data.augmented_stream(digits))
    images, _ = read_all(StreamSamples(reader, Targets(found.classes(), found.kind, False), v2.PILToTensor()))
    feeder.join()
    assert len(images) == len(digits)


def test_resuming_mid_pass_skips_the_batches_already_done(tmp_path, digits):
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.augmented_stream(digits[:20]))
    stream = dataset(pipe_source(tmp_path / "data"), PipeTopology(), 0, tmp_path / "state")
    images, _ = read_all(stream, batch_size=4, skip_batches=2)
    feeder.join()
    assert identify(images, digits) == [d.index for d in digits[8:20]]


def test_undecodable_images_are_replaced_counted_and_fatal_past_the_threshold(tmp_path, digits):
    good = digits_data.augmented_stream(digits[:10])
    broken = io.BytesIO(good)
    broken.seek(0, 2)
    for label in (3, 4):
        recordio_writer.write_record(broken, b"\x89PNG\r\n\x1a\n not really a png")
        recordio_writer.write_record(broken, str(label).encode())
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", broken.getvalue())
    bad = BadImages(max_fraction=0.05, tolerated=1)
    stream = dataset(pipe_source(tmp_path / "data"), PipeTopology(), 0, tmp_path / "state", bad=bad)
    images, _ = read_all(stream)
    feeder.join()
    assert len(images) == 10  # no readable image came after the two bad ones to take their places
    assert bad.count == 2 and bad.seen == 12
    assert bad.examples()[0].startswith("train image 10 (record 20, byte ")
    with pytest.raises(TooManyBadImages, match=r"2 of 12 images could not be decoded.*first: train image 10"):
        bad.check()


def test_a_bad_image_mid_stream_keeps_the_count(tmp_path, digits):
    data = io.BytesIO()
    for number, digit in enumerate(digits[:8]):
        recordio_writer.write_record(data, b"garbage" if number == 2 else digit.png())
        recordio_writer.write_record(data, str(digit.label).encode())
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", data.getvalue())
    bad = BadImages(max_fraction=0.5)
    images, targets = read_all(dataset(pipe_source(tmp_path / "data"), PipeTopology(), 0, tmp_path / "state", bad=bad))
    feeder.join()
    assert identify(images, digits) == [d.index for d in (digits[0], digits[1], digits[3], digits[3], *digits[4:8])]
    assert bad.count == 1 and not bad.exceeded()


def test_a_bad_record_in_a_fanned_out_stream_reaches_every_consumer(tmp_path, digits):
    data = io.BytesIO(digits_data.augmented_stream(digits[:6]))
    data.seek(0, 2)
    recordio_writer.write_record(data, digits[6].png())
    recordio_writer.write_record(data, b"[not json")
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", data.getvalue())
    source = pipe_source(tmp_path / "data")
    ranks = [dataset(source, PipeTopology(rank, 2, rank, 2), 0, tmp_path / "state") for rank in (0, 1)]
    with pytest.raises(DataFormatError, match=r"train image 6 \(record 12, byte \d+\): attribute 'class' should be JSON text"):
        in_threads(*(lambda s=s: read_all(s) for s in ranks))
    feeder.join()


def test_a_missing_writer_times_out_naming_the_fifo(tmp_path):
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "train_0")
    reader = PipeReader(pipe_source(tmp_path / "data"), PipeTopology(), 0, tmp_path / "state", open_timeout_s=0.3)
    with pytest.raises(PipeTimeout, match=r"nothing was written to .*train_0 within 0s"):
        next(reader.channel_samples())


def test_multi_label_targets_through_the_pipe(tmp_path, digits):
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.augmented_stream(digits[:8], multi_label=True))
    reader = PipeReader(pipe_source(tmp_path / "data"), PipeTopology(), 0, tmp_path / "state", open_timeout_s=TIMEOUT_S)
    stream = StreamSamples(reader, Targets(digits_data.CLASS_NAMES, "id", True), v2.PILToTensor(), target_transform=MultiHot(12))
    stream.start_pass()
    targets = torch.cat([t for _, t in DataLoader(stream, batch_size=3)])
    feeder.join()
    expected = np.zeros((8, 12), dtype=np.float32)
    for row, digit in enumerate(digits[:8]):
        expected[row, list(digit.labels)] = 1
    assert np.array_equal(targets.numpy(), expected)


def test_a_child_forked_while_a_fifo_is_open_does_not_hold_it(tmp_path):
    """A loader worker forked while the fan-out holds a consumer's write end must not keep
    a copy of it: the consumer would never see its stream end."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = pipe.open_for_writing(path, TIMEOUT_S)
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(10,))
    child.start()
    try:
        writer.write(b"x")
        writer.close()
        os.set_blocking(reader, True)
        assert os.read(reader, 10) == b"x"
        started = time.monotonic()
        assert os.read(reader, 10) == b""  # the end of the stream now, not when the child exits
        assert time.monotonic() - started < 5
    finally:
        child.terminate()
        child.join()
        os.close(reader)


def test_ranks_with_and_without_loader_workers_share_one_fifo(tmp_path, digits):
    """Rank 0 reads through one loader worker, rank 1 in its main process, both fed by
    rank 0's fan-out."""
    (tmp_path / "data").mkdir()
    feeder = Feeder(tmp_path / "data" / "train_0", digits_data.augmented_stream(digits[:20]))
    source = pipe_source(tmp_path / "data")
    rank0 = dataset(source, PipeTopology(0, 2, 0, 2), 1, tmp_path / "state")
    rank1 = dataset(source, PipeTopology(1, 2, 1, 2), 0, tmp_path / "state")
    (images0, _), (images1, _) = in_threads(lambda: read_all(rank0, workers=1), lambda: read_all(rank1))
    feeder.join()
    assert identify(images0, digits) == [d.index for d in digits[0:20:2]]
    assert identify(images1, digits) == [d.index for d in digits[1:20:2]]
