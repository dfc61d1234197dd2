"""The OBS overlay's message queue: HTTP routes that queue texts, and an event socket for the page.

The overlay page (``web_demo/overlay.html``) never synthesizes through a side door: it receives the
next text to read on ``WS /v1/overlay/events`` and speaks it through an ordinary ``/v1/stream``
session, exactly like any other client. This module only decides *what* is read and *when*.

Routes (all errors are JSON ``{"type": "error", "code": .., "message": ..}``):

- ``POST /v1/overlay/say`` ``{"text": str, "voice"?: str, "author"?: str}`` -> 202
  ``{"id": str, "position": int}``; ``position`` is how many messages are ahead of this one
  (0 = it is read next). 400 ``invalid_json`` / ``invalid_field`` / ``text_too_long``,
  429 ``queue_full``, 401 ``unauthorized``.
- ``POST /v1/overlay/skip`` -> 200 ``{"skipped": id | null}``: stop the message being read.
- ``POST /v1/overlay/clear`` -> 200 ``{"removed": n, "skipped": id | null}``: empty the queue, skip.
- ``GET /v1/overlay/queue`` -> 200 ``{"current": item | null, "pending": [item, ...],
  "listeners": n}`` (read-only, no key needed).
- ``WS /v1/overlay/events``: server -> page ``{"type": "say", "id", "text", "voice", "author"}`` and
  ``{"type": "skip", "id"}``; page -> server ``{"type": "played", "id"}``.

The POST routes need the API key when ``ServerConfig.overlay_api_key`` is set (header
``Authorization: Bearer KEY`` or ``X-API-Key: KEY``); reading (``GET``, the event socket) does not,
so an OBS browser source URL never carries the key.

Several overlay pages: every connected page gets the same ``say``; the first ``played`` report for
the current id advances the queue (the others' late reports are ignored). When the last page
disconnects in the middle of a message, that message goes back to the front of the queue so it is
read in full once a page is back. Messages wait in the queue while no page is connected.

Everything runs on the event loop without awaiting inside a state change, so no lock is needed;
the queue and each page's outbox are bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from stream_server.config import ServerConfig

log = logging.getLogger(__name__)

OUTBOX_SIZE = 16  # per page; a page this far behind on tiny control messages is dropped
MAX_FIELD_CHARS = 64  # voice and author names
_SAY_FIELDS = frozenset({"text", "voice", "author"})


class OverlayError(Exception):
    """A rejected overlay request; ``status`` is the HTTP status, ``code`` the stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        body = {"type": "error", "code": self.code, "message": self.message}
        return JSONResponse(body, status_code=self.status)


@dataclass(frozen=True)
class OverlayItem:
    """One queued text. ``voice`` "" = the page's default voice."""

    id: str
    text: str
    voice: str = ""
    author: str = ""

    def say_message(self) -> dict[str, str]:
        return {"type": "say", **asdict(self)}


