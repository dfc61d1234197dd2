"""The session state machine without sockets or threads: messages and worker events in, actions out."""

from __future__ import annotations

import dataclasses

import pytest

from stream_server.actions import Action, CancelJobs, Close, OutItem, Send, Submit
from stream_server.config import AppConfig, ServerConfig
from stream_server.errors import ProtocolError
from stream_server.protocol import (
    Clear,
    Cleared,
    Done,
    End,
    Error,
    Flush,
    Flushed,
    Ready,
    SegmentDone,
    SegmentStarted,
    Start,
    StartOptions,
    Text,
)
from stream_server.scheduler import SegmentAudio, SegmentFailed, SegmentFinished, SynthRequest
from stream_server.session import EngineInfo, Phase, Session

INFO = EngineInfo("fake", "cpu", 24000, "a", lambda: {"a", "b"})
SENTENCES = "The first sentence is long enough to stand alone. The second one follows it here. A third!"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(**server: object) -> tuple[Session, Clock]:
    clock = Clock()
    cfg = AppConfig(server=ServerConfig(**server))  # type: ignore[arg-type]
    return Session("s1", cfg, INFO, clock=clock), clock


def sent(actions: list[Action]) -> list[object]:
    return [a.item.payload for a in actions if isinstance(a, Send)]


def submits(actions: list[Action]) -> list[SynthRequest]:
    return [a.request for a in actions if isinstance(a, Submit)]


def errors(actions: list[Action]) -> list[str]:
    return [p.code for p in sent(actions) if isinstance(p, Error)]


def render(payload: object) -> object:
    return payload() if callable(payload) else payload


def finish(session: Session, req: SynthRequest, audio_s: float = 0.5, synth_s: float = 0.05,
           written_at: float | None = None) -> list[Action]:
    """Simulate the worker producing one 20 ms frame per 20 ms then finishing; write the frames."""
    n = round(audio_s / 0.02)
    actions = session.on_worker_event(SegmentAudio(req, (b"x",) * n, audio_s))
    for item in [a.item for a in actions if isinstance(a, Send) and isinstance(a.item.payload, bytes)]:
        session.on_audio_written(item, written_at if written_at is not None else session.clock())
    return actions + session.on_worker_event(SegmentFinished(req, audio_s, synth_s))


def test_text_without_start_starts_with_defaults() -> None:
    s, _ = make()
    actions = s.on_message(Text(SENTENCES))
    ready = sent(actions)[0]
    assert isinstance(ready, Ready)
    assert (ready.voice, ready.format, ready.sample_rate, ready.frame_ms, ready.channels) == ("a", "opus", 24000, 20, 1)
    assert s.phase is Phase.OPEN
    assert len(submits(actions)) == 2  # k and k+1 handed to the scheduler, the rest waits


def test_start_sets_voice_format_rate_and_options() -> None:
    s, _ = make()
    actions = s.on_message(Start("b", "pcm_s16le", 16000, StartOptions(speed=1.5, seed=4)))
    ready = sent(actions)[0]
    assert isinstance(ready, Ready) and (ready.voice, ready.format, ready.sample_rate) == ("b", "pcm_s16le", 16000)
    req = submits(s.on_message(Text(SENTENCES)))[0]
    assert (req.voice, req.format, req.sample_rate, req.options.speed, req.options.seed) == ("b", "pcm_s16le", 16000, 1.5, 4)


@pytest.mark.parametrize(
    ("start", "code"),
    [(Start(voice="zz"), "unknown_voice"), (Start(options=StartOptions(speed=3.0)), "invalid_option"),
     (Start(options=StartOptions(nfe=0)), "invalid_option")],
)
def test_bad_start_is_an_error_and_the_session_can_start_again(start: Start, code: str) -> None:
    s, _ = make()
    assert errors(s.on_message(start)) == [code]
    assert s.phase is Phase.NEW
    assert isinstance(sent(s.on_message(Start()))[0], Ready)


def test_second_start_is_already_started() -> None:
    s, _ = make()
    s.on_message(Start())
    assert errors(s.on_message(Start())) == ["already_started"]


