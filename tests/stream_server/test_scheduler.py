"""The engine worker thread: ordering, EDF choice, parking, cancellation, error isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from engine.base import EngineError, SynthOptions
from engine.config import AudioConfig
from stream_server.scheduler import (
    Channel,
    Scheduler,
    SegmentAudio,
    SegmentFailed,
    SegmentFinished,
    SynthRequest,
    WorkerEvent,
    _Job,
    pick_next,
)
from tests.server_fixtures import SineBurstEngine

AUDIO = AudioConfig()


def request(text: str, index: int = 0, *, voice: str = "low", fmt: str = "opus", rate: int = 24000) -> SynthRequest:
    return SynthRequest(0, index, text, voice, SynthOptions(), fmt, rate)


class Sink:
    """Collects a channel's events on the loop; ``wait_for`` awaits a condition on them."""

    def __init__(self) -> None:
        self.events: list[WorkerEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: WorkerEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(timeout_s):
            while not predicate(self.events):
                self.changed.clear()
                await self.changed.wait()


def finished(events: list[WorkerEvent]) -> list[int]:
    return [e.request.index for e in events if isinstance(e, (SegmentFinished, SegmentFailed))]


async def started(engine: object, **kw: float) -> Scheduler:
    sched = Scheduler(engine, AUDIO, max_jobs=kw.pop("max_jobs", 16), max_ahead_s=kw.pop("max_ahead_s", 100.0))  # type: ignore[arg-type]
    sched.start(asyncio.get_running_loop())
    return sched


async def test_segments_of_a_session_run_in_order_and_report_audio_then_finish() -> None:
    sched = await started(SineBurstEngine())
    sink = Sink()
    ch = sched.open_channel("s", sink)
    texts = ["a" * 30, "b" * 10, "c" * 20]
    for i, t in enumerate(texts):
        sched.submit(ch, request(t, i), arrival_s=0.0)
    await sink.wait_for(lambda ev: len(finished(ev)) == 3)
    await asyncio.to_thread(sched.stop)
    assert finished(sink.events) == [0, 1, 2]
    for i, t in enumerate(texts):
        audio = [e for e in sink.events if isinstance(e, SegmentAudio) and e.request.index == i]
        done = next(e for e in sink.events if isinstance(e, SegmentFinished) and e.request.index == i)
        packets = sum(len(e.packets) for e in audio)
        # 10 ms per char + 120 ms pause, padded up to whole 20 ms Opus frames
        assert packets == -(-(len(t) * 240 + 2880) // 480)
        assert done.audio_s == pytest.approx(packets * 0.02)
        assert done.synth_s > 0
    assert sched.job_count() == 0


async def test_pcm_output_is_resampled_to_the_requested_rate() -> None:
    sched = await started(SineBurstEngine())
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("x" * 50, fmt="pcm_s16le", rate=16000), arrival_s=0.0)
    await sink.wait_for(lambda ev: finished(ev) == [0])
    await asyncio.to_thread(sched.stop)
    n_bytes = sum(len(p) for e in sink.events if isinstance(e, SegmentAudio) for p in e.packets)
    expected = (50 * 0.010 + AUDIO.pause_ms / 1000) * 16000 * 2
    assert abs(n_bytes - expected) <= 64  # resampler edge samples


async def test_cancel_stops_in_flight_work_at_the_next_chunk_and_drops_queued_jobs() -> None:
    engine = SineBurstEngine(delay_s=0.02)  # 60 ms chunks, 20 ms each to make
    sched = await started(engine)
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("long " * 200, 0), arrival_s=0.0)  # 10 s of audio, ~170 chunks
    sched.submit(ch, request("queued", 1), arrival_s=0.0)
    await sink.wait_for(lambda ev: len(ev) >= 2)
    sched.cancel(ch)
    assert sched.job_count() == 0
    await asyncio.sleep(0.2)  # let the worker reach its next chunk and close the generator
    await asyncio.to_thread(sched.stop)
    assert engine.closed == ["long " * 200]
    assert "queued" not in [t for t, _ in engine.calls]
    assert finished(sink.events) == []


