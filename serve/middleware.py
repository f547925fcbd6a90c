"""HTTP middleware, all registered in one place: `middleware()` is the list the app
wraps its routes in (outermost first). Add a new one (tracing, auth) there."""

from __future__ import annotations

import logging

from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from serve.access_log import RequestLog
from serve.errors import ServeError, reply

log = logging.getLogger("serve")


class ErrorReplies:
    """Every route's errors answered through serve.errors.reply (typed errors -> their
    status, anything else -> 500 with the traceback in the log only), so a route is
    its own code and nothing wraps it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as err:  # noqa: BLE001 - e.g. a user hook's bug: answered, and logged below
            if started:
                raise  # half an answer is out: nothing left to map
            if not isinstance(err, ServeError):
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body, headers = reply(err)
            await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


async def routing_error(request, exc) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method), which its router answers
    before our middleware sees them: the same reply."""
    status, body, headers = reply(exc)
    return JSONResponse(body, status_code=status, headers=headers)


def middleware(metrics, access_log: str) -> list[Middleware]:
    # Request ids, the access log and the request metrics (serve.access_log); inside
    # them, the error replies, so the access log and metrics see their status.
    return [Middleware(RequestLog, metrics=metrics, log_format=access_log), Middleware(ErrorReplies)]
