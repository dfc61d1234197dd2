"""A deadline for HTTP request heads (uvicorn has none): slow or silent clients cannot pin sockets.

uvicorn's h11 protocol waits without limit for a request head: a TCP connection that sends
nothing, or a WebSocket upgrade that stops half-way through its headers, keeps its socket and file
descriptor until the server stops. ``head_timeout_protocol(timeout_s, on_timeout)`` returns an
``H11Protocol`` subclass that closes such a connection when its request head is not complete
``timeout_s`` after the connection opened (or after its previous response, for a keep-alive
connection whose next request starts arriving). Once a head is complete (or the connection is
upgraded to a WebSocket) the timer is off: bodies, responses and WebSocket sessions are bounded
elsewhere (uvicorn's keep-alive timeout, ``ServerConfig.start_timeout_s`` / ``idle_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("stream_server")


class _HeadTimeoutH11Protocol(H11Protocol):
    head_timeout_s: float = 10.0
    on_head_timeout: Callable[[], None] = staticmethod(lambda: None)
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_protocol() is not self or self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()  # upgraded, or the head is complete
        elif self._head_timer is None and self.timeout_keep_alive_task is None:
            self._arm_head_timer()  # the next request on a keep-alive connection is arriving

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return
        if self.conn.their_state is not h11.IDLE:
            return  # a request is being served
        log.debug("closing %s: no complete request head within %.1f s", self.client, self.head_timeout_s)
        self.on_head_timeout()
        self.transport.close()


def head_timeout_protocol(timeout_s: float, on_timeout: Callable[[], None]) -> type[H11Protocol]:
    """An ``H11Protocol`` class that closes connections without a request head after ``timeout_s``."""
    return type(
        "HeadTimeoutH11Protocol",
        (_HeadTimeoutH11Protocol,),
        {"head_timeout_s": timeout_s, "on_head_timeout": staticmethod(on_timeout)},
    )
