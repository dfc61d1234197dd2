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

The deadline rules, the job and channel records and the pick are in ``stream_server.edf``.
Where jobs run is a ``Lane`` (``stream_server.lanes``): one ``ThreadLane`` (everything on the one
worker thread), or one ``ProcessLane`` per engine worker process, each driven by its own scheduler
thread that picks by the same EDF rule; a started job stays on its lane until it ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.base import Engine, EngineError
from engine.config import AudioConfig
from stream_server.edf import (
    CUSHION_MARGIN_S,
    MAX_CUSHION_S,
    STARTUP_CUSHION_S,
    Channel,
    SegmentAudio,
    SegmentFailed,
    SegmentFinished,
    SynthRequest,
    WorkerEvent,
    _Job,
    missed_deadline,
    packet_seconds,
    pick_next,
)
from stream_server.errors import SessionLimitError
from stream_server.lanes import Lane, ThreadLane, WorkerLost

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # the worker re-checks its state at least this often (shutdown, parking)


class Scheduler:
    """Owns the engine worker thread(s).

    Args:
        engine: the engine; only the worker thread calls it after ``start``.
        audio: audio post and codec settings.
        max_jobs: bound of the job table across sessions (a full table answers ``busy``).
        max_ahead_s: per-session limit of audio produced but not yet written.
        lanes: where jobs run, one scheduler thread each; default one ``ThreadLane`` on ``engine``.
    """

    def __init__(
        self,
        engine: Engine,
        audio: AudioConfig,
        *,
        max_jobs: int,
        max_ahead_s: float,
        on_fault: Callable[[str], None] | None = None,
        lanes: list[Lane] | None = None,
    ) -> None:
        self.engine = engine
        self.on_fault = on_fault or (lambda kind: None)  # counts engine faults ("exception", "oom")
        self.audio = audio
        self.max_jobs = max_jobs
        self.max_ahead_s = max_ahead_s
        self.lanes: list[Lane] = lanes or [ThreadLane(engine, audio)]
        self._threads: list[threading.Thread] = []
        self._ready: concurrent.futures.Future[float] = concurrent.futures.Future()
        self._n_ready = 0
        self.deadline_misses = 0  # jobs picked after their playing client had run dry
        self.last_miss_s = -math.inf  # monotonic time of the latest miss (admission control)
        self._cond = threading.Condition()
        self._channels: list[Channel] = []
        self._n_jobs = 0
        self._to_close: list[_Job] = []
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._posted_lock = threading.Lock()  # guards _posted and _wake_pending (never held long)
        self._posted: deque[tuple[Channel, WorkerEvent]] = deque()
        self._wake_pending = False
        self._first_step_s = 0.005  # moving average of first steps' wall time (first_audio_s)

    # ------------------------------------------------------------------ event-loop side

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for lane in self.lanes:
            thread = threading.Thread(target=self._run, args=(lane,), name=lane.name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def warm_up(self) -> concurrent.futures.Future[Any]:
        """Warm the engine up: on the engine thread (``call(engine.warmup)``), or, with worker
        processes, done when every worker has started (each warms its own engine up)."""
        if isinstance(self.lanes[0], ThreadLane):
            return self.call(self.engine.warmup)
        return self._ready

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the worker (in-flight work stops at its next chunk) and join it."""
        with self._cond:
            self._stopping = True
            for ch in self._channels:
                self._cancel_locked(ch)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error("engine worker %s did not stop within %.0f s", thread.name, timeout_s)

    def alive(self) -> bool:
        """Every lane's worker thread is running (health checks)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the first lane's thread between chunks (warm-up); await it with wrap_future."""
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

    def speaking(self, channel: Channel, now: float) -> bool:
        """The session needs the engine: jobs queued or running, or audio its client still plays."""
        with self._cond:
            if channel.jobs or channel.produced_s > channel.written_s:
                return True
            return channel.clock_start is not None and now < channel.clock_start + channel.produced_s

    def playback_left_s(self, channel: Channel, now: float) -> float | None:
        """Seconds until the client of an idle channel has played everything (None: jobs queued)."""
        with self._cond:
            if channel.jobs:
                return None
            if channel.clock_start is None:
                return 0.0
            return max(0.0, channel.clock_start + channel.produced_s - now)

    # ------------------------------------------------------------------ shared helpers (lock held)

    def _cancel_locked(self, channel: Channel) -> None:
        for job in channel.jobs:
            job.cancelled = True
            if job.lane is not None:  # started: its lane releases its state
                self._to_close.append(job)
        self._n_jobs -= len(channel.jobs)
        channel.jobs.clear()
        channel.clock_start = None
        channel.produced_s = channel.written_s = 0.0

    def _pick_locked(self, lane: Lane) -> tuple[_Job, float | None] | None:
        now = time.monotonic()
        job = pick_next(self._channels, self.max_ahead_s, lane.index, now=now)
        if job is None:
            return None
        job.running = True
        job.lane = lane.index
        if missed_deadline(job.channel, now):
            self.deadline_misses += 1
            self.last_miss_s = now
        if job.channel.clock_start is not None:
            return job, None
        # nothing of this session is playing: its listener waits for this first step
        return job, self._first_audio_locked()

    def _first_audio_locked(self) -> float:
        """Seconds of audio a first step should make: enough to play while the other sessions
        waiting for their first audio get theirs (see ``CUSHION_MARGIN_S``)."""
        waiting = sum(1 for ch in self._channels if ch.jobs and ch.clock_start is None)
        behind_s = waiting * self._first_step_s / len(self.lanes)
        return min(MAX_CUSHION_S, max(STARTUP_CUSHION_S, behind_s + CUSHION_MARGIN_S))

    # ------------------------------------------------------------------ worker thread

    def _run(self, lane: Lane) -> None:
        if not self._start_lane(lane):
            return
        while True:
            lane.recover()  # a worker lost in the last step is replaced before the next pick
            with self._cond:
                while True:
                    to_close = [j for j in self._to_close if j.lane == lane.index and not j.running]
                    if to_close:
                        self._to_close = [j for j in self._to_close if j not in to_close]
                    call = self._calls.popleft() if self._calls and lane is self.lanes[0] else None
                    picked = None if (call or self._stopping) else self._pick_locked(lane)
                    if to_close or call or picked or self._stopping:
                        break
                    self._cond.wait(_IDLE_WAIT_S)
            if to_close:
                lane.close_jobs(to_close)
            if call is not None:
                fn, fut = call
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the awaiting coroutine
                        fut.set_exception(exc)
            elif picked is not None:
                self._step(lane, *picked)
            elif self._stopping:
                break
        if lane is self.lanes[0]:
            for fn_fut in self._calls:
                fn_fut[1].cancel()
        lane.stop()

    def _start_lane(self, lane: Lane) -> bool:
        """Start a lane on its own thread; the ``ready`` future learns when all have started."""
        t0 = time.perf_counter()
        try:
            lane.start()
        except BaseException as exc:
            log.error("engine lane %s failed to start: %s", lane.name, exc)
            with self._cond:
                if not self._ready.done():
                    self._ready.set_exception(exc)
            return False
        with self._cond:
            self._n_ready += 1
            if self._n_ready == len(self.lanes) and not self._ready.done():
                self._ready.set_result(time.perf_counter() - t0)
        return True

    def _step(self, lane: Lane, job: _Job, first_audio_s: float | None) -> None:
        t0 = time.perf_counter()
        failure: tuple[str, str] | None = None
        packets: list[bytes] = []
        finished = lost = False
        try:
            packets, finished = lane.advance(job, first_audio_s)
        except WorkerLost as exc:
            log.warning("session %s segment %d: %s: %s", job.channel.session_id, job.request.index,
                        exc.code, exc.message)
            failure, lost = (exc.code, exc.message), True
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
            job.running = False
            orphans = self._orphans_locked(lane, job) if lost else []
            if job.cancelled:  # _cancel_locked queued it for its lane to close
                self._cond.notify_all()
                self._post_all(orphans)
                return
            ch = job.channel
            job.synth_s += elapsed
            if first_audio_s is not None:
                self._first_step_s += 0.2 * (elapsed - self._first_step_s)
            job.audio_s += audio_s
            if ch.clock_start is None and audio_s > 0:
                # playback starts about now (the writer sends at once): from here the session's
                # deadline is when its client would run dry, not its arrival any more
                ch.clock_start = time.monotonic()
            ch.produced_s += audio_s
            if failure is not None or finished:
                ch.jobs.popleft()
                self._n_jobs -= 1
            self._cond.notify_all()  # the channel's next job may run on any lane now
        if packets and failure is None:
            events.append(SegmentAudio(job.request, tuple(packets), audio_s))
        if failure is not None:  # the lane has released the job's state already
            events.append(SegmentFailed(job.request, *failure))
        elif finished:
            job.gen = None
            events.append(SegmentFinished(job.request, job.audio_s, job.synth_s))
        for event in events:
            self._post(job.channel, event)
        self._post_all(orphans)

    def _orphans_locked(self, lane: Lane, lost_job: _Job) -> list[tuple[Channel, WorkerEvent]]:
        """Fail every other job started on a lane whose worker was lost (its state died with it)."""
        out: list[tuple[Channel, WorkerEvent]] = []
        for ch in self._channels:
            head = ch.jobs[0] if ch.jobs else None
            if head is None or head is lost_job or head.lane != lane.index:
                continue
            ch.jobs.popleft()
            self._n_jobs -= 1
            message = "the engine worker of this segment was lost; the next segments go on"
            out.append((ch, SegmentFailed(head.request, "worker_restarted", message)))
        self._to_close = [j for j in self._to_close if j.lane != lane.index]
        return out

    def _post_all(self, events: list[tuple[Channel, WorkerEvent]]) -> None:
        for channel, event in events:
            self._post(channel, event)

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
