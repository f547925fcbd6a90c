"""Drive an ASGI app in-process, as uvicorn would: one request at a time, or the app's
lifespan around a test body. Standard library only."""

from __future__ import annotations

import asyncio


def http_scope(method: str, path: str, headers=()) -> dict:
    """The ASGI scope of one HTTP request (`path` may carry a ?query)."""
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "scheme": "http",
        "server": ("t", 80),
        "http_version": "1.1",
    }


async def asgi_call(app, method, path, body=b"", headers=()):
    """(status, response headers, body) of one request, driven in-process through ASGI."""
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a connected client: as uvicorn, no disconnect until it leaves

    async def send(message):
        sent.append(message)

    await app(http_scope(method, path, headers), receive, send)
    start = sent[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


async def request(app, method, path, body=b"", headers=()):
    """(status, body) of one request."""
    status, _, out = await asgi_call(app, method, path, body, headers)
    return status, out


async def with_lifespan(app, body):
    """await body() between the app's lifespan start-up and shut-down."""
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    replies = []

    async def receive():
        return await queue.get()

    async def send(message):
        replies.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    try:
        return await body()
    finally:
        await queue.put({"type": "lifespan.shutdown"})
        await task


async def wait_ready(app, attempts: int = 300):
    """GET /ping until it stops answering 503 (loading); its last status."""
    for _ in range(attempts):
        status, _ = await request(app, "GET", "/ping")
        if status != 503:
            return status
        await asyncio.sleep(0.05)
    return status
