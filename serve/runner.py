"""The micro-batcher (GPU by default): joins concurrent requests into one forward of
up to max_batch_size rows, waiting at most max_delay_ms for the batch to fill. (On CPU
forwards run in serve.app.Pools' bounded inference pool instead.)"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable

import torch


class BatchRunner:
    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch_size: int, max_delay_ms: float):
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.thread.start()

    async def run(self, inputs: torch.Tensor) -> torch.Tensor:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((inputs, future))
        return await asyncio.wrap_future(future)

    def _collect(self) -> list | None:
        first = self.queue.get()
        if first is None:
            return None
        items, rows = [first], first[0].shape[0]
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = self.queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # let the loop see the stop after this batch
                break
            items.append(item)
            rows += item[0].shape[0]
        return items

    def _loop(self) -> None:
        while (items := self._collect()) is not None:
            groups: dict[tuple, list] = {}
            for item in items:  # only same-shaped inputs can be stacked
                groups.setdefault(tuple(item[0].shape[1:]), []).append(item)
            for group in groups.values():
                try:
                    outputs = self.forward(torch.cat([inputs for inputs, _ in group]))
                except Exception as err:  # noqa: BLE001 - handed to each waiting request
                    for _, future in group:
                        future.set_exception(err)
                    continue
                start = 0
                for inputs, future in group:
                    future.set_result(outputs[start : start + inputs.shape[0]])
                    start += inputs.shape[0]

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)
