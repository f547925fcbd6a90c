"""Image decoding in a small pool of worker processes that can be killed.

Some decodes cannot be bounded from the header: their cost sits in one C call (a
progressive JPEG's scans, a TIFF's codec, libwebp) that no Python deadline can
interrupt, and in a thread it keeps a core busy after the request's answer has gone.
In a worker process it can be stopped: decode() waits for the answer until the
request's deadline, then SIGKILLs the worker and raises Timeout (504). A worker that
dies on its own while decoding is replaced too: killed by the kernel (out of memory)
-> InsufficientMemory (507), crashed by the image (SIGSEGV in a codec) -> BadInput
(400), anything else -> ServeError (500). The pool keeps answering with the workers
it has, and starts a replacement for each one lost before the next decode needs it.

Workers run vision.images.load_rgb, the decoder training uses, with every limit of
ImageLimits (format allow-list, JPEG scans, decode bytes). The upright 8-bit RGB
pixels come back through shared memory: each worker owns a memfd (anonymous shared
memory, not /dev/shm, whose 64 MB docker default is smaller than one 40 MP image),
passed to the parent once; the worker writes the HxWx3 pixels into it, and only a few
bytes of header cross the socket. `with pool.decoded(...) as pixels:` lends the
parent that memory itself as an HxWx3 uint8 array (the worker stays reserved until
the block ends): `torch.from_numpy(pixels).permute(2, 0, 1)` is exactly what
v2.PILToTensor makes of the PIL image, and the eval transform takes either, so the
model input is made without copying the pixels in the parent at all.
decode_array() returns a copy the caller keeps, decode() a PIL image. A worker keeps
its buffer between decodes (no page faults for the next photo); after a result above
RELEASE_BYTES the pages are given back, so an idle worker never holds a large one.

Workers come from multiprocessing's forkserver, which imports only vision.images
(Pillow and numpy, no torch), so a replacement starts in tens of milliseconds.

Threads call decode() concurrently (one worker per call; a call waits for a free
worker until its deadline). close() stops every worker.

Which inputs need a worker: needs_worker(data). A baseline JPEG (at most 3 scans), PNG,
WebP, GIF, BMP and PPM decode in time proportional to their pixels, which the decode
budget bounds, so they can stay in the calling thread and pay no hand-off; a JPEG of
more scans (its cost is scans x pixels) and TIFF (a dozen codecs behind one header,
JPEG-in-TIFF among them) go to a worker.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import reduction

import numpy as np
from PIL import Image

from serve.errors import BadInput, InsufficientMemory, PayloadTooLarge, ServeError, Timeout, Unprocessable
from vision import images

log = logging.getLogger("serve.decode_pool")

RELEASE_BYTES = 64 * 1024 * 1024  # results larger than this (~22 MP) give their shared pages back
GONE_POLL_S = 0.05  # how often a decode checks whether its request's answer has gone
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}
_REJECTIONS = {
    "ImageTooLarge": PayloadTooLarge,
    "ImageUnsupported": Unprocessable,
    "ImageUnreadable": BadInput,
}


BOUNDED_JPEG_SCANS = 3  # baseline (1) or non-interleaved sequential (3): one pass per component
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def needs_worker(data: bytes) -> bool:
    """Whether decoding data may cost more than its pixels (see the module docstring):
    a JPEG of more than BOUNDED_JPEG_SCANS scans, or a TIFF. Reads markers only."""
    if data[:2] == b"\xff\xd8":
        try:
            return images.count_jpeg_scans(data, BOUNDED_JPEG_SCANS) > BOUNDED_JPEG_SCANS
        except images.ImageRejected:  # past the bound (or malformed): let the worker meet it
            return True
    return data[:4] in _TIFF_MAGIC


class _SharedBuffer:
    """A memfd mapped into this process, grown (never shrunk) to what a result needs."""

    def __init__(self, fd: int):
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, self.size) if self.size else None

    def ensure(self, size: int) -> None:
        if size > self.size:
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
            self.remap(size)

    def _unmap(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a caller kept a view past its block: the map dies with it
                self.map.close()
            self.map = None

    def remap(self, size: int) -> None:
        self._unmap()
        self.map, self.size = mmap.mmap(self.fd, size), size

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.frombuffer(self.map, np.uint8, count=int(np.prod(shape))).reshape(shape)

    def release(self, size: int) -> None:
        """Give the first `size` bytes' pages back to the kernel (shared: for both sides)."""
        self.map.madvise(mmap.MADV_REMOVE, 0, min(self.size, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE))

    def close(self) -> None:
        self._unmap()
        os.close(self.fd)


