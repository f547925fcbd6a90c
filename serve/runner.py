"""Admission and the micro-batcher.

Admission bounds how many requests are being worked on at once (decode, queued,
forward): a request is admitted once its body is in (the body read has its own
deadline, serve.routes), and one over the bound gets 503 with Retry-After at once
instead of waiting in an unbounded queue. `until_done_or_gone` runs a request's work
under its deadline (serve.deadline) and stops waiting when the client hangs up;
either way the work's futures are cancelled, so stages not yet started (a queued
decode, a queued forward, a batcher slot) are skipped, and the deadline is abandoned,
so a decode already running stops at its next item.

The micro-batcher joins concurrent requests into forwards of up to max_batch_size
rows, waiting at most max_delay_ms for a batch to fill. Cancelled work is dropped
before the forward; no exception ends its thread, and `alive` lets /ping report the
endpoint unhealthy should it ever stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable

import numpy as np

from serve.deadline import Deadline
from serve.errors import Overloaded, Timeout


class Admission:
    """At most `limit` requests admitted at once. Used from the event loop only, so a
    plain counter is enough."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    @contextlib.contextmanager
    def slot(self):
        if self.active >= self.limit:
            raise Overloaded(f"the server is at its limit of {self.limit} requests in progress (SM_VISION_MAX_PENDING); retry shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def _disconnected(receive: Callable[[], Awaitable[dict]]) -> None:
    # After the body has been read, the next ASGI message is http.disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_done_or_gone(work: Awaitable, receive: Callable[[], Awaitable[dict]] | None, deadline: Deadline):
    """work's result; Timeout once `deadline` passes, ClientGone if the client hangs up
    first (`receive` None: no client to watch, as under MMS). In both cases the work is
    cancelled (the futures it waits on: a queued decode, forward or batcher slot never
    runs) and the deadline is abandoned, which stops what already runs between items."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
    try:
        done, _ = await asyncio.wait({task, watcher} - {None}, timeout=deadline.left(), return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watcher in done:
            raise ClientGone()
        raise Timeout(f"inference took longer than {deadline.seconds:g} s (SAGEMAKER_MODEL_SERVER_TIMEOUT)")
    finally:
        if not task.done():
            deadline.abandon()
        for pending in (task, watcher):
            if pending is not None:
                pending.cancel()


def rows(outputs: np.ndarray | tuple, start: int, stop: int):
    """Rows [start, stop) of a forward's output: a tensor, or a tuple of them (e.g.
    probabilities and features)."""
    if isinstance(outputs, tuple):
        return tuple(output[start:stop] for output in outputs)
    return outputs[start:stop]


class BatchRunner:
    """Joins queued requests into batches and runs up to `concurrency` batch forwards at
    once on `executor` (the endpoint's inference pool, so a multi-model endpoint's
    batchers share its bound; their own pool when None).

    A batch is collected only when a forward slot is free: while every slot is busy,
    requests wait in the queue, so the next batch takes all of them (up to
    max_batch_size) instead of each slot running a batch of one. On CPU that is where
    batching pays: a batch-8 forward of ResNet-50 costs about 0.6x per image what a
    batch-1 forward does on the same single thread (weights stay in cache), and one
    thread per forward avoids the straggler stalls intra-op threads suffer when decoding
    shares the cores."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray | tuple],
        max_batch_size: int,
        max_delay_ms: float,
        max_queued: int = 256,
        executor: concurrent.futures.Executor | None = None,
        concurrency: int = 1,
        observe: Callable[[int], None] | None = None,
    ):
        self.forward = forward
        self.observe = observe or (lambda rows: None)  # told the rows of each forward (metrics)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000
        self.queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self.concurrency = concurrency
        self.slots = threading.Semaphore(concurrency)
        self.own_executor = executor is None
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="batch")
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def run(self, inputs: np.ndarray) -> asyncio.Future:
        """Queue `inputs`; await the result (their rows of the batch's output). Called on
        the event loop; cancelling the awaitable drops the inputs if their batch has not
        started."""
        if not self.alive:
            raise RuntimeError("the micro-batcher thread has stopped")
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.queue.put_nowait((inputs, future))
        except queue.Full:
            raise Overloaded(f"the micro-batcher queue is full ({self.queue.maxsize} requests); retry shortly") from None
        return asyncio.wrap_future(future)

    def _collect(self) -> list | None:
        first = self.queue.get()
        if first is None:
            return None
        items, rows = [first], first[0].shape[0]
        deadline = time.monotonic() + self.max_delay_s
        while rows < self.max_batch_size:
            try:
                # What is already queued joins even after the deadline (timeout 0 takes it).
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.stopping = True  # finish this batch, then stop
                break
            items.append(item)
            rows += item[0].shape[0]
        # A request that timed out or whose client left has cancelled its future: skip it.
        return [item for item in items if item[1].set_running_or_notify_cancel()]

    def _run_batch(self, items: list) -> None:
        """One forward per input shape (only same-shaped inputs stack), each request's
        rows handed back to it. No exception leaves: one bad batch must not end the batcher."""
        groups: dict[tuple, list] = {}
        for item in items:
            groups.setdefault(tuple(item[0].shape[1:]), []).append(item)
        for group in groups.values():
            try:
                batch = group[0][0] if len(group) == 1 else np.concatenate([inputs for inputs, _ in group])
                self.observe(batch.shape[0])
                outputs, start = self.forward(batch), 0
                for inputs, future in group:
                    future.set_result(rows(outputs, start, start + inputs.shape[0]))
                    start += inputs.shape[0]
            except Exception as err:  # noqa: BLE001 - handed to each waiting request
                for _, future in group:
                    if not future.done():
                        future.set_exception(err)

    def _loop(self) -> None:
        while not self.stopping:
            self.slots.acquire()
            items = self._collect()
            if items is None:
                self.slots.release()
                return
            try:
                done = self.executor.submit(self._run_batch, items)
            except RuntimeError:  # the pool has shut down: the server is stopping
                for _, future in items:
                    future.set_exception(RuntimeError("the server is shutting down"))
                self.slots.release()
                return
            done.add_done_callback(lambda _: self.slots.release())

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(None, timeout=30)
        self.thread.join(timeout=30)
        for _ in range(self.concurrency):  # forwards still running finish first
            self.slots.acquire(timeout=30)
        if self.own_executor:
            self.executor.shutdown(wait=True)