def test_segment_message_precedes_its_audio_and_done_follows() -> None:
    s, _ = make()
    req = submits(s.on_message(Text(SENTENCES)))[0]
    payloads = sent(finish(s, req))
    assert isinstance(payloads[0], SegmentStarted) and payloads[0].index == req.index
    assert all(isinstance(p, bytes) for p in payloads[1:-1])
    done = payloads[-1]
    assert isinstance(done, SegmentDone)
    assert done.audio_ms == pytest.approx(500.0) and done.synth_ms == pytest.approx(50.0)
    assert done.rtf == pytest.approx(0.1)


def test_next_segment_is_submitted_when_one_finishes() -> None:
    s, _ = make()
    reqs = submits(s.on_message(Text(SENTENCES)))
    flushed = submits(s.on_message(Flush()))
    assert flushed == []  # the backlog already holds the rest; only 2 in flight
    more = submits(finish(s, reqs[0]))
    assert [r.index for r in more] == [reqs[1].index + 1]


def test_flushed_after_the_turn_with_ttfa_from_text_arrival_to_first_write() -> None:
    s, clock = make()
    clock.now = 10.0
    pending = submits(s.on_message(Text("Hello there, this is one sentence.")))
    assert pending == []  # not final until a flush (no lookahead yet)
    clock.now = 11.0
    pending = submits(s.on_message(Flush()))
    assert len(pending) == 1
    actions = finish(s, pending[0], written_at=11.040)
    flushed = [render(p) for p in sent(actions) if callable(p)]
    assert len(flushed) == 1 and isinstance(flushed[0], Flushed)
    assert flushed[0].ttfa_ms == pytest.approx(40.0)
    assert flushed[0].segments == 1 and flushed[0].audio_ms == pytest.approx(500.0)
    assert flushed[0].rtf == pytest.approx(0.1)
    assert s.ttfa_ms == pytest.approx(40.0)


def test_empty_flush_reports_a_turn_without_audio() -> None:
    s, _ = make()
    s.on_message(Start())
    out = [render(p) for p in sent(s.on_message(Flush()))]
    assert out == [Flushed(None, 0.0, None, 0)]


def test_end_sends_done_and_closes_normally_after_the_last_segment() -> None:
    s, _ = make()
    reqs = submits(s.on_message(Text("One sentence that is long enough to go.")))
    reqs += submits(s.on_message(End()))
    assert s.phase is Phase.ENDING
    actions: list[Action] = []
    for req in reqs:
        actions = finish(s, req)
    done = [render(p) for p in sent(actions) if callable(p)][-1]
    assert isinstance(done, Done) and done.segments == len(reqs)
    assert done.audio_ms == pytest.approx(500.0 * len(reqs))
    assert [a for a in actions if isinstance(a, Close)] == [Close(1000, "done", drain=True)]
    assert errors(s.on_message(Text("more"))) == ["after_end"]


def test_end_on_an_idle_session_is_done_at_once() -> None:
    s, _ = make()
    actions = s.on_message(End())
    assert isinstance(sent(actions)[0], Ready)
    assert isinstance(render(sent(actions)[-1]), Done)
    assert Close(1000, "done", drain=True) in actions


def test_clear_bumps_the_generation_cancels_and_ignores_stale_results() -> None:
    s, _ = make()
    old = submits(s.on_message(Text(SENTENCES)))[0]
    actions = s.on_message(Clear())
    assert CancelJobs() in actions and Cleared() in sent(actions)
    assert s.generation == old.generation + 1
    assert s.on_worker_event(SegmentAudio(old, (b"x",), 0.02)) == []
    assert s.on_worker_event(SegmentFinished(old, 0.02, 0.01)) == []
    new = submits(s.on_message(Text(SENTENCES)))[0]
    assert new.generation == s.generation and new.index > old.index  # indices never repeat
    assert s.idle is False


def test_audio_items_carry_the_generation_so_the_writer_can_drop_stale_ones() -> None:
    s, _ = make()
    req = submits(s.on_message(Text(SENTENCES)))[0]
    items = [a.item for a in s.on_worker_event(SegmentAudio(req, (b"x", b"y"), 0.04)) if isinstance(a, Send)]
    assert {i.generation for i in items} == {0}
    s.on_message(Clear())
    assert all(i.generation != s.generation for i in items)


