"""The engine worker for batching engines: sampler steps and vocoder chunks over all sessions' items.

``BatchScheduler`` is a ``Scheduler`` (same channels, deadlines, parking, cancel, event delivery and
per-session audio post + encoding) whose unit of work is one engine *step* instead of one chunk of
one generator. Each time round the worker loop it:

1. opens an engine item (``open_item``) for segments that may start, in deadline order and only as
   many as could join the next sampler step: the head segment of every session, and its next
   segment once the head is making audio (so the next one samples ahead of playback, at a later
   deadline);
2. describes every item that can advance as a ``batch_policy.Candidate`` (head items sample or
   vocode; the ahead item only samples, since its audio must wait for the head's; a session parked
   ``max_ahead_s`` ahead of its writer only samples, it makes no audio) and lets
   ``batch_policy.choose_step`` pick the step by deadline and the engine's measured cost table;
3. runs ``sample_step`` or ``vocode_step`` on the chosen items, pushes vocoder chunks through each
   session's ``SegmentShaper`` and encoder, and posts the events.

A cancelled job (``clear``, disconnect) leaves its channel at once; its item is closed
(``close_item``) by the worker before the next step is planned.

Faults stay with their segments: a step that raises is retried in halves until the failing items are
alone, and only those fail (``engine_fault``; an ``EngineError`` keeps its code). An out-of-memory
error (``torch.OutOfMemoryError``, matched by name so the server does not import torch for eSpeak)
also halves the batch limits for the following steps (restored step by step after
``batch_policy.OomBackoff.recovery_steps`` clean steps); an item that runs out of memory alone fails with
``out_of_memory``. Every other session continues; ``on_fault`` counts each fault.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine.audio import SegmentShaper
from engine.base import BatchEngine, BatchItem, Engine, EngineError, StepKind
from engine.codec import make_encoder
from engine.config import AudioConfig
from stream_server.batch_policy import BatchLimits, BatchPolicy, Candidate, OomBackoff, choose_step
from stream_server.lanes import Lane
from stream_server.scheduler import (
    _IDLE_WAIT_S,
    Channel,
    Scheduler,
    SegmentAudio,
    SegmentFailed,
    SegmentFinished,
    _Job,
    packet_seconds,
)

log = logging.getLogger(__name__)

DEFAULT_POLICY = BatchPolicy()
_HOP_SAMPLES = 256  # mel frame hop of the F5 family (24 kHz): frames -> seconds for estimates
_FIRST_CHUNK_FRAMES = 24  # vocoder chunk sizes assumed when an item does not say (cost lookups)
_CHUNK_FRAMES = 96


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.OutOfMemoryError`` / ``torch.cuda.OutOfMemoryError`` (or a subclass) by class name."""
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


def expected_audio_s(item: Any, sample_rate: int) -> float:
    """Seconds of audio the item will make: total minus reference frames when it says (F5's
    ``ref_frames``), else a rough half of its total frames. Only orders deadlines."""
    ref = getattr(item, "ref_frames", None)
    frames = item.n_frames - ref if ref is not None else item.n_frames // 2
    return float(max(0, frames)) * _HOP_SAMPLES / sample_rate


def vocode_frames(item: Any) -> int:
    """Mel frames of the item's next vocoder chunk, for the cost table."""
    frames = getattr(item, "next_chunk_frames", None)
    if frames:
        return int(frames)
    return _FIRST_CHUNK_FRAMES if item.first_audio else _CHUNK_FRAMES


