"""Client text in the log (issue 22): terminal escape sequences, newlines and bidi
controls from a request path or header are escaped, in the access log and in every
log message formatted by PrintableFormatter."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from serve.access_log import PrintableFormatter, RequestLog, printable

NASTY = "/invocations\x1b[2J\x1b]0;owned\x07\nFAKE 200\x7f\u202egnp.exe"


def test_printable_escapes_every_control():
    text = printable(NASTY)
    assert text.isprintable()
    assert "\\x1b[2J" in text and "\\n" in text and "\\x7f" in text and "\\u202e" in text
    assert printable("/ping?a=é") == "/ping?a=é"  # printable text is left alone


class _Metrics:
    def request_started(self):
        pass

    def request_finished(self, *args):
        pass


def _request(path: str, log_format: str, stream=None) -> None:
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        pass

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"x-request-id", b"id\x1b[31m")]}
    asyncio.run(RequestLog(app, _Metrics(), log_format, stream)(scope, receive, send))


def test_json_access_lines_carry_no_control_characters():
    stream = io.StringIO()
    _request(NASTY, "json", stream)
    line = stream.getvalue()
    assert line.count("\n") == 1 and "\x1b" not in line and "\x7f" not in line
    record = json.loads(line)
    assert record["path"] == printable(NASTY) and record["request_id"] == "id\\x1b[31m"


def test_log_access_lines_carry_no_control_characters(caplog):
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(PrintableFormatter("%(name)s: %(message)s"))
    logger = logging.getLogger("serve.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _request(NASTY, "log")
    finally:
        logger.removeHandler(handler)
    out = handler.stream.getvalue()
    assert out.count("\n") == 1 and out.isascii() and "\x1b" not in out and "\x7f" not in out


def test_the_formatter_escapes_messages_and_keeps_traceback_lines():
    formatter = PrintableFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("serve", logging.ERROR, __file__, 1, "loading model %s failed", (NASTY,), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and line.startswith("ERROR loading model /invocations\\x1b[2J")
    try:
        raise ValueError("bad\x1b[31m name")
    except ValueError:
        import sys

        record = logging.LogRecord("serve", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = formatter.format(record)
    assert "Traceback" in text and text.count("\n") >= 3 and "\x1b" not in text and "bad\\x1b[31m name" in text
