"""The bounded outbox between a connection's state changes and its socket writer.

Every WebSocket API uses it (``/v1/stream``'s ``Connection``, the ElevenLabs connections): items
are put synchronously on the event loop (never awaiting, so a state change is atomic), the writer
task awaits them in order, and a ``CloseMarker`` ends the stream. It is bounded: a full outbox
raises ``OutboxFull``, which is a bug (the scheduler parks a session ``max_ahead_s`` ahead of its
writer long before), answered by ``force_close``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar


class OutboxFull(Exception):
    pass


@dataclass(frozen=True)
class CloseMarker:
    """The writer's last item: close the socket with ``code`` and ``reason``."""

    code: int
    reason: str


T = TypeVar("T")


def _not_audio(item: object) -> int | None:
    return None


class Outbox(Generic[T]):
    """Bounded FIFO of a connection's outgoing items (any API's: ``T``), filled synchronously on the
    loop, drained by the writer, ended by a ``CloseMarker``. ``audio_size(item)``: the item's audio
    bytes (None: not audio), counted for /metrics and dropped by ``drop_audio``."""

    def __init__(self, capacity: int, audio_size: Callable[[T], int | None] = _not_audio) -> None:
        self.capacity = capacity
        self._audio_size = audio_size
        self._items: deque[T | CloseMarker] = deque()
        self._ready = asyncio.Event()
        self.audio_bytes = 0  # audio payload bytes queued (for /metrics)

    def __len__(self) -> int:
        return len(self._items)

    def _size(self, item: T | CloseMarker) -> int | None:
        return None if isinstance(item, CloseMarker) else self._audio_size(item)

    def put(self, item: T | CloseMarker) -> None:
        if len(self._items) >= self.capacity:
            raise OutboxFull(f"outbox over {self.capacity} items")
        self._items.append(item)
        self.audio_bytes += self._size(item) or 0
        self._ready.set()

    def force_close(self, code: int, reason: str, *, last: T | None = None) -> None:
        """Drop everything queued, then send ``last`` (if any) and close (an overflow, which is a
        bug and never a client's fault, or a fatal error the client is told)."""
        self._items.clear()
        self.audio_bytes = 0
        if last is not None:
            self._items.append(last)
            self.audio_bytes = self._size(last) or 0
        self._items.append(CloseMarker(code, reason))
        self._ready.set()

    def drop_audio(self) -> None:
        """Forget queued audio frames (urgent close); control messages stay in order."""
        self._items = deque(i for i in self._items if self._size(i) is None)
        self.audio_bytes = 0

    async def get(self) -> T | CloseMarker:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        self.audio_bytes -= self._size(item) or 0
        return item
