"""The FIFOs of Pipe mode: opening a channel's pass FIFO (or a plain file holding the
stream) with a deadline, the fan-out's own FIFOs, the per-channel pass counter, and the
descriptors a forked DataLoader worker must not inherit."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import select
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO

from container import ConfigError

OPEN_TIMEOUT_S = 600.0  # SageMaker starts streaming within seconds; a missing peer should not hang a job forever
READ_BUFFER = 1 << 20


class PipeTimeout(ConfigError):
    """A FIFO whose other end never came."""


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
