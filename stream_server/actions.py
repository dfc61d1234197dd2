"""What a ``Session`` asks the connection glue to do, as plain frozen data.

The state machine returns these instead of doing I/O, so it runs and is tested without sockets or
threads: ``Send`` an outbox item (written in order), ``Submit`` a segment to the scheduler,
``CancelJobs`` of the session, ``Close`` the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stream_server.protocol import ServerMessage
from stream_server.scheduler import SynthRequest
from stream_server.turns import Turn


@dataclass(frozen=True)
class OutItem:
    """One outbox entry. ``payload``: a message, audio bytes, or a callable rendering the message
    when it is written (so stats include every frame before it). ``generation`` None = never stale.
    """

    generation: int | None
    payload: ServerMessage | bytes | Callable[[], ServerMessage]
    audio_s: float = 0.0
    turn: Turn | None = None


@dataclass(frozen=True)
class Send:
    item: OutItem


@dataclass(frozen=True)
class Submit:
    request: SynthRequest
    arrival_s: float


@dataclass(frozen=True)
class CancelJobs:
    pass


@dataclass(frozen=True)
class Close:
    """Close the socket. ``drain``: after everything queued is written; else drop queued audio."""

    code: int
    reason: str = ""
    drain: bool = True


Action = Send | Submit | CancelJobs | Close
