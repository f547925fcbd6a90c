"""The bounded pools a server's models share (serve.hosting): the request side's decode
threads and decode worker processes, the model side's inference threads, the metrics the
models report their stages to, and the capture's writer."""

from __future__ import annotations

import concurrent.futures

from container import ServeConfig
from container.serving import Machine
from serve import metrics as server_metrics
from serve.capture import Capture
from serve.decode_pool import DecodePool


class Pools:
    """Bounded pools: decode threads (request side), the decode worker processes they
    hand multi-scan JPEGs and TIFFs to (killed at a request's deadline, replaced when
    lost), inference threads (model side), the metrics the models report their stages
    to, and the capture's writer (serve.capture)."""

    def __init__(self, config: ServeConfig, machine: Machine, metrics=None):
        self.metrics = metrics or server_metrics.NoMetrics()
        self.decoders = concurrent.futures.ThreadPoolExecutor(machine.decode_threads, thread_name_prefix="decode")
        self.images = DecodePool(machine.decode_workers)  # workers start on first use, or with start()
        self.inference = concurrent.futures.ThreadPoolExecutor(config.workers, thread_name_prefix="infer")
        self.capture = Capture.start(config, self.metrics)

    def close(self) -> None:
        self.inference.shutdown(wait=True)
        self.decoders.shutdown(wait=True)
        self.images.close()
        self.capture.close()  # after the last answer: what it captured is written

    def problem(self) -> str | None:
        """Why the server cannot decode what needs a decode worker, or None (for /ping)."""
        failing = self.images.status().failing
        return f"decode workers cannot start: {failing}" if failing else None
