"""The outermost middleware: a request id, one access-log line and the request metrics
for every HTTP request.

The request id is the client's X-Amzn-RequestId (what SageMaker's front end sends) or
X-Request-Id, else a new one; the response carries it under both names, so a client,
the access log, SageMaker's own logs and a user hook's `context.request_id` can be
joined on it.

Access-log formats (SM_VISION_ACCESS_LOG):
    log    (default) a `serve.access` log record whose message is
           {"method", "path", "status", "latency_ms"} as JSON
    json   one bare JSON object per line on stdout, for log tools that parse JSON lines
           (CloudWatch Logs Insights): time, method, path, route, model, status,
           latency_ms, request_id
    off    no access log (metrics and request ids stay)

Client text (paths, header values, model names, URLs) reaches the log, and a raw
ESC [ ... sequence or a newline in it would drive the reader's terminal or forge a
log line. printable() escapes every non-printable character (C0/C1 controls, DEL,
newlines, bidi overrides and other format characters) as \\xNN / \\uNNNN, and
PrintableFormatter applies it to every log message: the server installs it for all
of its loggers, so no message needs to remember to. Tracebacks keep their line breaks
and are escaped otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from datetime import datetime, timezone

from serve.metrics import MODEL_SCOPE_KEY, route_label

access_log = logging.getLogger("serve.access")

LOG_FORMATS = ("log", "json", "off")
REQUEST_ID_HEADERS = (b"x-amzn-requestid", b"x-request-id")
MAX_REQUEST_ID = 128  # a client's id is echoed back: keep a hostile one short
REQUEST_ID_SCOPE_KEY = "sm_vision.request_id"  # the id, for the routes (a user hook's context.request_id)


def printable(text: str, keep_newlines: bool = False) -> str:
    """text with every non-printable character escaped (\\x1b, \\u202e, \\n)."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or (keep_newlines and char == "\n") else char.encode("unicode_escape").decode("ascii") for char in text
    )


class PrintableFormatter(logging.Formatter):
    """A logging.Formatter whose messages (and tracebacks, line breaks aside) carry no
    control characters: what a client sent cannot reach a terminal or split a line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:
        return printable(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep_newlines=True)


def escape_every_log() -> None:
    """PrintableFormatter on every handler of the root logger and of every logger with
    handlers of its own, each keeping its format (the server's, or MMS's in its workers)."""
    loggers = [logging.getLogger(), *(item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            current = handler.formatter or logging.Formatter()
            if not isinstance(current, PrintableFormatter):
                handler.setFormatter(PrintableFormatter(current._fmt, current.datefmt))  # _fmt: the format it was made with


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name in REQUEST_ID_HEADERS and value:
            return value[:MAX_REQUEST_ID]
    return uuid.uuid4().hex.encode()


class RequestLog:
    def __init__(self, app, metrics, log_format: str = "log", stream=None):
        if log_format not in LOG_FORMATS:
            raise ValueError(f"access log format {log_format!r}: choose one of {', '.join(LOG_FORMATS)}")
        self.app, self.metrics, self.log_format = app, metrics, log_format
        self.stream = stream or sys.stdout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500
        rid = request_id(scope["headers"])
        scope[REQUEST_ID_SCOPE_KEY] = rid.decode("latin-1")

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers += [(b"x-amzn-requestid", rid), (b"x-request-id", rid)]
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route, model = route_label(scope["path"]), scope.get(MODEL_SCOPE_KEY, "")
            self.metrics.request_finished(route, model, status, seconds)
            self._log(scope, route, model, status, seconds, rid)

    def _log(self, scope, route: str, model: str, status: int, seconds: float, rid: bytes) -> None:
        latency_ms = round(seconds * 1000, 2)
        path = printable(scope["path"])  # JSON escapes C0 controls but not DEL
        if self.log_format == "log":
            access_log.info(json.dumps({"method": scope["method"], "path": path, "status": status, "latency_ms": latency_ms}))
        elif self.log_format == "json":
            record = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "method": scope["method"],
                "path": path,
                "route": route,
                "model": model,
                "status": status,
                "latency_ms": latency_ms,
                "request_id": printable(rid.decode("latin-1")),
            }
            self.stream.write(json.dumps(record) + "\n")
            self.stream.flush()
