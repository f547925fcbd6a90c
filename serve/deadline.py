"""One deadline per request, honoured by the work itself.

A request's Deadline starts when its body is in (SAGEMAKER_MODEL_SERVER_TIMEOUT from
then). The route's watch (serve.runner.until_done_or_gone) answers 504 when it passes
and 499 when the client hangs up, and either way marks the deadline abandoned: the
answer has gone. The work reads the same object: every item of a request checks it
before it is decoded or fetched, a URL fetch (DNS included) ends at it, and a decode in
the decode pool is killed at it (or as soon as the answer has gone). So no thread keeps
working for a request nobody waits for, beyond the one item it is on, and that item is
bounded by the decode budget or the fetch timeout.

Standard library only (the decode pool's workers import it).
"""

from __future__ import annotations

import threading
import time

from serve.errors import Timeout


class Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds  # a time.monotonic() value
        self.gone = threading.Event()  # set once nobody waits for the answer

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def abandon(self) -> None:
        """The answer has gone (timed out, or the client left): stop the work."""
        self.gone.set()

    @property
    def passed(self) -> bool:
        return self.gone.is_set() or time.monotonic() >= self.at

    def check(self) -> None:
        """Timeout once the deadline has passed or the answer has gone (between items)."""
        if self.passed:
            raise Timeout(f"the request's deadline passed ({self.seconds:g} s, SAGEMAKER_MODEL_SERVER_TIMEOUT)")
