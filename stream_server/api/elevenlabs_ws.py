"""ElevenLabs-compatible WebSockets: the glue between a socket and its contexts.

One ``ElevenLabsConnection`` per socket (``elevenlabs_routes`` checks the connection first): a
reader task parses client frames (``elevenlabs_protocol``) and feeds each context's state machine
(``elevenlabs_context``, one of our ``Session``s per context, each with its own scheduler channel);
a writer task drains one bounded outbox to the socket. When one task ends the other is cancelled.

Backpressure: a context with ``max_pending_segments`` segments waiting keeps further messages in
its own queue (bounded by ``max_session_chars``) until segments finish, instead of answering
``busy`` like ``/v1/stream`` (ElevenLabs clients cannot resend); the scheduler parks a context
``max_ahead_s`` ahead of the socket writer as for every session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import WebSocket, WebSocketDisconnect

from stream_server.actions import CancelJobs, Submit
from stream_server.api.elevenlabs_context import (
    ContextOut,
    Effects,
    ElevenLabsContext,
    error_message,
)
from stream_server.api.elevenlabs_protocol import (
    ClientMessage,
    CloseContext,
    CloseSocket,
    EndOfInput,
    ErrorMessage,
    Flush,
    KeepAlive,
    SendText,
    encode_server_message,
    parse_client_message,
)
from stream_server.api.elevenlabs_query import MAX_CONTEXTS, ElevenLabsError, StreamParams
from stream_server.connection import Hub
from stream_server.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN_LATER,
    SessionLimitError,
)
from stream_server.outbox import CloseMarker, Outbox, OutboxFull
from stream_server.scheduler import Channel, SegmentFailed, WorkerEvent
from stream_server.session import Session

log = logging.getLogger("stream_server")

KeyCheck = Callable[[str | None], None]  # raises ElevenLabsError when the key is refused

_YIELD_EVERY = 4
_MIN_WAIT_S = 0.05
_RECHECK_S = 0.25


def resolve_voice(hub: Hub, voice_id: str) -> str:
    """Our voice for an ElevenLabs ``voice_id`` (``default``: the engine's default voice).

    Call it only for an authenticated caller: the answer tells which voices exist.

    Raises:
        ElevenLabsError: ``voice_not_found``.
    """
    info = hub.engine_info()
    if voice_id == "default":
        return info.default_voice
    if voice_id not in info.voice_names():
        raise ElevenLabsError("voice_not_found", f"unknown voice {voice_id[:64]!r}; see GET /v1/voices "
                              "(or use 'default')", param="voice_id")
    return voice_id


@dataclass(frozen=True)
class _Out:
    ctx: ElevenLabsContext | None
    channel: Channel | None
    out: ContextOut


class ElevenLabsConnection:
    """One ElevenLabs-compatible WebSocket (see the module docstring)."""

    def __init__(self, hub: Hub, ws: WebSocket, params: StreamParams, voice: str | None, *,
                 check_key: KeyCheck | None = None) -> None:
        self.hub = hub
        self.ws = ws
        self.params = params
        self.voice = voice  # None: ``params.voice_id`` is resolved once the first message's key is accepted
        self.check_key = check_key  # None once the socket is authenticated (or needs no key)
        self.id = uuid.uuid4().hex[:12]
        self.scheduler = hub.require_scheduler()
        server = hub.config.server
        self.max_chars = server.max_message_chars
        self.contexts: dict[str | None, ElevenLabsContext] = {}
        self.channels: dict[int, Channel] = {}  # id(context) -> its channel
        self.waiting: dict[int, deque[ClientMessage]] = {}
        self.waiting_chars = 0
        self.n_contexts = 0
        self.outbox: Outbox[_Out] = Outbox(MAX_CONTEXTS * (int(server.max_ahead_s * 50) + 512))
        self.last_message_s = time.monotonic()
        self.closing_socket = False  # close_socket / end of input: close once contexts are done
        self.failed = False
        self.closed = False
        self.finished = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        hub = self.hub
        hub.connections.add(self)
        hub.metrics.sessions.inc()
        hub.metrics.active_sessions.inc()
        reader = asyncio.create_task(self._reader(), name=f"el-reader-{self.id}")
        writer = asyncio.create_task(self._writer(), name=f"el-writer-{self.id}")
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            for result in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("elevenlabs connection %s task failed", self.id, exc_info=result)
            self.closed = True
            for channel in self.channels.values():
                self.scheduler.close_channel(channel)
            hub.connections.discard(self)
            hub.metrics.active_sessions.dec()
            self.finished.set()

    def shutdown(self) -> None:
        self._fail(ErrorMessage("shutting_down", "server is shutting down", CLOSE_GOING_AWAY))

    # ------------------------------------------------------------------ contexts

    def _context(self, cid: str | None) -> ElevenLabsContext:
        ctx = self.contexts.get(cid)
        if ctx is not None:
            return ctx
        if len(self.contexts) >= MAX_CONTEXTS:
            raise ElevenLabsError("max_contexts", f"at most {MAX_CONTEXTS} contexts per connection are open at once")
        self.n_contexts += 1
        session = Session(f"{self.id}-{self.n_contexts}", self.hub.config, self.hub.engine_info(),
                          metrics=self.hub.metrics)
        ctx = ElevenLabsContext(cid, session, self.params, self.hub.config.audio.pause_ms, time.monotonic())
        self.channels[id(ctx)] = self.scheduler.open_channel(
            session.session_id, functools.partial(self._on_worker_event, ctx)
        )
        self.waiting[id(ctx)] = deque()
        self.contexts[cid] = ctx
        return ctx

    def _forget(self, ctx: ElevenLabsContext) -> None:
        if self.contexts.get(ctx.context_id) is ctx:
            del self.contexts[ctx.context_id]
        channel = self.channels.pop(id(ctx), None)
        if channel is not None:
            self.scheduler.close_channel(channel)
        for msg in self.waiting.pop(id(ctx), deque()):
            if isinstance(msg, SendText):
                self.waiting_chars -= len(msg.text)
        if self.closing_socket and not self.contexts:
            self._close_when_sent()

    def _apply(self, ctx: ElevenLabsContext, effects: Effects) -> None:
        channel = self.channels.get(id(ctx))
        if channel is None:
            return
        for action in effects.scheduler:
            if isinstance(action, CancelJobs):
                self.scheduler.cancel(channel)
            elif isinstance(action, Submit):
                try:
                    self.scheduler.submit(channel, action.request, action.arrival_s)
                except SessionLimitError as exc:
                    event = SegmentFailed(action.request, exc.code, exc.message)
                    self._apply(ctx, ctx.on_worker_event(event))
        if effects.note_s:
            self.scheduler.note_written(channel, effects.note_s)
        try:
            for out in effects.out:
                self.outbox.put(_Out(ctx, channel, out))
        except OutboxFull:
            self._overflow()
            return
        if effects.fatal is not None:
            self._fail(effects.fatal)
        elif effects.finished:
            self._forget(ctx)

    def _close_when_sent(self) -> None:
        """Close 1000 once everything queued is sent."""
        try:
            self.outbox.put(CloseMarker(CLOSE_NORMAL, "done"))
        except OutboxFull:
            self._overflow()

    def _overflow(self) -> None:  # a bug (the scheduler parks contexts long before), never the client's fault
        log.error("elevenlabs connection %s: outbox overflow", self.id)
        self._fail(ErrorMessage("internal_error", "internal server error", CLOSE_INTERNAL_ERROR))

    def _fail(self, error: ErrorMessage) -> None:
        """Send ``error`` and close with its code; queued audio is dropped."""
        if self.failed:
            return
        self.failed = True
        self.hub.metrics.observe_error(error.error)
        for channel in self.channels.values():
            self.scheduler.cancel(channel)
        self.outbox.force_close(error.code, error.error, last=_Out(None, None, ContextOut(error)))

    # ------------------------------------------------------------------ client messages

    def _on_message(self, msg: ClientMessage, now: float) -> None:
        self.last_message_s = now
        if self.check_key is not None:
            self.check_key(msg.api_key if isinstance(msg, SendText) else None)  # raises when refused
            self.check_key = None
        if self.voice is None:  # authenticated only now: the voice may be looked up
            self.voice = resolve_voice(self.hub, self.params.voice_id)
        if self.closing_socket:
            return  # after close_socket / end of input nothing new starts
        if isinstance(msg, (CloseSocket, EndOfInput)):
            self.closing_socket = True
            for ctx in list(self.contexts.values()):
                self._dispatch(ctx, msg)
            if not self.contexts:
                self._close_when_sent()
            return
        cid = msg.context_id if isinstance(msg, (SendText, Flush, KeepAlive, CloseContext)) else None
        if not isinstance(msg, SendText):
            existing = self.contexts.get(cid)
            if existing is not None:
                existing.last_message_s = now
                if not isinstance(msg, KeepAlive):
                    self._dispatch(existing, msg)
            return  # flush / close of a context that is not open: nothing to do
        ctx = self._context(cid)
        ctx.last_message_s = now
        self._dispatch(ctx, msg)

    def _dispatch(self, ctx: ElevenLabsContext, msg: ClientMessage) -> None:
        queue = self.waiting[id(ctx)]
        if isinstance(msg, CloseContext) and self._would_cancel(ctx, queue):
            self._release_waiting(ctx)
            self._apply(ctx, ctx.cancel())
            return
        if queue or (isinstance(msg, SendText) and ctx.pending_segments >= self.hub.config.server.max_pending_segments):
            if isinstance(msg, SendText):
                self.waiting_chars += len(msg.text)
                if self.waiting_chars > self.hub.config.server.max_session_chars:
                    raise ElevenLabsError("text_limit", "too much text waiting for synthesis",
                                          close_code=CLOSE_TRY_AGAIN_LATER)
            queue.append(msg)
            return
        self._apply(ctx, self._handle(ctx, msg))

    def _would_cancel(self, ctx: ElevenLabsContext, queue: deque[ClientMessage]) -> bool:
        unflushed = ctx.unflushed
        for m in queue:
            if isinstance(m, SendText):
                unflushed = (unflushed or bool(m.text.strip())) and not m.flush
            elif isinstance(m, Flush):
                unflushed = False
        return unflushed or ctx.ending

    def _release_waiting(self, ctx: ElevenLabsContext) -> None:
        queue = self.waiting.get(id(ctx), deque())
        self.waiting_chars -= sum(len(m.text) for m in queue if isinstance(m, SendText))
        queue.clear()

    def _handle(self, ctx: ElevenLabsContext, msg: ClientMessage) -> Effects:
        if isinstance(msg, SendText):
            effects = Effects()
            if not ctx.started:
                speed = msg.voice_settings.speed if msg.voice_settings else None
                assert self.voice is not None  # resolved by _on_message before any context opens
                effects = ctx.open(self.voice, speed)
                if effects.fatal is not None:
                    return effects
            return ctx._merge(effects, ctx.text(msg.text, msg.flush))
        if isinstance(msg, Flush):
            return ctx.flush()
        if isinstance(msg, EndOfInput):
            return ctx.end()
        if isinstance(msg, CloseContext):
            return ctx.close()
        if isinstance(msg, CloseSocket):
            return Effects() if ctx.ending else ctx.close()
        return Effects()

    def _drain_waiting(self, ctx: ElevenLabsContext) -> None:
        queue = self.waiting.get(id(ctx))
        limit = self.hub.config.server.max_pending_segments
        while queue and not self.failed and self.contexts.get(ctx.context_id) is ctx:
            head = queue[0]
            if isinstance(head, SendText) and ctx.pending_segments >= limit:
                return
            queue.popleft()
            if isinstance(head, SendText):
                self.waiting_chars -= len(head.text)
            self._apply(ctx, self._handle(ctx, head))

    def _on_worker_event(self, ctx: ElevenLabsContext, event: WorkerEvent) -> None:
        if self.closed or self.failed or self.contexts.get(ctx.context_id) is not ctx:
            return
        try:
            self._apply(ctx, ctx.on_worker_event(event))
            self._drain_waiting(ctx)
        except ElevenLabsError as exc:
            self._fail(error_message(exc, ctx.context_id))
        except Exception:
            log.exception("elevenlabs connection %s: worker event failed", self.id)
            self._fail(ErrorMessage("internal_error", "internal server error", CLOSE_INTERNAL_ERROR))

    def _on_timeout(self, now: float) -> None:
        limit = self.params.inactivity_timeout_s
        for ctx in list(self.contexts.values()):
            if self.params.multi and not ctx.ending and now - ctx.last_message_s >= limit and ctx.pending_segments == 0:
                self._apply(ctx, ctx.end())  # an idle context times out: what it has is spoken, isFinal
        idle = all(c.pending_segments == 0 for c in self.contexts.values())
        if now - self.last_message_s >= limit and idle and not self.closing_socket:
            self._fail(ErrorMessage("inactivity_timeout", f"no message for {limit} s", CLOSE_NORMAL))

    def _next_wait(self, now: float) -> float:
        limit = self.params.inactivity_timeout_s
        deadlines = [self.last_message_s + limit]
        deadlines += [c.last_message_s + limit for c in self.contexts.values() if not c.ending]
        wait = min(deadlines) - now
        # overdue while busy (the timeout only closes idle sockets / contexts): look again soon
        return wait if wait > _MIN_WAIT_S else _RECHECK_S

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        while True:
            try:
                message = await asyncio.wait_for(self.ws.receive(), self._next_wait(time.monotonic()))
            except TimeoutError:
                if not self.failed:
                    self._on_timeout(time.monotonic())
                continue
            if message["type"] == "websocket.disconnect":
                return
            if self.failed:
                continue
            text = message.get("text")
            try:
                if text is None:
                    raise ElevenLabsError("invalid_message", "send JSON text frames only")
                msg = parse_client_message(text, multi=self.params.multi, max_chars=self.max_chars)
                self._on_message(msg, time.monotonic())
            except ElevenLabsError as exc:
                self._fail(error_message(exc))
            except Exception:
                log.exception("elevenlabs connection %s: message handling failed", self.id)
                self._fail(ErrorMessage("internal_error", "internal server error", CLOSE_INTERNAL_ERROR))

    async def _writer(self) -> None:
        sent = 0
        while True:
            item = await self.outbox.get()
            if isinstance(item, CloseMarker):
                with contextlib.suppress(Exception):  # the peer may be gone already
                    await self.ws.close(item.code, item.reason[:100])
                return
            out, ctx = item.out, item.ctx
            if ctx is not None and out.epoch is not None and out.epoch != ctx.epoch:
                continue  # stale: queued before the context was cancelled
            try:
                await self.ws.send_text(encode_server_message(out.message))
            except (OSError, RuntimeError, WebSocketDisconnect) as exc:
                log.debug("elevenlabs connection %s: send failed: %s", self.id, exc)
                return
            if out.items and ctx is not None and item.channel is not None:
                now = time.monotonic()
                for audio in out.items:
                    ctx.session.on_audio_written(audio, now)
                self.scheduler.note_written(item.channel, sum(a.audio_s for a in out.items))
                sent += 1
                if sent % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
