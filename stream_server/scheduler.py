"""The one thread boundary: an engine worker thread that runs every engine call, the audio post and
the encoders, scheduling all sessions' segments earliest-deadline-first at chunk granularity.

The event loop submits ``SynthRequest``s (``submit``, never blocks: a full queue raises ``busy``);
the worker advances one chunk of one job at a time and hands results back with
``loop.call_soon_threadsafe``. Deadlines: a session still waiting for the first audio of its current
stretch of speech (or for its first ``STARTUP_CUSHION_S``) has deadline = the arrival time of that
text; a session that is playing has deadline = playback start + seconds of audio produced so far
(the moment the client would run dry). A session more than ``max_ahead_s`` ahead of its socket writer is parked until the
writer catches up (``note_written``). Within a session jobs run in order, one at a time, so segment
k+1 is synthesized while k streams. ``cancel`` drops a session's queued jobs and stops the in-flight
one at its next chunk (its generator is closed on the worker thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.audio import SegmentShaper
from engine.base import Engine, EngineError, SynthOptions
from engine.codec import encoded_seconds, make_encoder
from engine.config import AudioConfig
from stream_server.errors import SessionLimitError

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # the worker re-checks its state at least this often (shutdown, parking)
# A session keeps its arrival time as deadline until this much audio is made: a client that starts
# playing on the first frame then has a cushion while the worker serves the other new sessions
# (with 60 ms first chunks, 16 simultaneous starts would otherwise run the first ones dry).
STARTUP_CUSHION_S = 0.25


@dataclass(frozen=True)
class SynthRequest:
    """One segment to synthesize for one session (built by ``Session``)."""

    generation: int
    index: int
    text: str
    voice: str
    options: SynthOptions
    format: str  # "opus" | "pcm_s16le" | "ulaw" | "alaw" (| "mp3" | "ogg_opus": ElevenLabs API)
    sample_rate: int  # output rate of the encoder, Hz
    bitrate: int | None = None  # bit/s for opus / mp3 / ogg_opus; None = the format's default


@dataclass(frozen=True)
class SegmentAudio:
    """Encoded audio of one engine chunk: Opus packets or PCM s16le chunks, ``audio_s`` seconds."""

    request: SynthRequest
    packets: tuple[bytes, ...]
    audio_s: float


@dataclass(frozen=True)
class SegmentFinished:
    request: SynthRequest
    audio_s: float  # encoded audio of the whole segment (padding and pause included)
    synth_s: float  # worker wall time spent on this segment (engine + audio post + encoding)


@dataclass(frozen=True)
class SegmentFailed:
    request: SynthRequest
    code: str
    message: str


WorkerEvent = SegmentAudio | SegmentFinished | SegmentFailed


@dataclass(eq=False)
class Channel:
    """One session's scheduling state. Fields are guarded by the scheduler's lock."""

    session_id: str
    sink: Callable[[WorkerEvent], None]  # runs on the event loop
    jobs: deque[_Job] = field(default_factory=deque)
    produced_s: float = 0.0  # audio produced since the clock was last reset
    written_s: float = 0.0  # of which the socket writer has written this much
    clock_start: float | None = None  # monotonic time the first audio of this stretch was produced
    arrival_s: float = 0.0  # arrival of the text that started this stretch
    closed: bool = False

    def deadline(self) -> float:
        if self.clock_start is None or self.produced_s < STARTUP_CUSHION_S:
            return self.arrival_s
        return self.clock_start + self.produced_s


@dataclass(eq=False)
class _Job:
    request: SynthRequest
    channel: Channel
    gen: Iterator[np.ndarray] | None = None
    shaper: SegmentShaper | None = None
    encoder: Any = None
    synth_s: float = 0.0
    audio_s: float = 0.0
    cancelled: bool = False


def packet_seconds(request: SynthRequest, packet: bytes, frame_ms: float) -> float:
    """Duration of one binary audio message (``engine.codec.encoded_seconds``)."""
    return encoded_seconds(request.format, request.sample_rate, packet, frame_ms)


def pick_next(channels: Iterable[Channel], max_ahead_s: float) -> _Job | None:
    """Earliest deadline first: the head job of the unparked channel that needs audio soonest.

    A channel is parked while it has produced ``max_ahead_s`` or more audio the writer has not
    written yet. Ties keep channel order (first opened first).
    """
    best: _Job | None = None
    best_deadline = 0.0
    for ch in channels:
        if not ch.jobs or ch.produced_s - ch.written_s >= max_ahead_s:
            continue
        deadline = ch.deadline()
        if best is None or deadline < best_deadline:
            best, best_deadline = ch.jobs[0], deadline
    return best


class Scheduler:
    """Owns the engine worker thread.

    Args:
        engine: the engine; only the worker thread calls it after ``start``.
        audio: audio post and codec settings.
        max_jobs: bound of the job table across sessions (a full table answers ``busy``).
        max_ahead_s: per-session limit of audio produced but not yet written.
    """

    def __init__(
        self,
        engine: Engine,
        audio: AudioConfig,
        *,
        max_jobs: int,
        max_ahead_s: float,
        on_fault: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_fault = on_fault or (lambda kind: None)  # counts engine faults ("exception", "oom")
        self.audio = audio
        self.max_jobs = max_jobs
        self.max_ahead_s = max_ahead_s
        self._cond = threading.Condition()
        self._channels: list[Channel] = []
        self._n_jobs = 0
        self._to_close: list[_Job] = []
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._posted_lock = threading.Lock()  # guards _posted and _wake_pending (never held long)
        self._posted: deque[tuple[Channel, WorkerEvent]] = deque()
        self._wake_pending = False

    # ------------------------------------------------------------------ event-loop side

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the worker (in-flight work stops at its next chunk) and join it."""
        with self._cond:
            self._stopping = True
            for ch in self._channels:
                self._cancel_locked(ch)
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("engine worker did not stop within %.0f s", timeout_s)

    def alive(self) -> bool:
        """The worker thread is running (health checks)."""
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker thread between chunks (warm-up); await it with wrap_future."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            if len(self._calls) >= 8:
                raise SessionLimitError("busy", "engine worker is busy")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def open_channel(self, session_id: str, sink: Callable[[WorkerEvent], None]) -> Channel:
        channel = Channel(session_id, sink)
        with self._cond:
            self._channels.append(channel)
        return channel

    def close_channel(self, channel: Channel) -> None:
        """Forget a session (disconnect): cancel its work; no event reaches its sink afterwards."""
        with self._cond:
            self._cancel_locked(channel)
            channel.closed = True
            if channel in self._channels:
                self._channels.remove(channel)
            self._cond.notify()

    def submit(self, channel: Channel, request: SynthRequest, arrival_s: float) -> None:
        """Queue a segment. Raises ``SessionLimitError('busy')`` when the job table is full."""
        with self._cond:
            if channel.closed:
                return
            if self._n_jobs >= self.max_jobs:
                raise SessionLimitError("busy", "server busy: too many segments queued")
            now = time.monotonic()
            drained = not channel.jobs and channel.written_s >= channel.produced_s
            if drained and (channel.clock_start is None or now >= channel.deadline()):
                # The client has played everything: a new stretch of speech starts its own clock.
                channel.clock_start = None
                channel.produced_s = channel.written_s = 0.0
                channel.arrival_s = arrival_s
            channel.jobs.append(_Job(request, channel))
            self._n_jobs += 1
            self._cond.notify()

    def cancel(self, channel: Channel) -> None:
        """Drop queued jobs of the session; the in-flight one stops at its next chunk."""
        with self._cond:
            self._cancel_locked(channel)
            self._cond.notify()

    def note_written(self, channel: Channel, audio_s: float) -> None:
        """The socket writer wrote ``audio_s`` seconds of this session's audio."""
        with self._cond:
            channel.written_s += audio_s
            if channel.produced_s - channel.written_s < self.max_ahead_s:
                self._cond.notify()  # wakes the worker if this session was parked

    def job_count(self) -> int:
        """Jobs queued or in flight over all sessions (tests check it empties)."""
        with self._cond:
            return self._n_jobs

    def channel_count(self) -> int:
        with self._cond:
            return len(self._channels)

    # ------------------------------------------------------------------ shared helpers (lock held)

    def _cancel_locked(self, channel: Channel) -> None:
        for job in channel.jobs:
            job.cancelled = True
            self._to_close.append(job)
        self._n_jobs -= len(channel.jobs)
        channel.jobs.clear()
        channel.clock_start = None
        channel.produced_s = channel.written_s = 0.0

    def _pick_locked(self) -> _Job | None:
        return pick_next(self._channels, self.max_ahead_s)

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    to_close, self._to_close = self._to_close, []
                    call = self._calls.popleft() if self._calls else None
                    job = None if (call or self._stopping) else self._pick_locked()
                    if to_close or call or job or self._stopping:
                        break
                    self._cond.wait(_IDLE_WAIT_S)
            for old in to_close:
                self._close_job(old)
            if call is not None:
                fn, fut = call
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the awaiting coroutine
                        fut.set_exception(exc)
            elif job is not None:
                self._step(job)
            elif self._stopping:
                break
        for fn_fut in self._calls:
            fn_fut[1].cancel()

    @staticmethod
    def _close_job(job: _Job) -> None:
        if job.gen is not None and hasattr(job.gen, "close"):
            try:
                job.gen.close()  # engines release per-request state in a finally
            except Exception:
                log.exception("engine generator raised on close")
        job.gen = None

    def _advance(self, job: _Job) -> tuple[list[bytes], bool]:
        """One engine chunk through the audio post and the encoder: (packets, segment finished)."""
        req = job.request
        if job.gen is None:
            with self._cond:  # nothing of this session is playing: its listener waits for this
                fast_start = job.channel.clock_start is None
            job.encoder = make_encoder(
                req.format, req.sample_rate, self.audio, self.engine.sample_rate, bitrate=req.bitrate
            )
            job.shaper = SegmentShaper(
                self.engine.sample_rate, self.audio.fade_in_ms, self.audio.fade_out_ms, self.audio.pause_ms
            )
            job.gen = iter(
                self.engine.synthesize(req.text, req.voice, req.options, fast_start=fast_start)
            )
        assert job.shaper is not None
        try:
            chunk = next(job.gen)
        except StopIteration:
            tail = job.encoder.encode(job.shaper.finish())
            return tail + job.encoder.flush(), True
        return job.encoder.encode(job.shaper.process(chunk)), False

    def _step(self, job: _Job) -> None:
        t0 = time.perf_counter()
        failure: tuple[str, str] | None = None
        packets: list[bytes] = []
        finished = False
        try:
            packets, finished = self._advance(job)
        except EngineError as exc:
            log.info("session %s segment %d: engine error %s: %s", job.channel.session_id,
                     job.request.index, exc.code, exc)
            failure = (exc.code, str(exc) or exc.code)
        except Exception:
            log.exception("session %s segment %d: synthesis failed", job.channel.session_id,
                          job.request.index)
            self.on_fault("exception")  # contained: the segment fails, the session goes on
            failure = ("engine_fault", "the engine failed on this segment; it was skipped")
        elapsed = time.perf_counter() - t0
        frame_ms = float(self.audio.frame_ms)
        audio_s = sum(packet_seconds(job.request, p, frame_ms) for p in packets)
        events: list[WorkerEvent] = []
        with self._cond:
            if job.cancelled:
                self._close_job(job)
                return
            ch = job.channel
            job.synth_s += elapsed
            job.audio_s += audio_s
            if ch.clock_start is None and audio_s > 0:
                # playback starts about now (the writer sends at once): from here the session's
                # deadline is when its client would run dry, not its arrival any more
                ch.clock_start = time.monotonic()
            ch.produced_s += audio_s
            if failure is not None or finished:
                ch.jobs.popleft()
                self._n_jobs -= 1
        if packets and failure is None:
            events.append(SegmentAudio(job.request, tuple(packets), audio_s))
        if failure is not None:
            self._close_job(job)
            events.append(SegmentFailed(job.request, *failure))
        elif finished:
            job.gen = None
            events.append(SegmentFinished(job.request, job.audio_s, job.synth_s))
        for event in events:
            self._post(job.channel, event)

    def _post(self, channel: Channel, event: WorkerEvent) -> None:
        """Hand an event to the loop. One wake-up per batch: each ``call_soon_threadsafe`` writes
        to the loop's self-pipe (a syscall), which under load cost more than encoding a chunk."""
        assert self._loop is not None
        with self._posted_lock:
            self._posted.append((channel, event))
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: the server is gone, nobody to tell
            log.debug("events dropped: loop closed")

    def _deliver(self) -> None:
        """On the loop: run the sinks of everything posted since the last wake-up, in order.

        The batch is bounded: the worker posts at most one audio event per chunk and parks a
        session ``max_ahead_s`` ahead of its writer, and the loop drains the whole batch each time.
        """
        with self._posted_lock:
            batch = list(self._posted)
            self._posted.clear()
            self._wake_pending = False
        for channel, event in batch:
            if not channel.closed:
                channel.sink(event)