class OverlayQueue:
    """Queue state and the connected pages. Call only from the event loop."""

    def __init__(self, max_pending: int, max_chars: int) -> None:
        if max_pending < 1:
            raise ValueError("overlay queue size must be at least 1")
        self.max_pending = max_pending
        self.max_chars = max_chars
        self.pending: deque[OverlayItem] = deque()
        self.current: OverlayItem | None = None
        self.listeners: set[asyncio.Queue[dict[str, str]]] = set()
        self._ids = itertools.count(1)

    # --- requests -------------------------------------------------------------------------------
    def parse_say(self, body: Any) -> tuple[str, str, str]:
        """Validate a ``say`` body; returns (text, voice, author) or raises ``OverlayError``."""
        if not isinstance(body, dict):
            raise OverlayError(400, "invalid_json", "body must be a JSON object")
        unknown = sorted(set(body) - _SAY_FIELDS)
        if unknown:
            raise OverlayError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise OverlayError(400, "invalid_field", "text must be a non-empty string")
        if len(text) > self.max_chars:
            raise OverlayError(
                400,
                "text_too_long",
                f"text has {len(text)} characters, the limit is {self.max_chars}",
            )
        fields = []
        for name in ("voice", "author"):
            value = body.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
                raise OverlayError(
                    400,
                    "invalid_field",
                    f"{name} must be a string of at most {MAX_FIELD_CHARS} characters",
                )
            fields.append(value)
        return text.strip(), fields[0], fields[1]

    def say(self, text: str, voice: str = "", author: str = "") -> tuple[OverlayItem, int]:
        """Queue a text; returns the item and its position (messages ahead of it)."""
        if len(self.pending) >= self.max_pending:
            raise OverlayError(
                429,
                "queue_full",
                f"the overlay queue is full ({self.max_pending} messages waiting)",
            )
        item = OverlayItem(id=f"m{next(self._ids)}", text=text, voice=voice, author=author)
        position = len(self.pending) + (1 if self.current is not None else 0)
        self.pending.append(item)
        self._dispatch()
        return item, position

    def skip(self) -> str | None:
        """Stop the message being read (if any) and move on; returns its id."""
        item = self.current
        if item is None:
            return None
        self.current = None
        self._broadcast({"type": "skip", "id": item.id})
        self._dispatch()
        return item.id

    def clear(self) -> tuple[int, str | None]:
        """Drop every waiting message and skip the current one; returns (removed, skipped id)."""
        removed = len(self.pending)
        self.pending.clear()
        return removed, self.skip()

    def played(self, item_id: str) -> None:
        """A page finished reading ``item_id``; late or duplicate reports are ignored."""
        if self.current is not None and self.current.id == item_id:
            self.current = None
            self._dispatch()

    # --- pages ----------------------------------------------------------------------------------
    def connect(self) -> asyncio.Queue[dict[str, str]]:
        outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue(maxsize=OUTBOX_SIZE)
        self.listeners.add(outbox)
        self._dispatch()
        return outbox

    def disconnect(self, outbox: asyncio.Queue[dict[str, str]]) -> None:
        self.listeners.discard(outbox)
        if not self.listeners and self.current is not None:
            # Nobody finished reading it: read it again, first, when a page comes back.
            self.pending.appendleft(self.current)
            self.current = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "current": asdict(self.current) if self.current else None,
            "pending": [asdict(item) for item in self.pending],
            "listeners": len(self.listeners),
        }

    # --- internals ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self.current is None and self.pending and self.listeners:
            self.current = self.pending.popleft()
            self._broadcast(self.current.say_message())

    def _broadcast(self, message: dict[str, str]) -> None:
        for outbox in list(self.listeners):
            try:
                outbox.put_nowait(message)
            except asyncio.QueueFull:
                # A page that cannot keep up with a few control messages is stuck: drop it; its
                # socket task sees the sentinel and closes the connection.
                log.warning("overlay page not reading its events; disconnecting it")
                self.listeners.discard(outbox)
                with contextlib.suppress(asyncio.QueueEmpty):
                    outbox.get_nowait()
                outbox.put_nowait({"type": "_close"})
        if not self.listeners and self.current is not None:
            self.pending.appendleft(self.current)
            self.current = None


class OverlayBackend(Protocol):
    """Where the queue lives: this process (`LocalOverlay`) or shared by several server replicas
    (`stream_server.ray_serve`'s named actor). Every method may raise ``OverlayError``."""

    async def say(self, text: str, voice: str, author: str) -> tuple[OverlayItem, int]: ...
    async def skip(self) -> str | None: ...
    async def clear(self) -> tuple[int, str | None]: ...
    async def snapshot(self) -> dict[str, Any]: ...
    async def connect(self) -> str:
        """Register a page; returns its listener id."""
        ...
    async def next_event(self, listener: str) -> dict[str, str]:
        """The page's next event (waits); ``{"type": "_close"}`` when the page must go."""
        ...
    async def played(self, item_id: str) -> None: ...
    async def disconnect(self, listener: str) -> None: ...