def _worker_main(connection) -> None:
    """A worker: (limits, bytes) in, ("ok", shape, buffer size) with the pixels in the
    shared buffer, or a refusal, out; forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends
    fd = os.memfd_create("smv-decode", os.MFD_CLOEXEC)
    reduction.send_handle(connection, fd, os.getppid())
    shared = _SharedBuffer(fd)
    while True:
        try:
            limits = connection.recv()
            data = connection.recv_bytes()
        except (EOFError, OSError):  # the parent closed its end
            return
        try:
            pixels = np.asarray(images.load_rgb(data, limits))
            shape = pixels.shape
            shared.ensure(pixels.nbytes)
            shared.view(shape)[...] = pixels
            del pixels
        except images.ImageRejected as err:
            connection.send(("rejected", type(err).__name__, str(err)))
            continue
        except MemoryError:
            connection.send(("memory", "MemoryError", "decoding the image ran out of memory"))
            continue
        except Exception as err:  # noqa: BLE001 - report any failure; the worker stays usable
            connection.send(("error", type(err).__name__, str(err)[:500]))
            continue
        connection.send(("ok", shape, shared.size))


class _Worker:
    def __init__(self, context):
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child,), name="decode-worker", daemon=True)
        self.process.start()
        child.close()
        self.shared = _SharedBuffer(reduction.recv_handle(self.connection))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.close()

    def close(self) -> None:
        self.connection.close()
        self.shared.close()

    def exit_signal(self) -> int | None:
        self.process.join(5)  # it is dead or dying: reap it to read how it ended
        code = self.process.exitcode
        return -code if code is not None and code < 0 else None


@dataclass(frozen=True)
class PoolStatus:
    workers: int  # the pool's size
    idle: int  # started and waiting for work
    busy: int  # decoding now
    replaced: int  # workers killed at a deadline or lost, and replaced, since start
    failing: str | None = None  # why the last worker start failed; None once one starts again (/ping reports it)


class DecodePool:
    """`workers` decode processes; decode() is thread-safe."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.size = workers
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["vision.images", "serve.decode_pool"])
        self._free: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(workers):
            self._free.put(None)  # a slot: started on first use (or by start())
        self._busy = 0
        self._replaced = 0
        self._failing: str | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> DecodePool:
        """Start every worker now, so the first requests do not pay for it."""
        slots = [self._free.get() for _ in range(self.size)]
        try:
            for index, slot in enumerate(slots):
                if slot is None or not slot.alive():
                    if slot is not None:
                        slot.kill()
                    slots[index] = None
                    slots[index] = self._spawn()
        finally:
            for slot in slots:
                self._free.put(slot)
        return self

    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self._context)
        except Exception as err:  # noqa: BLE001 - out of processes, memory or fds: /ping says so
            self._failing = f"{type(err).__name__}: {err}"
            log.error("cannot start a decode worker: %s", self._failing)
            raise
        self._failing = None
        return worker

    def _acquire(self, deadline: float) -> _Worker:
        try:
            slot = self._free.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise Timeout("no image decoder was free before the request's deadline") from None
        if slot is None or not slot.alive():
            if slot is not None:  # died while idle (the kernel's OOM killer picks any process)
                slot.kill()
                with self._lock:
                    self._replaced += 1
            try:
                slot = self._spawn()
            except BaseException:
                self._free.put(None)
                raise
        with self._lock:
            self._busy += 1
        return slot

    def _release(self, worker: _Worker | None, lost: bool = False) -> None:
        with self._lock:
            self._busy -= 1
            if lost:
                self._replaced += 1
        self._free.put(worker)  # None: the next decode starts a replacement

    def decode(self, data: bytes, limits: images.ImageLimits, deadline: float, gone: threading.Event | None = None) -> Image.Image:
        """The decoded pixels as a PIL RGB image (see decoded())."""
        with self.decoded(data, limits, deadline, gone) as pixels:
            return Image.fromarray(pixels)

    def decode_array(self, data: bytes, limits: images.ImageLimits, deadline: float, gone: threading.Event | None = None) -> np.ndarray:
        """The decoded pixels as an HxWx3 uint8 array the caller owns (see decoded())."""
        with self.decoded(data, limits, deadline, gone) as pixels:
            return pixels.copy()

    @contextlib.contextmanager
    def decoded(self, data: bytes, limits: images.ImageLimits, deadline: float, gone: threading.Event | None = None):
        """data decoded by vision.images.load_rgb in a worker, lent as an HxWx3 uint8
        array over the worker's shared memory until the block ends (copy what must
        outlive it); the typed errors of serve.errors otherwise: Timeout once
        `deadline` (a time.monotonic() value) passes or `gone` is set (the request's
        answer has gone, serve.deadline), and the worker is killed then."""
        if self._closed:
            raise ServeError("the decode pool is closed")
        if not data:
            raise BadInput("empty image body")
        worker = self._acquire(deadline)
        try:
            reply = self._exchange(worker, data, limits, deadline, gone)
        except (EOFError, OSError):  # the worker died (its socket closed under us)
            self._release(None, lost=True)
            raise self._lost(worker) from None
        except BaseException:  # cancelled mid-exchange: the worker's state is unknown
            worker.kill()
            self._release(None, lost=True)
            raise
        if reply is None:
            log.warning("decode worker %d killed at the request's deadline", worker.pid)
            worker.kill()
            self._release(None, lost=True)
            raise Timeout("decoding the image took longer than the request's deadline")
        if reply[0] != "ok":
            self._release(worker)
            kind, name, message = reply
            if kind == "rejected":
                raise _REJECTIONS.get(name, BadInput)(message)
            if kind == "memory":
                raise InsufficientMemory(message)
            raise ServeError(f"decoding the image failed: {name}: {message}")
        pixels = worker.shared.view(reply[1])
        try:
            yield pixels
        finally:
            nbytes = pixels.nbytes
            del pixels  # the mapping may be remapped or released: no view may outlive the block
            if nbytes > RELEASE_BYTES:
                worker.shared.release(nbytes)
            self._release(worker)

    @staticmethod
    def _exchange(worker: _Worker, data: bytes, limits: images.ImageLimits, deadline: float, gone: threading.Event | None):
        """The worker's reply (its shared buffer remapped if the worker grew it); None
        when the deadline passed (or the answer went) first."""
        worker.connection.send(limits)
        worker.connection.send_bytes(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (gone is not None and gone.is_set()):
                return None
            if worker.connection.poll(left if gone is None else min(left, GONE_POLL_S)):
                break
        reply = worker.connection.recv()
        if reply[0] == "ok" and reply[2] != worker.shared.size:
            worker.shared.remap(reply[2])
        return reply

    def _lost(self, worker: _Worker) -> ServeError:
        ended_by = worker.exit_signal()
        worker.close()
        log.error("decode worker %d died while decoding (signal %s); a replacement starts with the next decode", worker.pid, ended_by)
        if ended_by == signal.SIGKILL:
            return InsufficientMemory("the image decoder was killed (out of memory) while decoding this image")
        if ended_by in CRASH_SIGNALS:
            return BadInput(f"cannot decode image: the decoder crashed on it ({signal.Signals(ended_by).name})")
        return ServeError("the image decoder exited while decoding this image")

    def status(self) -> PoolStatus:
        with self._lock:
            busy, replaced = self._busy, self._replaced
        return PoolStatus(self.size, len(self.pids()), busy, replaced, self._failing)

    def pids(self) -> list[int]:
        """The pids of the idle workers (for tests and diagnostics)."""
        with self._free.mutex:
            return [worker.pid for worker in self._free.queue if worker is not None and worker.alive()]

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._free.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.kill()
