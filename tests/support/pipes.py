"""SageMaker's side of Pipe mode, for tests through the real image: a Pipe-mode channel is
a FIFO per pass over the data, `<data dir>/<channel>_0`, `<channel>_1`, ..., each written
once, in order, while the trainer reads it. `PipeFeeder` does that from a host thread into
a bind-mounted directory (FIFOs work across a bind mount: one kernel): it makes
`<channel>_<n>`, writes the whole stream into it as the reader takes it (a FIFO holds
64 KiB), and makes the next FIFO once the reader has closed this one."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from pathlib import Path

CHUNK = 64 * 1024


class PipeFeeder:
    """Feeds every pass of one channel until `stop()`; `passes` counts the FIFOs read to the end."""

    def __init__(self, data_dir: Path, channel: str, stream: bytes):
        self.data_dir, self.channel, self.stream = data_dir, channel, stream
        self.passes = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"feed-{channel}", daemon=True)
        self._thread.start()

    def _fifo(self, number: int) -> Path:
        path = self.data_dir / f"{self.channel}_{number}"
        os.mkfifo(path)
        os.chmod(path, 0o666)  # the trainer may run as another user
        return path

    def _open(self, path: Path) -> int | None:
        """The write end, once the reader opened the FIFO; None when stopped first."""
        while not self._stop.is_set():
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:  # ENXIO: no reader yet
                if err.errno != errno.ENXIO:
                    raise
                time.sleep(0.05)
        return None

    def _run(self) -> None:
        try:
            number = 0
            while not self._stop.is_set():
                fd = self._open(self._fifo(number))
                if fd is None:
                    return
                os.set_blocking(fd, True)
                with os.fdopen(fd, "wb", buffering=0) as fifo:
                    for start in range(0, len(self.stream), CHUNK):
                        fifo.write(self.stream[start : start + CHUNK])
                self.passes += 1
                number += 1
        except BrokenPipeError:
            pass  # the reader stopped early (a failed or stopped job): nothing more to feed
        except BaseException as err:  # noqa: BLE001 - reported by stop()
            self.error = err

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"the feeder of {self.channel} is stuck"
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def feeding(data_dir: Path, streams: dict[str, bytes]):
    """A PipeFeeder per channel for the duration of the block, stopped (and checked) after it."""
    feeders = {name: PipeFeeder(data_dir, name, stream) for name, stream in streams.items()}
    try:
        yield feeders
    finally:
        for feeder in feeders.values():
            feeder.stop()
