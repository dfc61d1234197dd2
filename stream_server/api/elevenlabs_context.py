"""One ElevenLabs context as one of our ``Session``s, and the translation of its actions, sans I/O.

A context (the only one of ``stream-input``, or one of up to five of ``multi-stream-input``) owns a
``Session``: client messages become our ``Start`` / ``Text`` / ``Flush`` / ``End`` / ``Clear``,
and the session's actions become ElevenLabs server messages:

- the audio frames of one engine chunk become one ``audio`` message (base64 of their bytes joined);
- with alignment on, a segment's audio is held until the segment is finished and then sent as one
  message with an *estimated* alignment (``estimate_alignment``): our engines give no per-character
  timing, so the characters of the segment are spread evenly over its speech;
- the session's ``done`` becomes ``isFinal``; any error becomes an error message and the end of the
  connection (ElevenLabs errors always close the socket).

``ContextOut`` items go to the connection's outbox; ``Submit`` / ``CancelJobs`` to the scheduler;
``note_s`` is audio the scheduler must count as written now (held segments, see ``_hold``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stream_server.actions import Action, CancelJobs, Close, OutItem, Submit
from stream_server.api.elevenlabs_protocol import (
    AudioMessage,
    ErrorMessage,
    FinalMessage,
    ServerMessage,
    estimate_alignment,
)
from stream_server.api.elevenlabs_query import ElevenLabsError, StreamParams
from stream_server.errors import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    error_kind,
)
from stream_server.protocol import (
    End,
    Error,
    Flush,
    SegmentDone,
    SegmentStarted,
    Start,
    StartOptions,
    Text,
)
from stream_server.scheduler import WorkerEvent
from stream_server.session import Session

_ENGINE_CODES = frozenset({"engine_error", "engine_fault", "out_of_memory", "weights_not_found", "checkpoint_error",
                           "invalid_voice", "internal_error"})


@dataclass(frozen=True)
class ContextOut:
    """One message for the socket. ``items``: the audio frames it carries (for TTFA and pacing,
    noted as written when it is sent); ``epoch`` None = never stale, else the context's epoch."""

    message: ServerMessage
    epoch: int | None = None
    items: tuple[OutItem, ...] = ()


@dataclass
class Effects:
    """What one input to a context asks of the glue, in order within each list."""

    out: list[ContextOut] = field(default_factory=list)
    scheduler: list[Action] = field(default_factory=list)  # Submit / CancelJobs
    note_s: float = 0.0  # held audio to count as written now (may be negative: released)
    finished: bool = False  # isFinal is queued: forget the context after it
    fatal: ErrorMessage | None = None  # send, then close the socket with its code


def wire_close_code(code: str) -> int:
    """Close code for one of our error codes on the ElevenLabs API (every error closes)."""
    kind = error_kind(code)
    if kind.close_code is not None:
        return kind.close_code
    if code == "busy":
        return CLOSE_TRY_AGAIN_LATER
    return CLOSE_INTERNAL_ERROR if code in _ENGINE_CODES else CLOSE_POLICY_VIOLATION