class LocalOverlay:
    """`OverlayBackend` over an in-process `OverlayQueue` (one server process)."""

    def __init__(self, queue: OverlayQueue) -> None:
        self.queue = queue
        self._outboxes: dict[str, asyncio.Queue[dict[str, str]]] = {}
        self._ids = itertools.count(1)

    async def say(self, text: str, voice: str, author: str) -> tuple[OverlayItem, int]:
        return self.queue.say(text, voice, author)

    async def skip(self) -> str | None:
        return self.queue.skip()

    async def clear(self) -> tuple[int, str | None]:
        return self.queue.clear()

    async def snapshot(self) -> dict[str, Any]:
        return self.queue.snapshot()

    async def connect(self) -> str:
        listener = f"l{next(self._ids)}"
        self._outboxes[listener] = self.queue.connect()
        return listener

    async def next_event(self, listener: str) -> dict[str, str]:
        outbox = self._outboxes.get(listener)
        if outbox is None:
            return {"type": "_close"}
        return await outbox.get()

    def pending_events(self, listener: str) -> list[dict[str, str]]:
        """Events queued for the page right now, without waiting (for pollers)."""
        outbox = self._outboxes.get(listener)
        if outbox is None:
            return [{"type": "_close"}]
        events = []
        while not outbox.empty():
            events.append(outbox.get_nowait())
        return events

    async def played(self, item_id: str) -> None:
        self.queue.played(item_id)

    async def disconnect(self, listener: str) -> None:
        outbox = self._outboxes.pop(listener, None)
        if outbox is not None:
            self.queue.disconnect(outbox)

    def listeners(self) -> list[str]:
        return list(self._outboxes)


def _check_key(request: Request, api_key: str) -> None:
    if not api_key:
        return
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise OverlayError(401, "unauthorized", "missing or wrong API key")


def create_overlay_router(cfg: ServerConfig, backend: OverlayBackend | None = None) -> APIRouter:
    """Build the overlay routes; ``backend`` None = a queue of this app's own (one process)."""
    queue = OverlayQueue(cfg.overlay_queue_size, cfg.overlay_max_chars)
    shared: OverlayBackend = backend if backend is not None else LocalOverlay(queue)
    router = APIRouter()
    api_key = cfg.overlay_api_key

    async def _json_body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > 16 * cfg.overlay_max_chars + 1024:  # JSON escapes at most ~6x; be generous
            raise OverlayError(400, "text_too_long", "request body too large")
        try:
            return json.loads(raw) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise OverlayError(400, "invalid_json", "body is not valid JSON") from None

    @router.post("/v1/overlay/say", status_code=202)
    async def overlay_say(request: Request) -> JSONResponse:
        try:
            _check_key(request, api_key)
            text, voice, author = queue.parse_say(await _json_body(request))
            item, position = await shared.say(text, voice, author)
        except OverlayError as exc:
            return exc.response()
        return JSONResponse({"id": item.id, "position": position}, status_code=202)

    @router.post("/v1/overlay/skip")
    async def overlay_skip(request: Request) -> JSONResponse:
        try:
            _check_key(request, api_key)
        except OverlayError as exc:
            return exc.response()
        return JSONResponse({"skipped": await shared.skip()})

    @router.post("/v1/overlay/clear")
    async def overlay_clear(request: Request) -> JSONResponse:
        try:
            _check_key(request, api_key)
        except OverlayError as exc:
            return exc.response()
        removed, skipped = await shared.clear()
        return JSONResponse({"removed": removed, "skipped": skipped})

    @router.get("/v1/overlay/queue")
    async def overlay_queue() -> JSONResponse:
        return JSONResponse(await shared.snapshot())

    @router.websocket("/v1/overlay/events")
    async def overlay_events(websocket: WebSocket) -> None:
        await websocket.accept()
        listener = await shared.connect()
        send_lock = asyncio.Lock()  # one sender at a time: the writer and the reader's errors

        async def send(msg: dict[str, str]) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(msg))

        async def reader() -> None:
            while True:
                raw = await websocket.receive_text()
                try:
                    msg = json.loads(raw)
                except json.JSONDecodeError:
                    msg = None
                if (
                    isinstance(msg, dict)
                    and msg.get("type") == "played"
                    and isinstance(msg.get("id"), str)
                ):
                    await shared.played(msg["id"])
                else:
                    err = {
                        "type": "error",
                        "code": "invalid_message",
                        "message": 'expected {"type": "played", "id": ...}',
                    }
                    await send(err)

        async def writer() -> None:
            while True:
                msg = await shared.next_event(listener)
                if msg["type"] == "_close":
                    await websocket.close(code=1008)
                    return
                await send(msg)

        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect):
                    # A malformed frame (e.g. binary) ends the page's connection, nothing else.
                    log.debug("overlay event socket ended: %r", exc)
        finally:
            await shared.disconnect(listener)
            for task in tasks:
                task.cancel()

    router.overlay_queue = queue  # type: ignore[attr-defined]  # for tests and introspection
    return router
