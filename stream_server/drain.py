"""Graceful drain on SIGTERM / SIGINT, and the gate that refuses new work while draining.

The first signal does not stop uvicorn at once. ``DrainingServer.handle_exit`` sets
``Hub.draining`` (a plain flag, safe in a signal handler): from then on ``/healthz`` answers 503
``{"status": "draining"}``, new ``/v1/stream`` sessions get ``shutting_down`` + close 1001 and
``DrainGate`` answers other new work (HTTP requests other than GET/HEAD/OPTIONS, other WebSocket
routes) with 503 / close 1001, while the listening socket stays open so load balancers can see the
503. ``drain`` then closes every session that is not in the middle of a turn with
``shutting_down`` (1001) and lets the others finish their current turn's audio for up to
``ServerConfig.drain_timeout_s``; what is left at the deadline is closed at once. Then uvicorn's
normal shutdown runs and the process exits 0. A second signal cuts the grace short; a third
(SIGINT) is uvicorn's force quit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from stream_server.connection import Connection, Hub
from stream_server.errors import CLOSE_GOING_AWAY
from stream_server.session import Phase

log = logging.getLogger("stream_server")

_POLL_S = 0.05  # how often the drain looks for sessions whose turn has finished
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MESSAGE = "server is shutting down"


async def drain(hub: Hub, grace_s: float, hurry: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Close sessions as their turns finish, the rest after ``grace_s``; (finished, cut) counts.

    Sessions that sent ``end`` close by themselves with ``done``; they count as finished when they
    close before the deadline.
    """
    hub.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    n_open = len(hub.connections)
    log.info("draining: %d session(s), grace %.1f s", n_open, grace_s)
    while hub.connections and loop.time() < deadline and not hurry():
        for conn in list(hub.connections):
            # other APIs' connections (stream_server.api) have no turn to wait for here: they are
            # closed with everything else at the deadline
            if isinstance(conn, Connection) and _between_turns(conn):
                conn.close_after_output("shutting_down", _MESSAGE)
        await asyncio.sleep(_POLL_S)
    cut = len(hub.connections)
    await hub.shutdown()  # the rest: shutting_down + 1001 now, queued audio dropped
    finished = n_open - cut  # new sessions were refused meanwhile
    log.info("drained: %d session(s) closed after their turn, %d cut at the deadline", finished, cut)
    return finished, cut


def _between_turns(conn: Connection) -> bool:
    session = conn.session
    return session.phase in (Phase.NEW, Phase.OPEN) and not session.mid_turn


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM/SIGINT (see the module doc).

    Subclasses say which hub to drain (``drain_hub``); without one, signals behave as in uvicorn.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._drain_requested = False
        self._drain_hurry = False
        self._drain_task: asyncio.Task[tuple[int, int]] | None = None

    def drain_hub(self) -> Hub | None:
        return None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        hub = self.drain_hub()
        if hub is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        if self._drain_requested:  # a second signal: stop waiting for turns to finish
            log.info("signal %s again: closing all sessions now", signal.Signals(sig).name)
            self._drain_hurry = True
            return
        # Only flags here (this runs in a signal handler); the drain task starts on the next tick.
        # The signal is not recorded for re-raising: a drained server exits 0.
        self._drain_requested = True
        hub.draining = True

    async def on_tick(self, counter: int) -> bool:
        hub = self.drain_hub()
        if self._drain_requested and self._drain_task is None and hub is not None:
            grace_s = hub.config.server.drain_timeout_s
            self._drain_task = asyncio.create_task(
                drain(hub, grace_s, lambda: self._drain_hurry), name="drain"
            )
        if self._drain_task is not None and self._drain_task.done():
            if not self._drain_task.cancelled() and self._drain_task.exception() is not None:
                log.error("drain failed", exc_info=self._drain_task.exception())
            self.should_exit = True
        return await super().on_tick(counter)


class DrainGate:
    """ASGI middleware: while draining, new non-GET HTTP requests get 503 and new WebSockets (other
    than ``/v1/stream``, which answers ``shutting_down`` itself) are closed with 1001."""

    def __init__(self, app: ASGIApp, hub: Hub) -> None:
        self.app = app
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        if not (hub.draining or hub.shutting_down) or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket" and scope["path"] == "/v1/stream":
            await self.app(scope, receive, send)
            return
        hub.metrics.observe_refusal("shutting_down")
        if scope["type"] == "websocket":
            await _close_websocket(receive, send)
            return
        body = json.dumps({"error": {"code": "shutting_down", "message": _MESSAGE}}).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"5"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _close_websocket(receive: Receive, send: Send) -> None:
    message: Any = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY, "reason": "shutting_down"})
