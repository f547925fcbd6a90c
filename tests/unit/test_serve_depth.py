"""How deep the path from an HTTP route to the model's forward is: the project frames
(files under container/, serve/ and vision/) on the stack at the moment the torch
module is called, counted from the route's endpoint down, on the request side (the
event loop's tasks of that request) and on the thread that runs the forward (an
inference worker; for the micro-batcher, the thread that runs its batch). At most 6,
micro-batched (the default) or not: each frame is code a reader must pass through to
see what a request does, and a place where per-request work hides."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest
import torch

import serve
from tests.support import asgi
from tests.support.asgi import request, wait_ready, with_lifespan
from tests.support.payloads import png_bytes

ROOT = Path(serve.__file__).resolve().parents[1]
PACKAGES = {"container", "serve", "vision"}
MAX_FRAMES = 6


def in_project(frame) -> bool:
    try:
        return Path(frame.f_code.co_filename).resolve().relative_to(ROOT).parts[0] in PACKAGES
    except ValueError:
        return False


def awaited_frames(task: asyncio.Task) -> list:
    """The frames of a suspended task, outermost first: its coroutine and each one it awaits."""
    frames, awaited = [], task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        frames.append(awaited.cr_frame)
        awaited = awaited.cr_await
    return frames


class Probe(torch.nn.Module):
    """Stands in for the served module: on the measured request it records the project
    frames of the thread it runs on, then holds the forward until the test has read the
    request side."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.entered, self.release = threading.Event(), threading.Event()
        self.thread_frames: list[str] = []

    def forward(self, x):
        frame, names = sys._getframe(), []
        while frame is not None:
            if in_project(frame):
                names.append(name(frame))
            frame = frame.f_back
        self.thread_frames = names[::-1]
        self.entered.set()
        self.release.wait(10)
        return self.inner(x)


def request_side(tasks: list[asyncio.Task], endpoint) -> list[str]:
    """Project frames of the request's tasks: the route's, from its endpoint down, then
    those it started for the work. A task waiting on the client (the hang-up watch) is
    beside the path, not on it."""
    route, work = [], []
    for task in tasks:
        frames = awaited_frames(task)
        codes = [frame.f_code for frame in frames]
        if endpoint.__code__ in codes:
            route = frames[codes.index(endpoint.__code__) :]
        elif not any(waits_on_client(frame) for frame in frames):
            work += frames
    return [name(frame) for frame in route + work if in_project(frame)]


def name(frame) -> str:
    return f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"


def waits_on_client(frame) -> bool:
    """Whether `frame` is the test client's `receive` (tests/support/asgi.py)."""
    return frame.f_code.co_name == "receive" and Path(frame.f_code.co_filename).resolve() == Path(asgi.__file__).resolve()


def path_to_forward(app) -> list[str]:
    """The project frames between the /invocations endpoint and the module's forward."""
    endpoint = next(route.endpoint for route in app.routes if route.path == "/invocations")

    async def body():
        assert await wait_ready(app) == 200
        classifier = app.state.models.model.handler.classifier
        probe = classifier.module = Probe(classifier.module)
        before = asyncio.all_tasks()
        answer = asyncio.ensure_future(request(app, "POST", "/invocations", png_bytes(), [("content-type", "image/png")]))
        for _ in range(1000):
            if probe.entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert probe.entered.is_set(), "the forward never ran"
        tasks = [task for task in asyncio.all_tasks() if task not in before]
        names = request_side(tasks, endpoint)
        probe.release.set()
        status, out = await answer
        assert status == 200, out
        return names + probe.thread_frames

    return asyncio.run(with_lifespan(app, body))


@pytest.mark.parametrize("batching", ["auto", "off"], ids=["micro-batched", "unbatched"])
def test_route_to_forward_is_at_most_six_project_frames(model_dir, serve_app, batching):
    path = path_to_forward(serve_app(model_dir, batching=batching))
    # The measurement saw both ends: the route's endpoint and our one frame around model(x).
    assert path[0] == "routes.invoke" and path[-1] == "torch_model.probabilities", path
    assert len(path) <= MAX_FRAMES, f"{len(path)} project frames from the route to model(x): {' -> '.join(path)}"
