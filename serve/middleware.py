"""HTTP middleware, all registered in one place: `middleware()` is the list the app
wraps its routes in (outermost first). Add a new one (tracing, auth) there."""

from __future__ import annotations

from starlette.middleware import Middleware

from serve.access_log import RequestLog


def middleware(metrics, access_log: str) -> list[Middleware]:
    # Request ids, the access log and the request metrics (serve.access_log).
    return [Middleware(RequestLog, metrics=metrics, log_format=access_log)]
