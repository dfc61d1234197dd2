"""Thin glue between one WebSocket and its ``Session``: a reader task, a writer task, an outbox.

``Hub`` is the app-wide state (engine, scheduler, metrics, open connections, warm-up).
Everything here runs on the event loop; nothing awaits inside a state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Protocol

from fastapi import WebSocket, WebSocketDisconnect

from engine.base import Engine
from stream_server.actions import Action, CancelJobs, Close, OutItem, Send, Submit
from stream_server.admission import (
    BEHIND_WINDOW_S,
    Admission,
    Refusal,
    register_metrics,
    speaking_load,
)
from stream_server.batch_policy import BatchPolicy
from stream_server.batch_worker import make_scheduler
from stream_server.config import AppConfig
from stream_server.errors import CLOSE_INTERNAL_ERROR, ProtocolError, SessionLimitError
from stream_server.metrics import ServerMetrics
from stream_server.outbox import CloseMarker, Outbox, OutboxFull
from stream_server.process_pool import build_lanes
from stream_server.protocol import (
    Error,
    ProtocolLimits,
    Text,
    encode_server_message,
    parse_client_message,
)
from stream_server.scheduler import Scheduler, SegmentFailed, SegmentFinished, WorkerEvent
from stream_server.session import EngineInfo, Phase, Session

log = logging.getLogger("stream_server")

# Outbox slack beyond max_ahead_s: the scheduler parks a session only between chunks, so one
# engine chunk (up to ~1 s for F5, a whole segment at worst) can land on top of the limit.
_OUTBOX_SLACK_S = 30.0
_SHUTDOWN_GRACE_S = 2.0
_YIELD_EVERY_FRAMES = 4


def audio_bytes_of(item: OutItem) -> int | None:
    """Audio payload bytes of a ``/v1/stream`` outbox item (None: a message, not audio)."""
    return len(item.payload) if isinstance(item.payload, bytes) else None


class OpenConnection(Protocol):
    """What ``Hub`` needs of an open WebSocket of any API (``/v1/stream``, ``stream_server.api``)."""

    finished: asyncio.Event

    def shutdown(self) -> None: ...


class Hub:
    """App-wide state shared by all connections."""

    def __init__(self, config: AppConfig, metrics: ServerMetrics, engine: Engine | None, engine_reason: str) -> None:
        self.config = config
        self.metrics = metrics
        self.engine = engine
        self.engine_reason = engine_reason
        self.replica = ""  # this server's name among several (Ray Serve replicas); "" alone
        self.scheduler: Scheduler | None = None
        self.admission: Admission | None = None
        self.connections: set[OpenConnection] = set()
        self.warm = False
        self.warmup_s: float | None = None
        self.warmup_error: str | None = None
        self.shutting_down = False
        self.draining = False  # SIGTERM/SIGINT received: /healthz 503, new sessions refused (drain.py)
        self.url = f"http://{config.server.host}:{config.server.port}"
        # set by app.build_server: the ready line waits for the bound address (port 0 in tests)
        self.expect_bind = False
        self.bound = False
        self._ready_logged = False

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("engine not created yet (lifespan not started)")
        return self.engine

    def require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise RuntimeError("scheduler not started (lifespan not started)")
        return self.scheduler

    def engine_info(self) -> EngineInfo:
        eng = self.require_engine()
        return EngineInfo(
            name=eng.name,
            device=eng.device,
            sample_rate=eng.sample_rate,
            default_voice=eng.default_voice,
            voice_names=lambda: {v.name for v in eng.voices()},
            replica=self.replica,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        s = self.config.server
        engine = self.require_engine()
        admission = Admission(1, s.admission_headroom)
        on_fault = register_metrics(
            self.metrics.registry, admission, lambda: speaking_load(self._speakers(), time.monotonic()),
            lambda: self.scheduler.deadline_misses if self.scheduler else 0,
        )
        lanes = build_lanes(engine, self.config, on_fault)  # None: the one engine thread
        admission.workers = len(lanes) if lanes else 1
        self.admission = admission
        # every session keeps at most 2 segments at the scheduler (session.SUBMIT_AHEAD)
        self.scheduler = make_scheduler(
            engine, self.config.audio, max_jobs=2 * s.max_sessions + 8, max_ahead_s=s.max_ahead_s,
            on_fault=self.metrics.observe_engine_fault, on_step=self.metrics.observe_step,
            policy=BatchPolicy(s.batch_marginal_ratio, s.batch_ride_along_ratio), lanes=lanes,
        )
        self.scheduler.start(loop)

    def _speakers(self) -> list[Connection]:
        """The ``/v1/stream`` sessions (the other APIs' connections are not counted as load)."""
        return [c for c in self.connections if isinstance(c, Connection)]

    def admit(self, reason: str, asking: Connection | None = None) -> Refusal | None:
        """Admission control for a new session (``asking`` None) or a new turn of ``asking``."""
        if self.admission is None:
            return None
        others = (c for c in self._speakers() if c is not asking)
        now = time.monotonic()
        behind = now - self.require_scheduler().last_miss_s < BEHIND_WINDOW_S
        return self.admission.admit(reason, others, now, behind=behind)

    def stop(self) -> None:
        """Join the worker thread (blocking: call through asyncio.to_thread)."""
        if self.scheduler is not None:
            self.scheduler.stop()

    async def warm_up(self) -> None:
        t0 = time.perf_counter()
        try:
            fut = self.require_scheduler().warm_up()
            await asyncio.wait_for(asyncio.wrap_future(fut), self.config.server.warmup_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.warmup_error = f"warm-up failed: {exc}"
            log.exception("engine warm-up failed")
            return
        self.warmup_s = round(time.perf_counter() - t0, 3)
        calibrations = [c for lane in self.require_scheduler().lanes if (c := getattr(lane, "calibration", None))]
        if calibrations and self.admission is not None:  # the slowest worker's (synth_s, audio_s)
            synth_s, audio_s = max(calibrations, key=lambda c: c[0] / c[1])
            self.admission.seed(audio_s, synth_s)
        if self.config.server.gc_freeze:
            # Everything built so far (app, engine, imports: ~400k objects) lives as long as the
            # process; a full collection over it stalled the event loop 250-450 ms (soak: an
            # underrun and a 444 ms loop lag). Collect once now, then leave it out of every pass.
            gc.collect()
            gc.freeze()
        self.warm = True
        self.log_ready()

    def log_ready(self) -> None:
        """The one ready line, once both warm-up is done and the socket is bound."""
        if self._ready_logged or not self.warm or (self.expect_bind and not self.bound):
            return
        self._ready_logged = True
        eng = self.require_engine()
        log.info(
            "stream-tts ready at %s | engine %s (%s) | device %s | warm-up %.2f s",
            self.url, eng.name, self.engine_reason, eng.device, self.warmup_s or 0.0,
        )

    async def shutdown(self) -> None:
        """Tell every open session ``shutting_down`` (close 1001) and wait briefly for them."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for conn in list(self.connections):
            conn.shutdown()
        waits = [asyncio.ensure_future(c.finished.wait()) for c in self.connections]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=_SHUTDOWN_GRACE_S)
            for w in pending:
                w.cancel()


class Connection:
    """One ``/v1/stream`` WebSocket: reader task + writer task around a ``Session``."""

    def __init__(self, hub: Hub, websocket: WebSocket, session_id: str) -> None:
        self.hub = hub
        self.ws = websocket
        cfg = hub.config
        self.session = Session(session_id, cfg, hub.engine_info(), metrics=hub.metrics)
        self.scheduler = hub.require_scheduler()
        self.channel = self.scheduler.open_channel(session_id, self._on_worker_event)
        frames = (cfg.server.max_ahead_s + _OUTBOX_SLACK_S) * 1000.0 / cfg.audio.frame_ms
        self.outbox: Outbox[OutItem] = Outbox(int(frames) + 256, audio_bytes_of)
        self.limits = ProtocolLimits(cfg.server.max_message_chars, cfg.server.default_format)
        self.closed = False
        self.finished = asyncio.Event()

    async def run(self) -> None:
        hub = self.hub
        hub.connections.add(self)
        hub.metrics.sessions.inc()
        hub.metrics.active_sessions.inc()
        sid = self.session.session_id
        log.debug("session %s open", sid)
        reader = asyncio.create_task(self._reader(), name=f"reader-{sid}")
        writer = asyncio.create_task(self._writer(), name=f"writer-{sid}")
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            results = await asyncio.gather(reader, writer, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error("session %s task failed", sid, exc_info=result)
            self.closed = True
            self.scheduler.close_channel(self.channel)
            hub.connections.discard(self)
            hub.metrics.active_sessions.dec()
            self.finished.set()
            log.debug("session %s closed", sid)

    def shutdown(self) -> None:
        self._apply(self.session.close_with("shutting_down", "server is shutting down"))

    def speaking(self, now: float) -> bool:
        """A turn in progress (text buffered, segments pending) or audio the client still plays."""
        session = self.session
        if not session.idle or session.chunker.buffered.strip():
            return True
        return self.scheduler.speaking(self.channel, now)

    def playback_left_s(self, now: float) -> float | None:
        if not self.session.idle:
            return None
        return self.scheduler.playback_left_s(self.channel, now)

    def _refuse_turn(self) -> bool:
        """Admission control for text that would start a new turn: refuse it (dropped) or not."""
        if self.speaking(time.monotonic()):
            return False  # more text of a turn in progress: no new load
        refusal = self.hub.admit("turn", self)
        if refusal is None:
            return False
        self.hub.metrics.observe_error(refusal.code)
        self._apply([Send(OutItem(None, Error(refusal.code, refusal.message, refusal.retry_after_ms)))])
        return True

    def close_after_output(self, code: str, message: str) -> None:
        """Close with ``code`` once everything already queued (audio included) is sent."""
        self._apply(self.session.close_after_output(code, message))

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: list[Action]) -> None:
        try:
            for action in actions:
                if isinstance(action, Send):
                    self.outbox.put(action.item)
                elif isinstance(action, Submit):
                    self._submit(action)
                elif isinstance(action, CancelJobs):
                    self.scheduler.cancel(self.channel)
                elif isinstance(action, Close):
                    self.scheduler.cancel(self.channel)
                    if not action.drain:
                        self.outbox.drop_audio()
                    self.outbox.put(CloseMarker(action.code, action.reason))
        except OutboxFull:
            log.exception("session %s: outbox overflow", self.session.session_id)
            self.session.phase = Phase.CLOSED
            self.scheduler.cancel(self.channel)
            self.outbox.force_close(CLOSE_INTERNAL_ERROR, "internal_error")

    def _submit(self, action: Submit) -> None:
        try:
            self.scheduler.submit(self.channel, action.request, action.arrival_s)
        except SessionLimitError as exc:
            # the scheduler's table is full: the segment fails like any engine error would
            self._apply(self.session.on_worker_event(SegmentFailed(action.request, exc.code, exc.message)))

    def _on_worker_event(self, event: WorkerEvent) -> None:
        if isinstance(event, SegmentFinished) and self.hub.admission is not None:
            self.hub.admission.observe(event.audio_s, event.synth_s)
        if self.closed:
            return
        try:
            actions = self.session.on_worker_event(event)
        except Exception:
            log.exception("session %s: worker event failed", self.session.session_id)
            actions = self.session.close_with("internal_error", "internal server error")
        self._apply(actions)

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        session = self.session
        idle_s = self.hub.config.server.idle_timeout_s
        start_by = time.monotonic() + self.hub.config.server.start_timeout_s
        while True:
            new = session.phase is Phase.NEW
            try:
                wait_s = max(0.0, start_by - time.monotonic()) if new else idle_s
                message = await asyncio.wait_for(self.ws.receive(), wait_s)
            except TimeoutError:
                if new:
                    s = self.hub.config.server.start_timeout_s
                    self.hub.metrics.observe_error("start_timeout")
                    self.hub.metrics.observe_refusal("start_timeout")
                    self._apply(session.close_with("start_timeout", f"no start or text within {s:g} s"))
                elif session.idle and session.phase is not Phase.CLOSED:
                    self._apply(session.close_with("idle_timeout", f"no message for {idle_s:g} s"))
                continue
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                actions = session.on_error(ProtocolError("binary_not_allowed", "send JSON text frames only"))
            else:
                try:
                    parsed = parse_client_message(text, self.limits)
                except ProtocolError as exc:
                    actions = session.on_error(exc)
                else:
                    if isinstance(parsed, Text) and self._refuse_turn():
                        continue
                    try:
                        actions = session.on_message(parsed)
                    except Exception:
                        log.exception("session %s: message handling failed", session.session_id)
                        actions = session.close_with("internal_error", "internal server error")
            self._apply(actions)

    async def _writer(self) -> None:
        session = self.session
        sent = 0
        while True:
            item = await self.outbox.get()
            if isinstance(item, CloseMarker):
                with contextlib.suppress(Exception):  # the peer may be gone already
                    await self.ws.close(item.code, item.reason)
                return
            if item.generation is not None and item.generation != session.generation:
                continue  # stale: queued before a clear
            payload = item.payload
            try:
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                    now = time.monotonic()
                    session.on_audio_written(item, now)
                    self.scheduler.note_written(self.channel, item.audio_s)
                    sent += 1
                    if sent % _YIELD_EVERY_FRAMES == 0:
                        # a send that does not block never suspends: without this, one session's
                        # burst of frames would hold the loop while others wait for first audio
                        await asyncio.sleep(0)
                else:
                    msg = payload() if callable(payload) else payload
                    await self.ws.send_text(encode_server_message(msg))
            except (OSError, RuntimeError, WebSocketDisconnect) as exc:
                log.debug("session %s: send failed: %s", session.session_id, exc)
                return
