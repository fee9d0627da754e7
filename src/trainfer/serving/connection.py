"""Time bounds on a connection that uvicorn does not have: for request headers, and for a client
that stops reading its answer.

uvicorn closes a kept-alive connection that stays idle (``timeout_keep_alive``), but a connection that
opens and sends nothing, or half a request line, is held forever; and so is one whose client stops
reading a large answer (its bytes wait in the transport's buffer, and a SIGTERM drain waits for them
until its own limit). Every such connection is one more that the drain and the file-descriptor limit
must carry. The protocol below closes a connection whose request headers are not complete
``header_timeout_s`` after it opened or after the previous answer, and drops one whose writes stay
paused (the client reads nothing) for ``write_timeout_s``, as nginx's send_timeout does. (The body
has its own bound in the ASGI layer: asgi.BodyLimit.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol  # this module is imported only to serve


class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol (httptools, or h11 without it) with the header deadline added.

    Module-level, so that ``--workers N`` can name it to uvicorn ("trainfer.serving.connection:..."):
    each worker sets ``header_timeout_s`` from the settings it is handed."""

    header_timeout_s = 10.0
    write_timeout_s = 30.0
    _header_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _waiting_since: Any = None  # the request cycle current when the timer was armed

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Both of uvicorn's protocols start a new request cycle once a request's headers are parsed.
        if self._header_timer is not None and self.cycle is not self._waiting_since:
            self._stop_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Unless the next request's headers came already (pipelining), wait for them afresh.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:  # the transport's buffer is full: the client is not reading
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(self.write_timeout_s, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        self.transport.abort()  # close() would wait for the buffer to drain: the very thing that stalls

    def _await_headers(self) -> None:
        self._stop_timer()
        self._waiting_since = self.cycle
        self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout_s, self._headers_late)

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
