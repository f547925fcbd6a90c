"""HTTP middleware, all registered in one place: `middleware()` is the list the app
wraps its routes in (outermost first). Add a new one (metrics, tracing) there."""

from __future__ import annotations

import json
import logging
import time

from starlette.middleware import Middleware

access_log = logging.getLogger("serve.access")


class AccessLog:
    """One JSON line per request: method, path, status, latency."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status[0],
                        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                    }
                )
            )


def middleware() -> list[Middleware]:
    return [Middleware(AccessLog)]
