"""One HTTP speech request through the same machinery as a ``/v1/stream`` session.

``SpeechStream`` is the HTTP counterpart of ``connection.Connection``: it drives a ``Session`` (the
state machine, fed ``start`` with 24 kHz ``pcm_s16le``, or ``mp3`` when the body is MP3, the whole input as one ``text``, then
``end``), submits its segments to the ``Scheduler`` (the engine worker thread: synthesis, audio post
and the PCM codec run there, earliest deadline first with every other session) and collects the
frames the session emits. ``batches()`` hands them out in order, merged into batches (each
batch is encoded and written as one piece). ``written(batch)`` is called once the batch has gone to
the socket: it drives the scheduler's backpressure (a session more than ``max_ahead_s`` of audio
ahead of its writer is parked), so a slow HTTP reader holds the server's buffer to that bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from stream_server.actions import Action, CancelJobs, Close, OutItem, Send, Submit
from stream_server.connection import Hub
from stream_server.errors import SessionLimitError
from stream_server.protocol import End, Error, Start, StartOptions, Text
from stream_server.scheduler import SegmentFailed, WorkerEvent
from stream_server.session import Phase, Session

log = logging.getLogger("stream_server")

PCM_RATE = 24000
_FRAME_SLACK = 256  # queue bound beyond max_ahead_s, in frames (one engine chunk can land on top)


@dataclass(frozen=True)
class AudioBatch:
    """Consecutive items of the response, ``audio_s`` seconds: s16le PCM at 24 kHz, or the
    session format's frames (``begin(..., fmt=...)``; MP3 frames for an mp3 body)."""

    data: bytes
    items: tuple[OutItem, ...]
    audio_s: float


@dataclass(frozen=True)
class StreamFailure:
    """A segment (or the whole request) failed: a code of ``stream_server.errors``."""

    code: str
    message: str


class SpeechStream:
    """One ``POST /v1/audio/speech``: a session, its scheduler channel and its frame queue."""

    def __init__(self, hub: Hub, session_id: str) -> None:
        cfg = hub.config
        self.session = Session(session_id, cfg, hub.engine_info(), metrics=hub.metrics)
        self.scheduler = hub.require_scheduler()
        self.channel = self.scheduler.open_channel(session_id, self._on_worker_event)
        frame_s = cfg.audio.frame_ms / 1000.0
        self.capacity = int(cfg.server.max_ahead_s / frame_s) + _FRAME_SLACK
        self._queue: deque[OutItem | StreamFailure] = deque()
        self._ready = asyncio.Event()
        self._ended = False
        self.closed = False

    def begin(self, text: str, voice: str, engine_speed: float, *, fmt: str = "pcm_s16le",
              bitrate: int | None = None) -> None:
        """Start the session and hand it the whole input (errors arrive through ``batches``).
        ``fmt``: the session format at 24 kHz (``engine.codec.make_encoder``), ``bitrate`` its bit/s."""
        start = Start(voice=voice, format=fmt, sample_rate=PCM_RATE,  # type: ignore[arg-type]
                      options=StartOptions(speed=engine_speed), bitrate=bitrate)
        self._apply(self.session.on_message(start))
        if self.session.phase is Phase.OPEN:
            self._apply(self.session.on_message(Text(text)))
            self._apply(self.session.on_message(End()))

    async def batches(self) -> AsyncIterator[AudioBatch | StreamFailure]:
        """Audio batches and failures in order, until the session is done."""
        while True:
            while not self._queue:
                if self._ended:
                    return
                self._ready.clear()
                await self._ready.wait()
            items: list[OutItem] = []
            while self._queue and isinstance(self._queue[0], OutItem):
                item = self._queue.popleft()
                assert isinstance(item, OutItem)
                items.append(item)
            if items:
                data = b"".join(i.payload for i in items if isinstance(i.payload, bytes))
                yield AudioBatch(data, tuple(items), sum(i.audio_s for i in items))
            else:
                failure = self._queue.popleft()
                assert isinstance(failure, StreamFailure)
                yield failure

    def written(self, batch: AudioBatch) -> None:
        """The batch went to the socket: TTFA stats, and the scheduler may run further ahead."""
        now = time.monotonic()
        for item in batch.items:
            self.session.on_audio_written(item, now)
        self.scheduler.note_written(self.channel, batch.audio_s)

    def close(self) -> None:
        """Forget the request: cancel its work (no-op when done already)."""
        if not self.closed:
            self.closed = True
            self.scheduler.close_channel(self.channel)

    # ------------------------------------------------------------------ glue

    def _put(self, entry: OutItem | StreamFailure) -> None:
        if len(self._queue) >= self.capacity:  # the scheduler parks us long before: a bug
            log.error("speech %s: frame queue over %d", self.session.session_id, self.capacity)
            self._queue.clear()
            self._queue.append(StreamFailure("internal_error", "internal server error"))
            self._finish()
            return
        self._queue.append(entry)
        self._ready.set()

    def _finish(self) -> None:
        self._ended = True
        self.session.phase = Phase.CLOSED
        self.scheduler.cancel(self.channel)
        self._ready.set()

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if self._ended:
                return
            if isinstance(action, Send):
                payload = action.item.payload
                if isinstance(payload, bytes):
                    self._put(action.item)
                elif isinstance(payload, Error):
                    self._put(StreamFailure(payload.code, payload.message))
                # other control messages (segment, flushed, done) have no HTTP counterpart
            elif isinstance(action, Submit):
                try:
                    self.scheduler.submit(self.channel, action.request, action.arrival_s)
                except SessionLimitError as exc:
                    failed = SegmentFailed(action.request, exc.code, exc.message)
                    self._apply(self.session.on_worker_event(failed))
            elif isinstance(action, CancelJobs):
                self.scheduler.cancel(self.channel)
            elif isinstance(action, Close):
                self._finish()

    def _on_worker_event(self, event: WorkerEvent) -> None:
        if self.closed or self._ended:
            return
        try:
            actions = self.session.on_worker_event(event)
        except Exception:
            log.exception("speech %s: worker event failed", self.session.session_id)
            actions = self.session.close_with("internal_error", "internal server error")
        self._apply(actions)
