"""The accuracy guard run beside the requests, so a server is ready as soon as its fp32
model is loaded (SM_VISION_WAIT_FOR_GUARD=false, the default; docs/serving.md).

The engine serves fp32 from the start and hands this thread two forwards of its own
(the reduced precision and fp32, each in a one-thread session that never spins) and a
`switch`, called only when vision.guard's rules pass. What keeps requests fast while it
runs:
  - its forwards run on this one thread, at a lower scheduling priority (nice 10 for
    this thread alone), so on a small box they take what the requests leave: the served
    forwards keep their intra-op threads and their cores;
  - nothing of it goes through the micro-batcher or the inference pool: requests never
    queue behind a guard chunk, and batches never mix guard images;
  - the switch is one attribute assignment the engine makes (the served session), so
    each forward runs wholly on one model or the other.
A guard that disagrees, or fails, leaves fp32 served and says why in the log; `state`
(running, passed, failed, stopped) is what /metrics reports. `stop()` ends it between chunks
(the model is unloaded or the server stops).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np

from vision import guard

log = logging.getLogger(__name__)

NICENESS = 10  # how far below the request threads the guard's thread runs
CHUNK = 8  # images per guard forward, as the guard at warm-up


def lower_this_threads_priority() -> None:
    """Lower the calling thread's priority only (Linux schedules threads as tasks; raising
    niceness needs no privilege). Elsewhere it runs at normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (AttributeError, OSError) as err:
        log.debug("the background guard runs at normal priority: %s", err)


class GuardStopped(Exception):
    """stop() was called: the model is going away."""


class BackgroundGuard:
    """Runs vision.guard.compare(precision, reference, candidate) on `batch` in a thread and
    calls `switch()` when it passes. `forwards()` opens the two guard-side forwards
    (reference, candidate) on that thread, so opening them costs the requests nothing."""

    def __init__(
        self, precision: str, batch: np.ndarray, forwards: Callable[[], tuple[Callable, Callable]], switch: Callable[[np.ndarray], str]
    ):
        self.precision, self.batch = precision, batch
        self.forwards, self.switch = forwards, switch
        self.state = "running"
        self.result: guard.GuardResult | None = None
        self.stopping = threading.Event()
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="guard", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        lower_this_threads_priority()
        try:
            reference, candidate = self.forwards()
            self.result = guard.compare(self.precision, self._in_chunks(reference), self._in_chunks(candidate))
            if not self.result.passed:
                self.state = "failed"
                log.warning("accuracy guard: %s; staying on fp32", self.result.summary())
                return
            described = self.switch(self.batch[:1])
            self.state = "passed"
            log.info(
                "accuracy guard: %s kept (%s); switched to %s after %.1f s in the background",
                self.precision,
                self.result.summary(),
                described,
                time.perf_counter() - self.started,
            )
        except GuardStopped:
            self.state = "stopped"
        except Exception as err:  # noqa: BLE001 - whatever broke, fp32 keeps serving; the log says why
            self.state = "failed"
            log.exception("accuracy guard: %s could not be checked (%s: %s); staying on fp32", self.precision, type(err).__name__, err)
        finally:
            self.batch = None  # the crops are needed no longer

    def _in_chunks(self, forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        outputs = []
        for start in range(0, len(self.batch), CHUNK):
            if self.stopping.is_set():
                raise GuardStopped()
            outputs.append(forward(self.batch[start : start + CHUNK]))
        return np.concatenate(outputs)

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the guard has finished (tests, and a server that must not exit mid-check)."""
        self.thread.join(timeout)
        return self.done

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
