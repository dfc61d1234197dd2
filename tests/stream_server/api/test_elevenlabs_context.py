"""One ElevenLabs context over one Session, sans I/O: worker events in, ElevenLabs messages out."""

from __future__ import annotations

import pytest

from stream_server.actions import CancelJobs, Submit
from stream_server.api.elevenlabs_context import Effects, ElevenLabsContext, wire_close_code
from stream_server.api.elevenlabs_protocol import AudioMessage, FinalMessage
from stream_server.api.elevenlabs_query import parse_query
from stream_server.config import AppConfig
from stream_server.scheduler import SegmentAudio, SegmentFailed, SegmentFinished, SynthRequest
from stream_server.session import EngineInfo, Session

INFO = EngineInfo("fake", "cpu", 24000, "a", lambda: {"a", "b"})
FRAME = b"\x00\x01" * 320  # 20 ms of pcm_16000


def make(query: str = "output_format=pcm_16000", context_id: str | None = "c1") -> ElevenLabsContext:
    items = [tuple(kv.split("=", 1)) for kv in query.split("&") if kv]
    params = parse_query("a", items, multi=True)  # type: ignore[arg-type]
    session = Session("s1", AppConfig(), INFO)
    ctx = ElevenLabsContext(context_id, session, params, pause_ms=120.0, now=0.0)
    assert ctx.open("a", 1.1).fatal is None
    return ctx


def submitted(effects: Effects) -> list[SynthRequest]:
    return [a.request for a in effects.scheduler if isinstance(a, Submit)]


def test_open_starts_the_session_with_the_format_rate_and_speed() -> None:
    ctx = make()
    req = submitted(ctx.text("Hello there, this is the first sentence. And more ", flush=False))[0]
    assert (req.format, req.sample_rate, req.voice, req.options.speed) == ("pcm_s16le", 16000, "a", 1.1)
    assert ctx.unflushed


def test_one_audio_message_per_engine_chunk_then_final_after_end() -> None:
    ctx = make()
    req = submitted(ctx.text("Hello there.", flush=True))[0]
    effects = ctx.on_worker_event(SegmentAudio(req, (FRAME, FRAME, FRAME), 0.06))
    [out] = effects.out
    assert out.message == AudioMessage(FRAME * 3, "c1") and len(out.items) == 3 and effects.note_s == 0
    done = ctx.end()
    assert not done.finished  # still synthesizing
    last = ctx.on_worker_event(SegmentFinished(req, 0.06, 0.001))
    assert last.finished and last.out[-1].message == FinalMessage("c1")


def test_alignment_holds_the_segment_and_counts_it_written_while_held() -> None:
    ctx = make("output_format=pcm_16000&sync_alignment=true")
    req = submitted(ctx.text("Hi you.", flush=True))[0]
    first = ctx.on_worker_event(SegmentAudio(req, (FRAME,) * 10, 0.2))
    assert first.out == [] and first.note_s == pytest.approx(0.2)  # held, so the scheduler does not park it
    second = ctx.on_worker_event(SegmentAudio(req, (FRAME,) * 6, 0.12))
    assert second.out == [] and second.note_s == pytest.approx(0.12)
    done = ctx.on_worker_event(SegmentFinished(req, 0.32, 0.001))
    [out] = done.out
    assert done.note_s == pytest.approx(-0.32)  # released: written for real when the writer sends it
    assert isinstance(out.message, AudioMessage) and out.message.audio == FRAME * 16
    alignment = out.message.alignment
    assert alignment is not None and "".join(alignment.chars) == "Hi you. "
    assert alignment.char_start_times_ms[-1] == 200 and alignment.char_durations_ms[-1] == 120


def test_close_after_flush_finishes_close_with_unflushed_text_cancels() -> None:
    graceful = make()
    graceful.text("Hello there.", flush=True)
    assert not graceful.close().finished and graceful.ending
    again = graceful.close()  # a second close_context stops it
    assert again.finished and isinstance(again.scheduler[0], CancelJobs)
    cancelled = make()
    cancelled.text("Hello there. And", flush=False)
    effects = cancelled.close()
    assert effects.finished and effects.out[-1].message == FinalMessage("c1")
    assert any(isinstance(a, CancelJobs) for a in effects.scheduler)


def test_cancel_makes_queued_audio_stale() -> None:
    ctx = make()
    req = submitted(ctx.text("Hello there.", flush=True))[0]
    queued = ctx.on_worker_event(SegmentAudio(req, (FRAME,), 0.02)).out[0]
    ctx.cancel()
    assert queued.epoch != ctx.epoch


def test_engine_failure_is_fatal_with_1011() -> None:
    ctx = make()
    req = submitted(ctx.text("Hello there.", flush=True))[0]
    effects = ctx.on_worker_event(SegmentFailed(req, "engine_error", "boom"))
    assert effects.fatal is not None and effects.fatal.code == 1011 and effects.fatal.context_id == "c1"
    assert wire_close_code("busy") == 1013 and wire_close_code("session_text_limit") == 1008
