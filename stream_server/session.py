"""One streaming session as a state machine, without sockets or threads.

``Session`` methods take a parsed client message, a worker event or a "frame written" notice and
return ``Action``s for the connection glue to carry out: items to put in the session's outbox (JSON
messages and audio frames, in order), segments to submit to the scheduler, a cancel, a close.

Cancel is cheap: ``clear`` bumps ``generation`` and swaps in a fresh ``Utterance``; outbox items and
worker events of an older generation are dropped by comparing generations.

Actions are defined in ``stream_server.actions``; turns, their TTFA and what a ``clear`` discards in
``stream_server.turns``. The session's TTFA is that of its first turn with audio; RTF = synthesis
wall time / audio duration.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from chunker import Segment, SentenceChunker
from engine.base import EngineError, SynthOptions
from stream_server.actions import Action, CancelJobs, Close, OutItem, Send, Submit
from stream_server.config import AppConfig
from stream_server.errors import (
    CLOSE_NORMAL,
    ProtocolError,
    SessionLimitError,
    StreamError,
    error_kind,
)
from stream_server.protocol import (
    PROTOCOL_VERSION,
    SAMPLE_RATES,
    Clear,
    Cleared,
    ClientMessage,
    Done,
    End,
    Error,
    Flush,
    Flushed,
    Ready,
    SegmentDone,
    SegmentStarted,
    ServerMessage,
    Start,
    Text,
)
from stream_server.scheduler import (
    SegmentAudio,
    SegmentFinished,
    SynthRequest,
    WorkerEvent,
    packet_seconds,
)
from stream_server.turns import Turn, Utterance

# Segments handed to the scheduler at once: k (streaming) and k+1 (synthesized meanwhile).
SUBMIT_AHEAD = 2


@dataclass(frozen=True)
class EngineInfo:
    """What a session needs to know about the engine (read on the event loop)."""

    name: str
    device: str
    sample_rate: int
    default_voice: str
    voice_names: Callable[[], Collection[str]]
    replica: str = ""  # which server replica runs the session ("" = a single server)


class SessionMetrics(Protocol):
    def observe_ttfa(self, seconds: float) -> None: ...
    def observe_segment(self, audio_s: float, synth_s: float) -> None: ...
    def observe_error(self, code: str) -> None: ...


class _NoMetrics:
    def observe_ttfa(self, seconds: float) -> None:
        pass

    def observe_segment(self, audio_s: float, synth_s: float) -> None:
        pass

    def observe_error(self, code: str) -> None:
        pass


class Phase(enum.Enum):
    NEW = "new"  # no start yet
    OPEN = "open"
    ENDING = "ending"  # end received; finishing the last turn
    CLOSED = "closed"


class Session:
    """The state machine of one ``/v1/stream`` session (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        config: AppConfig,
        engine: EngineInfo,
        *,
        metrics: SessionMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.config = config
        self.engine = engine
        self.metrics: SessionMetrics = metrics or _NoMetrics()
        self.clock = clock
        self.phase = Phase.NEW
        self.generation = 0
        self.utterance = Utterance(0)
        self.chunker = SentenceChunker(config.chunker)
        self.voice = engine.default_voice
        self.format: str = config.server.default_format
        self.sample_rate = self._default_rate(self.format)
        self.options = SynthOptions()
        self.bitrate: int | None = None
        self.text_chars = 0
        self.protocol_errors = 0
        # session totals
        self.ttfa_ms: float | None = None
        self.audio_s = 0.0  # written
        self.synth_s = 0.0
        self.seg_audio_s = 0.0
        self.segments = 0

    # ------------------------------------------------------------------ inputs

    @property
    def idle(self) -> bool:
        """No work queued or in flight (idle timeout applies only then)."""
        return not self.utterance.backlog and self.utterance.in_flight == 0

    @property
    def mid_turn(self) -> bool:
        """A turn is under way: text not yet reported by ``flushed``, or work queued or in flight."""
        utt = self.utterance
        return bool(
            utt.backlog or utt.in_flight or utt.closing or utt.turn.segments
            or self.chunker.buffered.strip()
        )

    def on_message(self, msg: ClientMessage) -> list[Action]:
        """Handle one parsed client message."""
        now = self.clock()
        try:
            if self.phase in (Phase.ENDING, Phase.CLOSED):
                raise ProtocolError("after_end", f"{msg.type} after end is ignored")
            actions: list[Action] = []
            if isinstance(msg, Start):
                if self.phase is not Phase.NEW:
                    raise ProtocolError("already_started", "start must be the first message")
                return self._start(msg)
            if self.phase is Phase.NEW:
                actions += self._start(Start())
            if isinstance(msg, Text):
                actions += self._text(msg.text, now)
            elif isinstance(msg, Flush):
                actions += self._flush(now)
            elif isinstance(msg, Clear):
                actions += self._clear()
            elif isinstance(msg, End):
                actions += self._end(now)
            return actions
        except (StreamError, EngineError) as exc:
            return self.on_error(exc)

    def on_error(self, exc: StreamError | EngineError) -> list[Action]:
        """An error to report to the client; protocol abuse counts towards the close limit."""
        message = exc.message if isinstance(exc, StreamError) else (str(exc) or exc.code)
        return self._report(exc.code, message)

    def _report(self, code: str, message: str) -> list[Action]:
        self.metrics.observe_error(code)
        kind = error_kind(code)
        if kind.protocol_abuse:
            self.protocol_errors += 1
            if self.protocol_errors > self.config.server.max_protocol_errors:
                self.metrics.observe_error("too_many_errors")
                return self.close_with("too_many_errors", "too many protocol errors")
        actions: list[Action] = [Send(OutItem(None, Error(code, message)))]
        if kind.close_code is not None:
            actions.append(Close(kind.close_code, code, drain=False))
            self.phase = Phase.CLOSED
        return actions

    def close_with(self, code: str, message: str) -> list[Action]:
        """Error ``code`` then close with its close code, dropping queued audio."""
        self.phase = Phase.CLOSED
        close_code = error_kind(code).close_code or CLOSE_NORMAL
        return [
            CancelJobs(),
            Send(OutItem(None, Error(code, message))),
            Close(close_code, code, drain=False),
        ]

    def close_after_output(self, code: str, message: str) -> list[Action]:
        """Error ``code`` then its close, after everything already queued (audio included)."""
        self.phase = Phase.CLOSED
        close_code = error_kind(code).close_code or CLOSE_NORMAL
        return [Send(OutItem(None, Error(code, message))), Close(close_code, code, drain=True)]

    def on_worker_event(self, event: WorkerEvent) -> list[Action]:
        """Results from the engine thread for this session (stale generations are ignored)."""
        req = event.request
        if req.generation != self.generation or self.phase is Phase.CLOSED:
            return []
        utt = self.utterance
        if isinstance(event, SegmentAudio):
            actions: list[Action] = []
            turn = utt.turn_of[req.index]
            if req.index not in utt.audio_started:
                utt.audio_started.add(req.index)
                actions.append(Send(OutItem(self.generation, SegmentStarted(req.index, req.text))))
            frame_ms = float(self.config.audio.frame_ms)
            for packet in event.packets:
                seconds = packet_seconds(req, packet, frame_ms)
                actions.append(Send(OutItem(self.generation, packet, seconds, turn)))
            return actions
        turn = utt.turn_of.pop(req.index)
        utt.in_flight -= 1
        turn.finished += 1
        if isinstance(event, SegmentFinished):
            turn.synth_s += event.synth_s
            turn.seg_audio_s += event.audio_s
            self.synth_s += event.synth_s
            self.seg_audio_s += event.audio_s
            self.segments += 1
            self.metrics.observe_segment(event.audio_s, event.synth_s)
            rtf = event.synth_s / event.audio_s if event.audio_s > 0 else 0.0
            done = SegmentDone(req.index, event.audio_s * 1000.0, event.synth_s * 1000.0, rtf)
            actions = [Send(OutItem(self.generation, done))]
        else:
            actions = self._report(event.code, event.message)
        return actions + self._pump() + self._finish_turns()

    def on_audio_written(self, item: OutItem, now: float) -> None:
        """The writer wrote an audio frame of the current generation at time ``now``."""
        turn = item.turn
        if turn is not None and turn.first_audio_s is None:
            turn.first_audio_s = now
            ttfa = turn.ttfa_ms()
            if ttfa is not None:
                self.metrics.observe_ttfa(ttfa / 1000.0)
                if self.ttfa_ms is None:
                    self.ttfa_ms = ttfa
        if turn is not None:
            turn.audio_s += item.audio_s
        self.audio_s += item.audio_s

    # ------------------------------------------------------------------ message handlers

    def _start(self, msg: Start) -> list[Action]:
        voice = msg.voice or self.engine.default_voice
        if voice not in self.engine.voice_names():
            raise StreamError("unknown_voice", f"unknown voice {voice!r}; see GET /v1/voices")
        fmt = msg.format or self.config.server.default_format
        rate = msg.sample_rate or self._default_rate(fmt)
        o = msg.options
        options = SynthOptions(
            speed=1.0 if o.speed is None else o.speed, nfe=o.nfe, seed=o.seed, cfg_strength=o.cfg_strength
        )
        options.validate()  # InvalidOptionError -> error invalid_option, still NEW
        self.voice, self.format, self.sample_rate, self.options = voice, fmt, rate, options
        self.bitrate = msg.bitrate
        self.phase = Phase.OPEN
        ready = Ready(
            protocol_version=PROTOCOL_VERSION,
            session_id=self.session_id,
            engine=self.engine.name,
            device=self.engine.device,
            voice=voice,
            format=fmt,
            sample_rate=rate,
            frame_ms=self.config.audio.frame_ms,
            replica=self.engine.replica,
        )
        return [Send(OutItem(None, ready))]

    def _text(self, text: str, now: float) -> list[Action]:
        server = self.config.server
        if self.text_chars + len(text) > server.max_session_chars:
            raise SessionLimitError(
                "session_text_limit", f"session text limit of {server.max_session_chars} characters reached"
            )
        utt = self.utterance
        if len(utt.backlog) + utt.in_flight >= server.max_pending_segments:
            raise SessionLimitError("busy", "too many segments waiting; resend this text later")
        self.text_chars += len(text)
        return self._add_segments(self.chunker.push(text), now)

    def _flush(self, now: float, *, report_empty: bool = True) -> list[Action]:
        actions = self._add_segments(self.chunker.flush(), now)
        utt = self.utterance
        if utt.turn.segments or report_empty:
            utt.closing.append(utt.turn)
        utt.turn = Turn()
        return actions + self._finish_turns()

    def _end(self, now: float) -> list[Action]:
        # an empty last turn (end right after a flush) gets no `flushed` of its own
        actions = self._flush(now, report_empty=False)
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.ENDING
        return actions + self._maybe_done()

    def _clear(self) -> list[Action]:
        self.chunker.reset()
        self.generation += 1
        self.utterance = Utterance(self.generation)
        return [CancelJobs(), Send(OutItem(None, Cleared()))]

    # ------------------------------------------------------------------ helpers

    def _default_rate(self, fmt: str) -> int:
        # the engine's own rate when the format carries it (no resampling), else 24 kHz, else the
        # format's only rate (G.711: 8 kHz)
        rates = SAMPLE_RATES[fmt]
        if self.engine.sample_rate in rates:
            return self.engine.sample_rate
        return 24000 if 24000 in rates else rates[0]

    def _add_segments(self, segments: list[Segment], now: float) -> list[Action]:
        utt = self.utterance
        for seg in segments:
            if utt.turn.start_s is None:
                utt.turn.start_s = now
            utt.turn.segments += 1
            utt.turn_of[seg.index] = utt.turn
            request = SynthRequest(
                generation=self.generation,
                index=seg.index,
                text=seg.text,
                voice=self.voice,
                options=self.options,
                format=self.format,
                sample_rate=self.sample_rate,
                bitrate=self.bitrate,
            )
            utt.backlog.append((request, now))
        return self._pump()

    def _pump(self) -> list[Action]:
        utt = self.utterance
        actions: list[Action] = []
        while utt.backlog and utt.in_flight < SUBMIT_AHEAD:
            request, arrival = utt.backlog.popleft()
            utt.in_flight += 1
            actions.append(Submit(request, arrival))
        return actions

    def _finish_turns(self) -> list[Action]:
        """``flushed`` for every completed turn at the head of the queue (turns report in order)."""
        utt = self.utterance
        actions: list[Action] = []
        while utt.closing and utt.closing[0].complete:
            turn = utt.closing.popleft()

            def render(turn: Turn = turn) -> ServerMessage:
                rtf = turn.synth_s / turn.seg_audio_s if turn.seg_audio_s > 0 else None
                return Flushed(turn.ttfa_ms(), turn.audio_s * 1000.0, rtf, turn.finished)

            actions.append(Send(OutItem(self.generation, render)))
        return actions + self._maybe_done()

    def _maybe_done(self) -> list[Action]:
        if self.phase is not Phase.ENDING or not self.idle:
            return []
        self.phase = Phase.CLOSED

        def render() -> ServerMessage:
            rtf = self.synth_s / self.seg_audio_s if self.seg_audio_s > 0 else None
            return Done(self.ttfa_ms, self.audio_s * 1000.0, rtf, self.segments)

        return [Send(OutItem(None, render)), Close(CLOSE_NORMAL, "done", drain=True)]

