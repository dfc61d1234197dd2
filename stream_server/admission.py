"""Admission control: refuse a new session or turn that would push the server past real time.

Capacity model. A *speaking* session (text in its chunker, segments queued or running, or audio its
client is still playing) needs one second of audio per second. The engine side makes
``workers / rtf`` seconds of audio per second, where ``rtf`` is the measured synthesis wall time per
second of audio (a decayed average over finished segments, timed on the engine threads, so CPU
contention shows in it). Admission lets ``capacity = headroom * workers / rtf`` sessions speak at
once; a session that is not speaking and sends text when ``load + 1 > capacity`` is refused with
``over_capacity`` (the text is dropped; ``retry_after_ms`` says when a speaker will be done), and a
new connection in that state is refused with ``over_capacity`` and close 1013. Engine worker
processes time one calibration sentence at start-up, which seeds the RTF; otherwise (the engine
thread) the capacity is unknown until ``MIN_SEGMENTS`` segments are measured, and everything is
admitted meanwhile (``max_sessions`` still applies). Independently of the estimate, while the scheduler has missed a
playing session's deadline (its client ran dry) within ``BEHIND_WINDOW_S``, the server is behind
real time by definition and refuses too. ``headroom`` 0 turns admission off.

Everything here runs on the event loop; ``Admission`` itself is plain state (tested without a server).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

MIN_SEGMENTS = 4  # segments measured before the capacity is trusted
DECAY = 0.05  # weight of the newest segment in the decayed sums
RETRY_MIN_MS = 250
RETRY_MAX_MS = 10_000
RETRY_DEFAULT_MS = 1_000
BEHIND_WINDOW_S = 2.0  # a missed deadline this recent means the server is behind real time


@dataclass(frozen=True)
class Refusal:
    """A refused session or turn: error ``over_capacity`` with ``retry_after_ms``."""

    reason: str  # "session" | "turn"
    message: str
    retry_after_ms: int
    code: str = "over_capacity"


class Speaker(Protocol):
    """A session as admission sees it (``stream_server.connection.Connection``)."""

    def speaking(self, now: float) -> bool: ...
    def playback_left_s(self, now: float) -> float | None: ...


def speaking_load(speakers: Iterable[Speaker], now: float) -> int:
    return sum(1 for s in speakers if s.speaking(now))


class Admission:
    """The capacity estimate and the admission decision.

    Args:
        workers: engine lanes working in parallel (worker processes, or 1 engine thread).
        headroom: fraction of the measured capacity that speaking sessions may fill (0 = off).
    """

    def __init__(self, workers: int, headroom: float) -> None:
        self.workers = workers
        self.headroom = headroom
        self._synth = 0.0  # decayed sums over finished segments
        self._audio = 0.0
        self.segments = 0
        self.refusals: dict[str, int] = {"session": 0, "turn": 0}
        self.on_refusal: Callable[[str], None] = lambda reason: None  # metrics hook

    def observe(self, audio_s: float, synth_s: float) -> None:
        """A finished segment: ``audio_s`` of audio cost ``synth_s`` of engine wall time."""
        if audio_s <= 0 or synth_s < 0:
            return
        self._synth = (1 - DECAY) * self._synth + DECAY * synth_s
        self._audio = (1 - DECAY) * self._audio + DECAY * audio_s
        self.segments += 1

    def seed(self, audio_s: float, synth_s: float) -> None:
        """A calibration measured at start-up (engine workers): trusted like ``MIN_SEGMENTS``
        segments, so a burst of sessions right after start-up is already admitted against it."""
        if audio_s > 0 and synth_s >= 0 and self.segments < MIN_SEGMENTS:
            self._synth, self._audio = synth_s, audio_s
            self.segments = MIN_SEGMENTS

    @property
    def rtf(self) -> float | None:
        """Measured synthesis seconds per audio second (None until ``MIN_SEGMENTS``)."""
        if self.segments < MIN_SEGMENTS or self._audio <= 0:
            return None
        return self._synth / self._audio

    def capacity(self) -> float:
        """Sessions that may speak at once (``inf`` while unknown or when admission is off)."""
        rtf = self.rtf
        if self.headroom <= 0 or rtf is None:
            return math.inf
        return self.headroom * self.workers / max(rtf, 1e-6)

    def check(self, reason: str, load: int, retry_after_s: float | None, *, behind: bool = False
              ) -> Refusal | None:
        """Admit one more speaking session on top of ``load``, or say why not (and count it)."""
        capacity = self.capacity()
        if self.headroom <= 0 or (load + 1 <= capacity and not behind):
            return None
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        self.on_refusal(reason)
        retry_ms = RETRY_DEFAULT_MS if retry_after_s is None else round(retry_after_s * 1000)
        retry_ms = min(RETRY_MAX_MS, max(RETRY_MIN_MS, retry_ms))
        state = "behind real time" if behind else f"at capacity (capacity {capacity:.0f})"
        message = f"server {state} with {load} sessions speaking; retry in {retry_ms} ms"
        return Refusal(reason, message, retry_ms)


    def admit(self, reason: str, speakers: Iterable[Speaker], now: float, *, behind: bool = False
              ) -> Refusal | None:
        """``check`` against the sessions speaking now; the retry hint is the soonest moment one of
        them (with nothing left to synthesize) has played all its audio. ``behind``: the engine
        missed a playing session's deadline within ``BEHIND_WINDOW_S``; whatever the estimate
        says, the server is past real time and refuses (while admission is on)."""
        if self.headroom <= 0 or (math.isinf(self.capacity()) and not behind):
            return None
        load, soonest = 0, None
        for s in speakers:
            if not s.speaking(now):
                continue
            load += 1
            left = s.playback_left_s(now)
            if left is not None and (soonest is None or left < soonest):
                soonest = left
        return self.check(reason, load, soonest, behind=behind)


def register_metrics(registry: CollectorRegistry, admission: Admission, load: Callable[[], int],
                     misses: Callable[[], int]) -> Callable[[str], None]:
    """Export capacity, load, refusals and engine worker faults; returns the fault counter's
    ``inc(reason)`` for the process lanes (``"timeout"`` / ``"crash"``)."""
    Gauge("stream_tts_engine_workers", "Engine lanes (worker processes, or 1 engine thread)",
          registry=registry).set_function(lambda: admission.workers)
    Gauge("stream_tts_engine_rtf", "Measured synthesis seconds per audio second (decayed; -1 unknown)",
          registry=registry).set_function(lambda: -1.0 if admission.rtf is None else admission.rtf)
    Gauge("stream_tts_capacity_sessions",
          "Sessions that may speak at once: headroom * workers / rtf (+Inf while unknown or off)",
          registry=registry).set_function(admission.capacity)
    Gauge("stream_tts_load_sessions", "Sessions speaking now (turn in progress or audio playing)",
          registry=registry).set_function(load)
    Gauge("stream_tts_deadline_misses",
          "Segments picked after their playing client had run dry (since start; behind real time)",
          registry=registry).set_function(misses)
    refusals = Counter("stream_tts_admission_refusals", "Sessions or turns refused with over_capacity",
                       ["reason"], registry=registry)
    for reason in admission.refusals:
        refusals.labels(reason=reason)
    admission.on_refusal = lambda reason: refusals.labels(reason=reason).inc()
    faults = Counter("stream_tts_engine_worker_faults",
                     "Engine worker processes lost and replaced, by reason (timeout, crash)",
                     ["reason"], registry=registry)
    for reason in ("timeout", "crash"):
        faults.labels(reason=reason)
    return lambda reason: faults.labels(reason=reason).inc()