async def test_engine_error_fails_one_job_and_the_worker_keeps_going() -> None:
    class Flaky(SineBurstEngine):
        def synthesize(
            self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
        ) -> Iterator[np.ndarray]:
            if text == "bad":
                raise EngineError("cannot say that")
            if text == "crash":
                raise ZeroDivisionError("bug")
            return super().synthesize(text, voice, options)

    sched = await started(Flaky())
    sink = Sink()
    ch = sched.open_channel("s", sink)
    for i, t in enumerate(["bad", "crash", "fine"]):
        sched.submit(ch, request(t, i), arrival_s=0.0)
    await sink.wait_for(lambda ev: len(finished(ev)) == 3)
    await asyncio.to_thread(sched.stop)
    failed = {e.request.index: e.code for e in sink.events if isinstance(e, SegmentFailed)}
    assert failed == {0: "engine_error", 1: "engine_fault"}
    assert any(isinstance(e, SegmentFinished) and e.request.index == 2 for e in sink.events)


async def test_unknown_voice_is_reported_with_its_engine_code() -> None:
    sched = await started(SineBurstEngine())
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("hello", voice="nobody"), arrival_s=0.0)
    await sink.wait_for(lambda ev: len(finished(ev)) == 1)
    await asyncio.to_thread(sched.stop)
    assert [e.code for e in sink.events if isinstance(e, SegmentFailed)] == ["unknown_voice"]


async def test_a_session_too_far_ahead_is_parked_until_the_writer_catches_up() -> None:
    sched = await started(SineBurstEngine(), max_ahead_s=0.1)
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("z" * 100, 0), arrival_s=0.0)  # 1 s of audio in 60 ms chunks
    await sink.wait_for(lambda ev: sum(isinstance(e, SegmentAudio) for e in ev) >= 2)
    await asyncio.sleep(0.3)  # parked: no further progress without writes
    produced = sum(e.audio_s for e in sink.events if isinstance(e, SegmentAudio))
    assert produced < 0.25 and finished(sink.events) == []
    sched.note_written(ch, 10.0)  # the writer caught up (and far beyond)
    await sink.wait_for(lambda ev: finished(ev) == [0])
    await asyncio.to_thread(sched.stop)


async def test_submit_over_the_job_table_bound_is_busy() -> None:
    sched = Scheduler(SineBurstEngine(), AUDIO, max_jobs=2, max_ahead_s=1.0)  # not started: nothing runs
    ch = sched.open_channel("s", Sink())
    sched.submit(ch, request("a", 0), arrival_s=0.0)
    sched.submit(ch, request("b", 1), arrival_s=0.0)
    with pytest.raises(Exception) as info:
        sched.submit(ch, request("c", 2), arrival_s=0.0)
    assert getattr(info.value, "code", None) == "busy"
    sched.close_channel(ch)
    assert sched.job_count() == 0 and sched.channel_count() == 0


async def test_call_runs_on_the_worker_thread_and_stop_joins_it() -> None:
    sched = await started(SineBurstEngine())
    name = await asyncio.wrap_future(sched.call(lambda: threading.current_thread().name))
    assert name == "engine-worker"
    await asyncio.to_thread(sched.stop)
    assert not any(t.name == "engine-worker" for t in threading.enumerate())


def _channel(name: str, *, arrival: float = 0.0, clock_start: float | None = None, produced: float = 0.0,
             written: float = 0.0) -> Channel:
    ch = Channel(name, lambda e: None, produced_s=produced, written_s=written, clock_start=clock_start,
                 arrival_s=arrival)
    ch.jobs.append(_Job(request(name), ch))
    return ch


def test_edf_prefers_a_session_waiting_for_first_audio_over_one_with_a_buffer() -> None:
    playing = _channel("playing", clock_start=10.0, produced=3.0, written=2.0)  # runs dry at 13.0
    waiting = _channel("waiting", arrival=11.0)
    assert pick_next([playing, waiting], max_ahead_s=5.0, now=0.0).channel is waiting  # type: ignore[union-attr]


def test_edf_prefers_a_session_about_to_run_dry() -> None:
    starving = _channel("starving", clock_start=10.0, produced=0.5, written=0.5)  # dry at 10.5
    waiting = _channel("waiting", arrival=11.0)
    assert pick_next([waiting, starving], max_ahead_s=5.0, now=0.0).channel is starving  # type: ignore[union-attr]


def test_a_playing_session_about_to_run_dry_goes_before_every_waiting_one() -> None:
    """Its next step and the delivery take time: within ``PLAYING_GUARD_S`` of running dry it goes
    first, even before sessions that arrived long ago; further off, deadlines decide."""
    from stream_server.edf import PLAYING_GUARD_S

    playing = _channel("playing", clock_start=10.0, produced=0.5, written=0.5)  # dry at 10.5
    long_waiting = _channel("waiting", arrival=9.0)
    assert pick_next([long_waiting, playing], max_ahead_s=5.0,  # type: ignore[union-attr]
                     now=10.5 - PLAYING_GUARD_S / 2).channel is playing
    assert pick_next([long_waiting, playing], max_ahead_s=5.0,  # type: ignore[union-attr]
                     now=10.5 - PLAYING_GUARD_S * 2).channel is long_waiting
    drier = _channel("drier", clock_start=10.0, produced=0.45, written=0.45)  # dry at 10.45
    assert pick_next([playing, long_waiting, drier], max_ahead_s=5.0,  # type: ignore[union-attr]
                     now=10.44).channel is drier
    assert playing.deadline() == 10.5  # deadline misses still count from the moment it runs dry


