"""Earliest-deadline-first rules of the scheduler (``stream_server.scheduler``): what a job and a
session's channel hold, their deadlines, and which job runs next. Plain data and functions, no
threads: the scheduler holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.audio import SegmentShaper
from engine.base import SynthOptions
from engine.codec import encoded_seconds

# A session keeps its arrival time as deadline until this much audio is made: a client that starts
# playing on the first frame then has a cushion while the worker serves the other new sessions
# (with 60 ms first chunks, 16 simultaneous starts would otherwise run the first ones dry).
STARTUP_CUSHION_S = 0.25
# A lane that makes several chunks per step (process lanes) gives a session's first step enough audio
# to play until the sessions waiting for their first audio behind it have had theirs: (waiting x the
# measured first-step time / lanes) + this margin, at least STARTUP_CUSHION_S, at most MAX_CUSHION_S.
# With a fixed 0.25 s, 64 simultaneous starts on 2 lanes ran the first sessions dry before the last
# ones had started.
CUSHION_MARGIN_S = 0.15
MAX_CUSHION_S = 1.0
# A playing session this close to running dry goes before every session waiting for its first
# audio: its audio still has to be made (a step, 5-10 ms under load) and delivered (the event loop's
# turn, the socket), and the waiting sessions' deadlines (their arrival) all lie in the past during a
# burst. By deadline alone, a session that started early in a burst of 64 got its next step only once
# every session that had arrived before its client ran dry had its first audio, often too late.
PLAYING_GUARD_S = 0.1


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

    @property
    def playing(self) -> bool:
        """Its client plays: the start-up cushion of this stretch of speech has been made."""
        return self.clock_start is not None and self.produced_s >= STARTUP_CUSHION_S

    def deadline(self) -> float:
        """The arrival of the text (no start-up cushion yet), else the moment the client runs dry."""
        if not self.playing or self.clock_start is None:  # (the second test is for mypy)
            return self.arrival_s
        return self.clock_start + self.produced_s

    def pick_key(self, now: float) -> tuple[int, float]:
        """What the pick orders by: (0, deadline) for a playing session within ``PLAYING_GUARD_S``
        of running dry, else (1, deadline)."""
        deadline = self.deadline()
        return (0 if self.playing and deadline - now <= PLAYING_GUARD_S else 1, deadline)


_job_ids = iter(range(1, 1 << 62))  # next() is atomic under the GIL


@dataclass(eq=False)
class _Job:
    request: SynthRequest
    channel: Channel
    job_id: int = field(default_factory=lambda: next(_job_ids))
    lane: int | None = None  # the lane that started it (its state lives there); None = not started
    running: bool = False  # a lane is advancing it right now
    worker_epoch: int | None = None  # process lanes: the worker generation that opened it
    gen: Iterator[np.ndarray] | None = None
    shaper: SegmentShaper | None = None
    encoder: Any = None
    synth_s: float = 0.0
    audio_s: float = 0.0
    cancelled: bool = False


def packet_seconds(request: SynthRequest, packet: bytes, frame_ms: float) -> float:
    """Duration of one binary audio message (``engine.codec.encoded_seconds``)."""
    return encoded_seconds(request.format, request.sample_rate, packet, frame_ms)


def pick_next(channels: Iterable[Channel], max_ahead_s: float, lane: int | None = None, *,
              now: float) -> _Job | None:
    """Earliest deadline first: the head job of the unparked channel that needs audio soonest,
    playing sessions about to run dry first (``Channel.pick_key`` at monotonic time ``now``).

    A channel is parked while it has produced ``max_ahead_s`` or more audio the writer has not
    written yet. Ties keep channel order (first opened first). With ``lane``: only jobs that are
    not running and are either not started or started on that lane.
    """
    best: _Job | None = None
    best_key = (0, 0.0)
    for ch in channels:
        if not ch.jobs or ch.produced_s - ch.written_s >= max_ahead_s:
            continue
        head = ch.jobs[0]
        if lane is not None and (head.running or head.lane not in (None, lane)):
            continue
        key = ch.pick_key(now)
        if best is None or key < best_key:
            best, best_key = ch.jobs[0], key
    return best


def missed_deadline(channel: Channel, now: float) -> bool:
    """A playing session (past its start-up cushion) whose client has run dry by ``now``: the
    server is behind real time."""
    return channel.playing and now > channel.deadline()