class BatchScheduler(Scheduler):
    """The engine worker for a ``BatchEngine`` (see the module docstring).

    Args:
        policy: the batching knobs (``batch_policy.BatchPolicy``).
        max_rows / max_frames: optional lower limits than the engine's (``max_rows=1`` runs one
            item at a time: ``bench-engine --compare-unbatched``).
        Other arguments as ``Scheduler``.
    """

    engine: BatchEngine

    def __init__(
        self,
        engine: BatchEngine,
        audio: AudioConfig,
        *,
        max_jobs: int,
        max_ahead_s: float,
        on_fault: Callable[[str], None] | None = None,
        policy: BatchPolicy = DEFAULT_POLICY,
        max_rows: int | None = None,
        max_frames: int | None = None,
        on_step: Callable[[StepKind, int, float], None] | None = None,
    ) -> None:
        super().__init__(engine, audio, max_jobs=max_jobs, max_ahead_s=max_ahead_s, on_fault=on_fault)
        self.policy = policy
        self.max_rows = min(engine.max_batch_rows, max_rows or engine.max_batch_rows)
        self.max_frames = min(engine.max_batch_frames, max_frames or engine.max_batch_frames)
        self.on_step = on_step or (lambda kind, rows, seconds: None)
        # worker-thread state
        self._items: dict[_Job, BatchItem] = {}
        self.backoff = OomBackoff(self.max_rows, self.max_frames)  # limits lowered after an OOM

    # ------------------------------------------------------------------ planning (lock held)

    def limits(self) -> BatchLimits:
        return self.backoff.limits()

    def _next_work_locked(self) -> Callable[[], None] | None:
        now = time.monotonic()
        to_open: list[tuple[float, int, _Job, bool]] = []  # deadline, order, job, fast_start
        to_finish: list[_Job] = []
        candidates: list[Candidate] = []
        jobs: list[_Job] = []
        for order, ch in enumerate(self._channels):
            if not ch.jobs:
                continue
            # a session far ahead of its writer makes no more audio until it catches up, but its
            # items may still sample (that makes no audio)
            parked = ch.produced_s - ch.written_s >= self.max_ahead_s
            head = ch.jobs[0]
            item = self._items.get(head)
            if item is None:
                to_open.append((ch.deadline(), order, head, ch.clock_start is None))
                continue
            if item.phase == "done":
                if not parked:
                    to_finish.append(head)
                continue
            if item.phase == "sampling" or not parked:
                candidates.append(self._candidate(len(jobs), item, ch.deadline(), order))
                jobs.append(head)
            if item.phase != "vocoding" or len(ch.jobs) < 2:
                continue
            # the next segment samples ahead, needed when the head's audio runs out
            nxt = ch.jobs[1]
            nxt_item = self._items.get(nxt)
            ahead_s = max(0.0, expected_audio_s(item, self.engine.sample_rate) - head.audio_s)
            deadline = max(ch.deadline(), now) + ahead_s
            if nxt_item is None:
                to_open.append((deadline, order, nxt, False))
            elif nxt_item.phase == "sampling":
                candidates.append(self._candidate(len(jobs), nxt_item, deadline, order))
                jobs.append(nxt)
        opens = self._opens_worth_now(to_open, candidates)
        if opens or to_finish:
            return functools.partial(self._open_and_finish, opens, to_finish)
        plan = choose_step(candidates, self.limits(), self.engine.step_cost_s, now, self.policy)
        if plan is None:
            return None
        return functools.partial(self._run_step, plan.kind, [jobs[k] for k in plan.keys])

    def _opens_worth_now(
        self, to_open: list[tuple[float, int, _Job, bool]], candidates: list[Candidate]
    ) -> list[tuple[_Job, bool]]:
        """The segments to open before the next step: in deadline order, those that would be among
        the ``max_rows`` most urgent sampling items (opening costs a text-encoder pass; 64 sessions
        starting at once should not all pay for it before the first 16 get a step)."""
        deadlines = sorted((c.deadline_s, c.order) for c in candidates if c.kind == "sample")
        rows = self.limits().max_rows
        out = []
        for deadline, order, job, fast_start in sorted(to_open, key=lambda o: (o[0], o[1])):
            if bisect.bisect_left(deadlines, (deadline, order)) >= rows:
                break
            bisect.insort(deadlines, (deadline, order))
            out.append((job, fast_start))
        return out

    def _candidate(self, key: int, item: Any, deadline_s: float, order: int) -> Candidate:
        if item.phase == "sampling":
            return Candidate(key, "sample", int(item.n_frames), deadline_s, order, int(item.steps_left))
        sizer = getattr(self.engine, "vocode_frames", None)  # F5: the next chunk with its context
        frames = int(sizer(item)) if sizer is not None else vocode_frames(item)
        return Candidate(key, "vocode", frames, deadline_s, order)

    def _cancel_locked(self, channel: Channel) -> None:
        self._to_close.extend(channel.jobs)  # the worker closes their items before the next step
        super()._cancel_locked(channel)

    # ------------------------------------------------------------------ worker thread

    def _run(self, *_lane: object) -> None:
        """The worker loop (the chunk worker's, with a planned step as the unit of work)."""
        while True:
            with self._cond:
                while True:
                    to_close, self._to_close = self._to_close, []
                    call = self._calls.popleft() if self._calls else None
                    work = None if (call or self._stopping) else self._next_work_locked()
                    if to_close or call or work or self._stopping:
                        break
                    self._cond.wait(_IDLE_WAIT_S)
            for job in to_close:
                self._close_item(job)
            if call is not None:
                fn, fut = call
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the awaiting coroutine
                        fut.set_exception(exc)
            elif work is not None:
                try:
                    work()
                except Exception:  # a bug in the step logic must not take the worker down
                    log.exception("batch worker step failed")
                    self.on_fault("worker")
            elif self._stopping:
                break
        for _, fut in self._calls:
            fut.cancel()

    def _close_item(self, job: _Job) -> None:
        item = self._items.pop(job, None)
        if item is not None:
            try:
                self.engine.close_item(item)
            except Exception:
                log.exception("engine close_item raised")

    def _settle(
        self, job: _Job, packets: list[bytes], finished: bool, failure: tuple[str, str] | None, elapsed: float
    ) -> None:
        """Account one advance of ``job`` (its packets, ``elapsed`` worker seconds), post its events
        (as the chunk worker does after each chunk) and release its item when it ends."""
        frame_ms = float(self.audio.frame_ms)
        audio_s = sum(packet_seconds(job.request, p, frame_ms) for p in packets)
        with self._cond:
            if job.cancelled:
                return  # queued in _to_close by the cancel
            ch = job.channel
            job.synth_s += elapsed
            job.audio_s += audio_s
            if ch.clock_start is None and audio_s > 0:
                ch.clock_start = time.monotonic()  # playback starts about now
            ch.produced_s += audio_s
            if failure is not None or finished:
                ch.jobs.remove(job)  # the head, or a segment sampled ahead that failed
                self._n_jobs -= 1
        if packets and failure is None:
            self._post(ch, SegmentAudio(job.request, tuple(packets), audio_s))
        if failure is not None:
            self._post(ch, SegmentFailed(job.request, *failure))
        elif finished:
            self._post(ch, SegmentFinished(job.request, job.audio_s, job.synth_s))
        if failure is not None or finished:
            self._close_item(job)

    def _open_and_finish(self, to_open: list[tuple[_Job, bool]], to_finish: list[_Job]) -> None:
        for job, fast_start in to_open:
            req = job.request
            t0 = time.perf_counter()
            failure: tuple[str, str] | None = None
            try:
                item = self.engine.open_item(req.text, req.voice, req.options, fast_start=fast_start)
                job.encoder = make_encoder(req.format, req.sample_rate, self.audio, self.engine.sample_rate)
                job.shaper = SegmentShaper(
                    self.engine.sample_rate, self.audio.fade_in_ms, self.audio.fade_out_ms, self.audio.pause_ms
                )
            except EngineError as exc:
                failure = (exc.code, str(exc) or exc.code)
            except Exception as exc:
                if is_out_of_memory(exc):
                    self.on_fault("oom")
                failure = self._fault(job, exc)
            else:
                self._items[job] = item
            if failure is not None:
                self._settle(job, [], False, failure, time.perf_counter() - t0)
            else:
                with self._cond:
                    job.synth_s += time.perf_counter() - t0
                    cancelled = job.cancelled
                if cancelled:
                    self._close_item(job)
        for job in to_finish:  # an empty segment: only its pause
            self._emit(job, None, finished=True, elapsed=0.0)

    def _run_step(self, kind: StepKind, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        outcome = self._guarded_step(kind, jobs)
        elapsed = time.perf_counter() - t0
        self.on_step(kind, len(jobs), elapsed)
        share = elapsed / len(jobs)  # each item's part of the step, for its segment's RTF
        for job in jobs:
            result = outcome[job]
            if isinstance(result, tuple):
                self._settle(job, [], False, result, share)
            elif kind == "sample":
                with self._cond:
                    job.synth_s += share
            else:
                item = self._items.get(job)
                self._emit(job, result, finished=item is None or item.phase == "done", elapsed=share)

    def _guarded_step(self, kind: StepKind, jobs: list[_Job]) -> dict[_Job, np.ndarray | tuple[str, str] | None]:
        """Run one step; on an exception retry the halves until the failing items are alone.
        Returns per job its chunk (vocode), None (sample) or its failure (code, message)."""
        items = [self._items[j] for j in jobs]
        try:
            if kind == "sample":
                self.engine.sample_step(items)
                chunks: list[np.ndarray | None] = [None] * len(jobs)
            else:
                chunks = list(self.engine.vocode_step(items))
                if len(chunks) != len(jobs):
                    raise RuntimeError(f"vocode_step returned {len(chunks)} chunks for {len(jobs)} items")
        except Exception as exc:
            if is_out_of_memory(exc):
                self.on_fault("oom")  # every one, retried or not
                if len(jobs) > 1:
                    self._lower_limits(jobs)
            if len(jobs) == 1:
                return {jobs[0]: self._fault(jobs[0], exc)}
            log.warning("%s step of %d items failed (%s: %s); retrying in halves",
                        kind, len(jobs), type(exc).__name__, exc)
            half = len(jobs) // 2
            return {**self._guarded_step(kind, jobs[:half]), **self._guarded_step(kind, jobs[half:])}
        self.backoff.clean_step()
        return dict(zip(jobs, chunks, strict=True))

    def _fault(self, job: _Job, exc: Exception) -> tuple[str, str]:
        """The failure of one item that raised alone."""
        if isinstance(exc, EngineError):
            return (exc.code, str(exc) or exc.code)
        if is_out_of_memory(exc):  # counted where it was raised
            log.error("session %s segment %d: out of memory even alone", job.channel.session_id,
                      job.request.index)
            return ("out_of_memory", "the device ran out of memory for this segment; it was skipped")
        self.on_fault("exception")
        log.error("session %s segment %d: engine failed", job.channel.session_id, job.request.index,
                  exc_info=exc)
        return ("engine_fault", "the engine failed on this segment; it was skipped")

    def _lower_limits(self, jobs: list[_Job]) -> None:
        rows = len(jobs)
        frames = rows * max(int(self._items[j].n_frames) for j in jobs)
        limits = self.backoff.out_of_memory(rows, frames)
        log.warning("out of memory at %d rows / %d frames: limits now %d rows / %d frames",
                    rows, frames, limits.max_rows, limits.max_frames)

    def _emit(self, job: _Job, chunk: np.ndarray | None, *, finished: bool, elapsed: float) -> None:
        """A vocoder chunk of ``job`` through its audio post and encoder, then its events."""
        failure: tuple[str, str] | None = None
        packets: list[bytes] = []
        try:
            assert job.shaper is not None and job.encoder is not None
            if chunk is not None:
                packets = job.encoder.encode(job.shaper.process(chunk))
            if finished:
                packets += job.encoder.encode(job.shaper.finish()) + job.encoder.flush()
        except Exception as exc:
            failure = self._fault(job, exc)
        self._settle(job, packets, finished, failure, elapsed)


def make_scheduler(
    engine: Engine,
    audio: AudioConfig,
    *,
    max_jobs: int,
    max_ahead_s: float,
    on_fault: Callable[[str], None] | None = None,
    policy: BatchPolicy = DEFAULT_POLICY,
    max_rows: int | None = None,
    on_step: Callable[[StepKind, int, float], None] | None = None,
    lanes: list[Lane] | None = None,
) -> Scheduler:
    """The worker for ``engine``: ``BatchScheduler`` for a batching engine (one owner of its
    device: ``lanes`` must be None), else the chunk worker on ``lanes`` (default: one thread)."""
    if isinstance(engine, BatchEngine):
        if lanes:
            raise ValueError("a batching engine runs on its own worker thread, not on lanes")
        return BatchScheduler(engine, audio, max_jobs=max_jobs, max_ahead_s=max_ahead_s,
                              on_fault=on_fault, policy=policy, max_rows=max_rows, on_step=on_step)
    return Scheduler(engine, audio, max_jobs=max_jobs, max_ahead_s=max_ahead_s, on_fault=on_fault,
                     lanes=lanes)