def test_failed_segment_reports_its_code_and_the_session_continues() -> None:
    s, _ = make()
    reqs = submits(s.on_message(Text(SENTENCES)))
    s.on_message(Flush())  # a third segment waits in the backlog
    actions = s.on_worker_event(SegmentFailed(reqs[0], "engine_error", "boom"))
    assert errors(actions) == ["engine_error"]
    assert not any(isinstance(a, Close) for a in actions)
    assert submits(actions)  # the next segment goes on


def test_internal_error_of_a_segment_closes_with_1011() -> None:
    s, _ = make()
    req = submits(s.on_message(Text(SENTENCES)))[0]
    actions = s.on_worker_event(SegmentFailed(req, "internal_error", "x"))
    assert Close(1011, "internal_error", drain=False) in actions


def test_too_many_protocol_errors_close_with_1008() -> None:
    s, _ = make(max_protocol_errors=2)
    for _ in range(2):
        assert errors(s.on_error(ProtocolError("invalid_json", "bad"))) == ["invalid_json"]
    actions = s.on_error(ProtocolError("unknown_type", "bad"))
    assert errors(actions) == ["too_many_errors"]
    assert Close(1008, "too_many_errors", drain=False) in actions


def test_non_abuse_errors_do_not_count_towards_the_limit() -> None:
    s, _ = make(max_protocol_errors=0)
    assert errors(s.on_message(Start(voice="zz"))) == ["unknown_voice"]
    assert s.phase is Phase.NEW


def test_session_text_limit_drops_the_text_and_continues() -> None:
    s, _ = make(max_session_chars=60, max_message_chars=60)
    s.on_message(Text("a" * 50))
    assert errors(s.on_message(Text("b" * 20))) == ["session_text_limit"]
    assert errors(s.on_message(Text("c" * 5))) == []


def test_busy_when_too_many_segments_wait() -> None:
    s, _ = make(max_pending_segments=3)
    many = " ".join(f"Sentence number {i} is right here." for i in range(6))
    s.on_message(Text(many + " "))
    s.on_message(Flush())
    assert errors(s.on_message(Text("More text."))) == ["busy"]


def test_token_by_token_text_gives_the_same_segments_as_whole_text() -> None:
    whole, _ = make(max_pending_segments=100)
    reqs_whole = submits(whole.on_message(Text(SENTENCES))) + submits(whole.on_message(Flush()))
    reqs_whole += [r for r, _ in whole.utterance.backlog]
    tokens, _ = make(max_pending_segments=100)
    reqs_tok: list[SynthRequest] = []
    for i in range(0, len(SENTENCES), 3):
        reqs_tok += submits(tokens.on_message(Text(SENTENCES[i : i + 3])))
    reqs_tok += submits(tokens.on_message(Flush())) + [r for r, _ in tokens.utterance.backlog]
    assert [(r.index, r.text) for r in reqs_tok] == [(r.index, r.text) for r in reqs_whole]
    assert len(reqs_whole) >= 2


def test_default_format_comes_from_the_config() -> None:
    s = Session("s", dataclasses.replace(AppConfig(), server=ServerConfig(default_format="pcm_s16le")), INFO)
    ready = sent(s.on_message(Start()))[0]
    assert isinstance(ready, Ready) and ready.format == "pcm_s16le" and ready.sample_rate == 24000


def test_outitems_of_control_messages_are_never_stale() -> None:
    s, _ = make()
    items = [a.item for a in s.on_message(Start()) if isinstance(a, Send)]
    assert items == [OutItem(None, items[0].payload)]


def test_turns_report_in_order_even_when_a_later_turn_is_empty() -> None:
    s, _ = make()
    s.on_message(Text("A first turn that is long enough."))
    req = submits(s.on_message(Flush()))[0]
    early = [render(p) for p in sent(s.on_message(Flush())) if callable(p)]
    assert early == []  # the empty second turn waits for the first
    reports = [render(p) for p in sent(finish(s, req)) if callable(p)]
    assert [r.segments for r in reports if isinstance(r, Flushed)] == [1, 0]
