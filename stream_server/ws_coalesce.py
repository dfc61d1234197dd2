"""One socket write per event-loop turn for a WebSocket's frames (uvicorn writes one per frame).

uvicorn's websockets-sansio protocol hands every outgoing frame to ``transport.write`` at once, and
asyncio's socket transport calls ``send()`` at once while its buffer is empty: a session's first
step (0.25-1 s of speech, 13-50 Opus frames) cost as many system calls, and on the server's main
process they were ~40 % of its busy time at 64 clients (py-spy). ``CoalescingWebSocketProtocol``
gives the protocol a ``WriteCoalescer`` in front of its transport: the frames written in one turn of
the event loop leave in one ``send()`` at the start of the next turn (the writer yields every few
frames, so a burst goes out in groups; a lone frame waits only for the callbacks already queued).
The bytes on the wire and their order are unchanged; a TCP peer reads the same WebSocket frames.

Bounded: a turn's writes are flushed at the next turn, and at once past ``FLUSH_BYTES``; flow control
stays the real transport's (its ``pause_writing`` reaches the protocol as before).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

FLUSH_BYTES = 64 * 1024  # a turn that writes more than this sends at once


class WriteCoalescer:
    """A transport proxy: ``write`` collects, the next loop turn (or ``close``) sends it all."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))  # the caller may reuse a bytearray
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what this turn wrote (a no-op when nothing waits or the transport is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a close frame written just before goes out first
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol writing through a ``WriteCoalescer``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        real = cast(asyncio.Transport, transport)
        super().connection_made(cast(asyncio.Transport, WriteCoalescer(real, self.loop)))
