"""Connection-level checks uvicorn lacks.

- Header timeout: uvicorn closes an idle keep-alive connection only after it has
  answered a request on it; a client that connects and sends nothing, or drips its
  request headers a byte at a time, holds the connection (and its buffers) forever: a
  few hundred such clients exhaust the server. `with_header_timeout` gives the HTTP
  protocol a deadline for receiving each request's headers, from connect (or the end
  of the previous answer). (The body has its own deadline: serve.routes.BodyClock.)
- Ambiguous framing: a request with both Content-Length and Transfer-Encoding is how
  requests are smuggled past a proxy that reads the other header (RFC 9112 6.1: a
  server may reject it, and must close the connection after it). h11 frames such a
  request by Transfer-Encoding and would serve the bytes after the chunked body as a
  second request; it is answered 400 here and the connection is closed, before the app
  sees it.
- Connections accepted as the server stops: on SIGTERM uvicorn closes its listener and
  asks every connection it knows to finish (idle ones close, busy ones close after
  their answer), then waits for all of them. asyncio creates a connection accepted
  just before the listener closed a moment later, after that round, so uvicorn never
  asks it: it answered with keep-alive and held the drain until the graceful-shutdown
  timeout. Once any connection has been asked, a new one is asked at once too.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from container import ServeConfig


class _UnambiguousConnection(h11.Connection):
    """h11's server connection, refusing requests framed by both length headers."""

    def next_event(self):
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}  # h11 lowercases them
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", error_status_hint=400)
        return event


class HeaderTimeoutProtocol(H11Protocol):
    header_timeout_s: float = ServeConfig.header_timeout_s  # set per process by with_header_timeout
    draining = False  # this process's server has begun its graceful shutdown

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # uvicorn answers a RemoteProtocolError from next_event with 400 and closes the connection.
        self.conn = _UnambiguousConnection(h11.SERVER, self.conn._max_incomplete_event_size)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()
        if HeaderTimeoutProtocol.draining:
            self.shutdown()  # accepted before the listener closed, made after uvicorn's round

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_headers():
            self._arm()  # a running timer keeps running: dripping bytes does not extend it
        else:
            self._disarm()

    def shutdown(self) -> None:
        HeaderTimeoutProtocol.draining = True
        super().shutdown()

    def on_response_complete(self) -> None:
        if HeaderTimeoutProtocol.draining and not self.transport.is_closing():
            self.transport.close()  # no keep-alive while draining (super() then stops here)
        super().on_response_complete()
        self._disarm()  # idle from here on: uvicorn's keep-alive timeout applies

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class for uvicorn's `http` option, with this process's deadline.

    The class itself (not a subclass made here) is what uvicorn gets, so it pickles by
    reference to worker processes (SAGEMAKER_MODEL_SERVER_WORKERS); each worker sets its
    deadline again from the config it reads back (serve.cli.worker_app)."""
    HeaderTimeoutProtocol.header_timeout_s = seconds
    HeaderTimeoutProtocol.draining = False  # a new server (tests start several in one process)
    return HeaderTimeoutProtocol