class ElevenLabsContext:
    """The state of one context (see the module docstring)."""

    def __init__(self, context_id: str | None, session: Session, params: StreamParams, pause_ms: float,
                 now: float) -> None:
        self.context_id = context_id
        self.session = session
        self.params = params
        self.pause_ms = pause_ms
        self.last_message_s = now
        self.started = False
        self.ending = False  # End sent to the session: finishing its audio
        self.unflushed = False  # text since the last flush (close_context then cancels)
        self.segment_text: dict[int, str] = {}
        self.held: list[OutItem] = []  # alignment on: audio of the segment being made
        self.held_s = 0.0
        self.epoch = 0  # bumped by cancel; ContextOut of an older epoch is not sent

    # ------------------------------------------------------------------ client side

    def open(self, voice: str, speed: float | None) -> Effects:
        """Start the session with the connection's voice and format and the context's speed."""
        fmt = self.params.output_format
        start = Start(voice=voice, format=fmt.codec,  # type: ignore[arg-type]  # a make_encoder format
                      sample_rate=fmt.sample_rate, bitrate=fmt.bitrate,
                      options=StartOptions(speed=speed, seed=self.params.seed))
        self.started = True
        return self._translate(self.session.on_message(start))

    def text(self, text: str, flush: bool) -> Effects:
        effects = self._translate(self.session.on_message(Text(text)))
        if text.strip():
            self.unflushed = True
        if flush and effects.fatal is None:
            effects = self._merge(effects, self.flush())
        return effects

    def flush(self) -> Effects:
        self.unflushed = False
        return self._translate(self.session.on_message(Flush()))

    def end(self) -> Effects:
        """Finish: flush, send the rest of the audio, then ``isFinal``."""
        self.ending = True
        self.unflushed = False
        return self._translate(self.session.on_message(End()))

    def cancel(self) -> Effects:
        """Barge-in: drop text and audio not yet sent, ``isFinal`` now (the context is over)."""
        self.epoch += 1  # what is queued for the socket is stale now
        effects = Effects(scheduler=[CancelJobs()], note_s=-self.held_s)
        self.held, self.held_s = [], 0.0
        effects.out.append(ContextOut(FinalMessage(self.context_id)))
        effects.finished = True
        return effects

    def close(self) -> Effects:
        """``close_context``: end gracefully when all text was flushed (or the context is already
        ending, once), else cancel: text sent after the last flush is not spoken."""
        if self.unflushed or self.ending:
            return self.cancel()
        return self.end()

    @property
    def pending_segments(self) -> int:
        utt = self.session.utterance
        return len(utt.backlog) + utt.in_flight

    # ------------------------------------------------------------------ worker side

    def on_worker_event(self, event: WorkerEvent) -> Effects:
        return self._translate(self.session.on_worker_event(event))

    # ------------------------------------------------------------------ translation

    @staticmethod
    def _merge(a: Effects, b: Effects) -> Effects:
        a.out += b.out
        a.scheduler += b.scheduler
        a.note_s += b.note_s
        a.finished = a.finished or b.finished
        a.fatal = a.fatal or b.fatal
        return a

    def _audio(self, items: list[OutItem], effects: Effects) -> None:
        if not items:
            return
        if self.params.sync_alignment:
            self._hold(items, effects)
            return
        data = b"".join(i.payload for i in items if isinstance(i.payload, bytes))
        effects.out.append(ContextOut(AudioMessage(data, self.context_id), self.epoch, tuple(items)))

    def _hold(self, items: list[OutItem], effects: Effects) -> None:
        # Held audio counts as written while held: the scheduler parks a session max_ahead_s ahead
        # of its writer, and a segment longer than that would otherwise never finish.
        seconds = sum(i.audio_s for i in items)
        self.held += items
        self.held_s += seconds
        effects.note_s += seconds

    def _release(self, done: SegmentDone, effects: Effects) -> None:
        items, seconds = self.held, self.held_s
        self.held, self.held_s = [], 0.0
        text = self.segment_text.pop(done.index, "")
        if not items:
            return
        total_ms = seconds * 1000.0
        alignment = estimate_alignment(text, total_ms - self.pause_ms, total_ms)
        data = b"".join(i.payload for i in items if isinstance(i.payload, bytes))
        message = AudioMessage(data, self.context_id, alignment)
        effects.out.append(ContextOut(message, self.epoch, tuple(items)))
        effects.note_s -= seconds  # written for real when the writer sends it

    def _fatal(self, code: str, message: str, effects: Effects) -> None:
        if effects.fatal is None:
            effects.fatal = ErrorMessage(code, message, wire_close_code(code), context_id=self.context_id)

    def _translate(self, actions: list[Action]) -> Effects:
        effects = Effects()
        audio: list[OutItem] = []
        for action in actions:
            if isinstance(action, (Submit, CancelJobs)):
                effects.scheduler.append(action)
                continue
            if isinstance(action, Close):
                if action.reason == "done":
                    self._audio(audio, effects)
                    audio = []
                    effects.out.append(ContextOut(FinalMessage(self.context_id)))
                    effects.finished = True
                continue  # other closes follow an Error, handled below
            item = action.item
            payload = item.payload
            if isinstance(payload, bytes):
                audio.append(item)
                continue
            self._audio(audio, effects)
            audio = []
            if isinstance(payload, Error):
                self._fatal(payload.code, payload.message, effects)
            elif isinstance(payload, SegmentStarted) and self.params.sync_alignment:
                self.segment_text[payload.index] = payload.text
            elif isinstance(payload, SegmentDone) and self.params.sync_alignment:
                self._release(payload, effects)
            # ready, flushed, cleared, done (a callable) and segment_done: nothing on this API
        self._audio(audio, effects)
        return effects


def error_message(exc: ElevenLabsError, context_id: str | None = None) -> ErrorMessage:
    return ErrorMessage(exc.error, exc.message, exc.close_code, exc.param, context_id)