def test_parked_and_empty_channels_are_skipped() -> None:
    parked = _channel("parked", clock_start=0.0, produced=5.0, written=0.5)
    empty = Channel("empty", lambda e: None)
    assert pick_next([parked, empty], max_ahead_s=4.0, now=0.0) is None
    later = _channel("later", arrival=50.0)
    assert pick_next([parked, empty, later], max_ahead_s=4.0, now=0.0).channel is later  # type: ignore[union-attr]



def test_a_new_session_keeps_its_arrival_deadline_until_it_has_a_startup_cushion() -> None:
    from stream_server.scheduler import STARTUP_CUSHION_S

    fresh = _channel("fresh", arrival=5.0, clock_start=5.01, produced=STARTUP_CUSHION_S / 2)
    assert fresh.deadline() == 5.0
    cushioned = _channel("cushioned", arrival=5.0, clock_start=5.01, produced=STARTUP_CUSHION_S)
    assert cushioned.deadline() == pytest.approx(5.01 + STARTUP_CUSHION_S)


async def test_fast_start_only_when_nothing_of_the_session_is_playing() -> None:
    engine = SineBurstEngine()
    sched = await started(engine)
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("a" * 30, 0), arrival_s=0.0)
    sched.submit(ch, request("b" * 30, 1), arrival_s=0.0)
    await sink.wait_for(lambda ev: finished(ev) == [0, 1])
    # the whole stretch is written and played: the next text starts a new stretch
    for event in sink.events:
        if isinstance(event, SegmentAudio):
            sched.note_written(ch, event.audio_s)
    await asyncio.sleep(1.0)  # 2 x (0.3 s + pause): the client has played it all by now
    sched.submit(ch, request("c" * 30, 2), arrival_s=0.0)
    await sink.wait_for(lambda ev: finished(ev) == [0, 1, 2])
    await asyncio.to_thread(sched.stop)
    # segment 0: the listener waits; segment 1: made while 0 plays; segment 2: waits again
    assert engine.fast_starts == [True, False, True]


def test_a_first_step_brings_a_cushion_for_the_sessions_waiting_behind_it() -> None:
    from stream_server.lanes import ThreadLane
    from stream_server.scheduler import CUSHION_MARGIN_S, MAX_CUSHION_S, STARTUP_CUSHION_S

    engine = SineBurstEngine()
    lanes = [ThreadLane(engine, AUDIO, i) for i in range(2)]  # not started: only the rule is tested
    sched = Scheduler(engine, AUDIO, max_jobs=512, max_ahead_s=4.0, lanes=list(lanes))  # type: ignore[arg-type]
    sched._first_step_s = 0.006  # measured first steps take 6 ms
    alone = sched.open_channel("alone", lambda e: None)
    sched.submit(alone, request("a" * 30), arrival_s=0.0)
    assert sched._pick_locked(lanes[0]) == (alone.jobs[0], STARTUP_CUSHION_S)  # nobody behind it
    for i in range(63):
        sched.submit(sched.open_channel(f"s{i}", lambda e: None), request("b" * 30), arrival_s=0.0)
    # 64 sessions wait for first audio on 2 lanes: the last one starts ~64 x 6 ms / 2 from now
    job, first_audio_s = sched._pick_locked(lanes[1])  # type: ignore[misc]
    assert job.channel.clock_start is None
    assert first_audio_s == pytest.approx(64 * 0.006 / 2 + CUSHION_MARGIN_S)
    sched._first_step_s = 1.0  # an absurdly slow engine: the cushion stays bounded
    assert sched._first_audio_locked() == MAX_CUSHION_S
    # a session that is playing (and about to run dry, so it goes first) gets an ordinary step
    playing = sched.open_channel("playing", lambda e: None)
    playing.clock_start, playing.produced_s, playing.arrival_s = -10.0, 1.0, -10.0
    playing.jobs.append(_Job(request("c" * 30), playing))
    assert sched._pick_locked(lanes[0]) == (playing.jobs[0], None)
