"""serve.decode_pool (issue 22): decodes in worker processes that are killed at the
request's deadline and replaced, survive a worker killed by the kernel, and answer
with exactly the pixels the in-thread decoder makes."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from serve import errors
from serve.decode_pool import DecodePool, needs_worker
from tests.support import bombs
from tests.support.payloads import image_bytes, jpeg_bytes
from vision import images

LIMITS = images.ImageLimits()
SLOW = images.ImageLimits(max_jpeg_scans=1_000_000)  # lets the scan bomb through: seconds of libjpeg


@pytest.fixture(scope="module")
def slow_jpeg() -> bytes:
    return bombs.scan_bomb(4_000, (1024, 1024))


@pytest.fixture
def pool():
    handle = DecodePool(1).start()
    yield handle
    handle.close()


def photo() -> bytes:
    rng = np.random.default_rng(1)
    from PIL import Image

    return jpeg_bytes(Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)))


def soon(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_pool_decodes_the_pixels_the_thread_decodes(pool):
    data = photo()
    expected = np.asarray(images.load_rgb(data, LIMITS))
    assert np.array_equal(pool.decode_array(data, LIMITS, soon()), expected)
    assert np.array_equal(np.asarray(pool.decode(data, LIMITS, soon())), expected)
    with pool.decoded(data, LIMITS, soon()) as pixels:
        assert pixels.shape == (120, 160, 3) and np.array_equal(pixels, expected)


def test_a_large_result_comes_back_whole(pool):
    from PIL import Image

    big = image_bytes(Image.radial_gradient("L").resize((6000, 4000)).convert("RGB"), "PNG")  # 24 MP: past RELEASE_BYTES
    first = pool.decode_array(big, LIMITS, soon(60))
    assert first.shape == (4000, 6000, 3)
    assert np.array_equal(first, np.asarray(images.load_rgb(big, LIMITS)))
    assert pool.decode_array(photo(), LIMITS, soon()).shape == (120, 160, 3)  # the buffer was released, still usable


def test_refusals_keep_their_types_and_the_worker(pool):
    before = pool.pids()
    with pytest.raises(errors.Unprocessable, match="ICO"):
        pool.decode(bombs.ico_bomb(64), LIMITS, soon())
    with pytest.raises(errors.BadInput, match="not a JPEG"):
        pool.decode(b"junk", LIMITS, soon())
    with pytest.raises(errors.PayloadTooLarge, match="scans"):
        pool.decode(bombs.scan_bomb(500), LIMITS, soon())
    with pytest.raises(errors.BadInput, match="empty"):
        pool.decode(b"", LIMITS, soon())
    assert pool.pids() == before and pool.status().replaced == 0


def test_a_decode_past_its_deadline_is_killed_and_replaced(pool, slow_jpeg):
    [pid] = pool.pids()
    start = time.monotonic()
    with pytest.raises(errors.Timeout, match="deadline"):
        pool.decode(slow_jpeg, SLOW, time.monotonic() + 0.3)
    assert time.monotonic() - start < 2
    assert gone(pid)  # the decode did not outlive its answer
    assert pool.status().replaced == 1
    assert pool.decode_array(photo(), LIMITS, soon()).shape == (120, 160, 3)
    assert pool.pids() and pool.pids() != [pid]


def _decode_in_thread(pool, data, limits):
    outcome = {}

    def run():
        try:
            outcome["result"] = pool.decode(data, limits, soon(60))
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while pool.status().busy == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # inside libjpeg by now
    return thread, outcome


@pytest.mark.parametrize(
    "sig, error, message",
    [
        (signal.SIGKILL, errors.InsufficientMemory, "killed"),  # what the kernel's OOM killer sends
        (signal.SIGSEGV, errors.BadInput, "crashed"),  # a codec crashing on crafted bytes
    ],
)
def test_a_worker_lost_mid_decode_is_replaced(pool, slow_jpeg, sig, error, message):
    [pid] = pool.pids()
    thread, outcome = _decode_in_thread(pool, slow_jpeg, SLOW)
    os.kill(pid, sig)
    thread.join(30)
    assert isinstance(outcome.get("error"), error) and message in outcome["error"].message, outcome
    assert pool.decode_array(photo(), LIMITS, soon()).shape == (120, 160, 3)
    assert pool.status().replaced == 1 and pool.pids() != [pid]


def test_an_idle_worker_lost_is_replaced(pool):
    [pid] = pool.pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert pool.decode_array(photo(), LIMITS, soon()).shape == (120, 160, 3)
    assert pool.status().replaced == 1


def test_waiting_for_a_free_worker_is_bounded_by_the_deadline(pool, slow_jpeg):
    thread, outcome = _decode_in_thread(pool, slow_jpeg, SLOW)
    start = time.monotonic()
    with pytest.raises(errors.Timeout, match="no image decoder was free"):
        pool.decode(photo(), LIMITS, time.monotonic() + 0.2)
    assert time.monotonic() - start < 1
    thread.join(120)  # the slow decode itself still finishes (its own deadline is a minute)
    assert "result" in outcome


def test_concurrent_callers_share_the_workers():
    pool = DecodePool(2).start()
    try:
        data = photo()
        expected = np.asarray(images.load_rgb(data, LIMITS))
        failures = []

        def caller():
            for _ in range(10):
                if not np.array_equal(pool.decode_array(data, LIMITS, soon()), expected):
                    failures.append("pixels differ")

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == [] and pool.status().busy == 0 and len(pool.pids()) == 2
    finally:
        pool.close()


def test_a_closed_pool_refuses_and_leaves_no_worker():
    pool = DecodePool(2).start()
    pids = pool.pids()
    pool.close()
    assert all(gone(pid) for pid in pids)
    with pytest.raises(errors.ServeError, match="closed"):
        pool.decode(photo(), LIMITS, soon())


def test_only_inputs_whose_cost_is_not_their_pixels_need_a_worker():
    from PIL import Image

    picture = Image.new("RGB", (64, 48), (10, 20, 30))
    for fmt, expected in (("PNG", False), ("WEBP", False), ("GIF", False), ("BMP", False), ("TIFF", True)):
        assert needs_worker(image_bytes(picture, fmt)) is expected, fmt
    assert needs_worker(image_bytes(picture, "JPEG")) is False
    assert needs_worker(image_bytes(picture, "JPEG", progressive=True)) is True
    assert needs_worker(bombs.scan_bomb(5_000)) is True
    assert needs_worker(b"junk") is False
