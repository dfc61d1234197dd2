"""Per-turn and per-utterance bookkeeping of a session.

A turn is the text up to a ``flush`` / ``end``. Its TTFA runs from the arrival of the message that
completed the turn's first segment (a ``text``, or the ``flush``/``end`` that forced it) to the
moment the turn's first audio frame is written to the socket.

An ``Utterance`` holds everything a ``clear`` throws away, so cancelling is one swap of objects.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from stream_server.scheduler import SynthRequest


@dataclass(eq=False)
class Turn:
    """Text up to a flush/end, and its stats."""

    start_s: float | None = None  # arrival of the message that completed the first segment
    first_audio_s: float | None = None  # first frame written
    segments: int = 0  # emitted by the chunker in this turn
    finished: int = 0  # finished or failed
    audio_s: float = 0.0  # written to the socket
    synth_s: float = 0.0
    seg_audio_s: float = 0.0  # encoded audio of finished segments

    @property
    def complete(self) -> bool:
        return self.finished == self.segments

    def ttfa_ms(self) -> float | None:
        if self.start_s is None or self.first_audio_s is None:
            return None
        return (self.first_audio_s - self.start_s) * 1000.0


@dataclass(eq=False)
class Utterance:
    """Everything that a ``clear`` throws away, in one object."""

    generation: int
    turn: Turn = field(default_factory=Turn)
    closing: deque[Turn] = field(default_factory=deque)  # flushed turns not reported yet, in order
    backlog: deque[tuple[SynthRequest, float]] = field(default_factory=deque)
    in_flight: int = 0
    turn_of: dict[int, Turn] = field(default_factory=dict)  # segment index -> its turn
    audio_started: set[int] = field(default_factory=set)  # segments whose `segment` was sent
