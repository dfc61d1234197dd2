"""Engine worker processes: ordering across workers, and faults contained (exception, hang, crash).

The engines are ``tests.fake_engines.FaultyEngine`` built inside the worker processes; the hang
watchdog is 3 s (a normal step takes milliseconds, even on a loaded machine). Assertions are on
events and codes, never on timings.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from engine.base import SynthOptions
from engine.config import AudioConfig
from stream_server.process_pool import ProcessLane, recipe_of
from stream_server.scheduler import (
    Scheduler,
    SegmentAudio,
    SegmentFailed,
    SegmentFinished,
    SynthRequest,
    WorkerEvent,
)
from tests.fake_engines import FaultyEngine

AUDIO = AudioConfig()


def request(text: str, index: int = 0) -> SynthRequest:
    return SynthRequest(0, index, text, "low", SynthOptions(), "opus", 24000)


class Sink:
    def __init__(self) -> None:
        self.events: list[WorkerEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, event: WorkerEvent) -> None:
        self.events.append(event)
        self.changed.set()

    def ended(self) -> dict[int, str]:
        """Segment index -> "ok" or the failure code, for every segment that ended."""
        return {
            e.request.index: "ok" if isinstance(e, SegmentFinished) else e.code
            for e in self.events
            if isinstance(e, (SegmentFinished, SegmentFailed))
        }

    async def wait_ended(self, n: int, timeout_s: float = 60.0) -> dict[int, str]:
        async with asyncio.timeout(timeout_s):
            while len(self.ended()) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.ended()


class Pool:
    def __init__(self, sched: Scheduler, lanes: list[ProcessLane], faults: list[str]) -> None:
        self.sched, self.lanes, self.faults = sched, lanes, faults

    def pids(self) -> list[int | None]:
        return [lane.pid for lane in self.lanes]


async def _pool(workers: int, max_ahead_s: float = 100.0) -> Pool:
    faults: list[str] = []
    recipe = recipe_of(FaultyEngine())
    assert recipe is not None
    lanes = [ProcessLane(i, recipe, AUDIO, watchdog_s=3.0, on_fault=faults.append) for i in range(workers)]
    sched = Scheduler(FaultyEngine(), AUDIO, max_jobs=64, max_ahead_s=max_ahead_s, lanes=list(lanes))  # type: ignore[arg-type]
    sched.start(asyncio.get_running_loop())
    await asyncio.wait_for(asyncio.wrap_future(sched.warm_up()), 120.0)
    return Pool(sched, lanes, faults)


@pytest.fixture
async def pool2() -> AsyncIterator[Pool]:
    pool = await _pool(2)
    yield pool
    await asyncio.to_thread(pool.sched.stop)
    assert all(pid is None for pid in pool.pids())


def packets_of(sink: Sink, index: int) -> int:
    return sum(len(e.packets) for e in sink.events if isinstance(e, SegmentAudio) and e.request.index == index)


async def test_workers_serve_every_session_in_order_with_the_engine_threads_audio(pool2: Pool) -> None:
    assert len(set(pool2.pids())) == 2
    for lane in pool2.lanes:  # each worker timed one calibration sentence (10 ms per character)
        assert lane.calibration is not None and lane.calibration[1] == pytest.approx(0.71 + 0.12, abs=0.01)
    sinks = [Sink() for _ in range(3)]
    texts = ["a" * 30, "b" * 10, "c" * 20]
    for k, sink in enumerate(sinks):
        ch = pool2.sched.open_channel(f"s{k}", sink)
        for i, t in enumerate(texts):
            pool2.sched.submit(ch, request(t, i), arrival_s=0.0)
    for sink in sinks:
        assert await sink.wait_ended(3) == {0: "ok", 1: "ok", 2: "ok"}
        order = [e.request.index for e in sink.events]
        assert order == sorted(order)  # audio of segment k+1 never before the end of k
        for i, t in enumerate(texts):  # 10 ms per char + 120 ms pause, in whole 20 ms frames
            assert packets_of(sink, i) == -(-(len(t) * 240 + 2880) // 480)
    assert pool2.sched.job_count() == 0
    assert pool2.faults == []


async def test_an_engine_exception_fails_only_its_segment_and_the_worker_survives(pool2: Pool) -> None:
    pids = pool2.pids()
    a, b = Sink(), Sink()
    cha, chb = pool2.sched.open_channel("a", a), pool2.sched.open_channel("b", b)
    for i, t in enumerate(["aaa", "FAIL here", "ccc"]):
        pool2.sched.submit(cha, request(t, i), arrival_s=0.0)
    pool2.sched.submit(chb, request("ddd", 0), arrival_s=0.0)
    assert await a.wait_ended(3) == {0: "ok", 1: "engine_error", 2: "ok"}
    assert await b.wait_ended(1) == {0: "ok"}
    assert pool2.pids() == pids and pool2.faults == []


@pytest.mark.parametrize(("trigger", "code", "fault"), [("HANG", "engine_timeout", "timeout"),
                                                        ("CRASH", "worker_crashed", "crash")])
async def test_a_lost_worker_fails_its_segment_is_replaced_and_others_go_on(
    pool2: Pool, trigger: str, code: str, fault: str
) -> None:
    pids = pool2.pids()
    a, b = Sink(), Sink()
    cha, chb = pool2.sched.open_channel("a", a), pool2.sched.open_channel("b", b)
    pool2.sched.submit(cha, request(f"{trigger} now", 0), arrival_s=0.0)
    pool2.sched.submit(chb, request("x" * 40, 0), arrival_s=0.0)
    pool2.sched.submit(chb, request("y" * 40, 1), arrival_s=0.0)
    assert await a.wait_ended(1) == {0: code}
    assert await b.wait_ended(2) == {0: "ok", 1: "ok"}
    assert pool2.faults == [fault]
    # the session goes on: its next segment runs on a replacement worker
    pool2.sched.submit(cha, request("zzz", 1), arrival_s=0.0)
    assert await a.wait_ended(2) == {0: code, 1: "ok"}
    for _ in range(1200):  # the lane forks its replacement right after the loss (<1 s; 60 s bound)
        if None not in pool2.pids():
            break
        await asyncio.sleep(0.05)
    new_pids = pool2.pids()
    assert len(set(new_pids) - set(pids)) == 1 and None not in new_pids


async def test_segments_started_on_a_lost_worker_fail_with_worker_restarted() -> None:
    # one worker; b's long segment starts there and parks (nobody writes its audio), then a hangs
    pool = await _pool(1, max_ahead_s=0.3)
    try:
        a, b = Sink(), Sink()
        cha, chb = pool.sched.open_channel("a", a), pool.sched.open_channel("b", b)
        pool.sched.submit(chb, request("b" * 500, 0), arrival_s=0.0)
        async with asyncio.timeout(60):
            await b.changed.wait()  # b's first audio: its segment is open on the one worker
        pool.sched.submit(cha, request("HANG", 0), arrival_s=0.0)
        assert await a.wait_ended(1) == {0: "engine_timeout"}
        assert await b.wait_ended(1) == {0: "worker_restarted"}
        assert pool.faults == ["timeout"] and pool.sched.job_count() == 0
    finally:
        await asyncio.to_thread(pool.sched.stop)


def test_a_hung_segment_on_a_live_server_errs_its_session_only_and_is_counted() -> None:
    import httpx

    from stream_server.config import AppConfig, ServerConfig
    from tests.server_fixtures import collect, running_server, ws_url

    config = AppConfig(server=ServerConfig(port=0, workers=2, engine_watchdog_s=3.0))
    with running_server(config, FaultyEngine()) as base:
        url = ws_url(base)

        async def both() -> tuple[object, object]:
            hung = collect(url, [{"type": "text", "text": "This one will HANG."}, {"type": "flush"},
                                 {"type": "text", "text": "Then the next turn speaks."}, {"type": "end"}],
                           timeout_s=60)
            fine = collect(url, [{"type": "text", "text": "A normal sentence. And another one."},
                                 {"type": "end"}], timeout_s=60)
            return tuple(await asyncio.gather(hung, fine))  # type: ignore[return-value]

        hung, fine = asyncio.run(both())
        metrics = httpx.get(base + "/metrics").text
    errors = [m for m in hung.messages if m["type"] == "error"]  # type: ignore[attr-defined]
    assert [e["code"] for e in errors] == ["engine_timeout"]
    assert hung.messages[-1]["type"] == "done" and hung.frames  # type: ignore[attr-defined]
    assert hung.close_code == 1000  # type: ignore[attr-defined]
    assert not [m for m in fine.messages if m["type"] == "error"]  # type: ignore[attr-defined]
    assert fine.messages[-1]["type"] == "done" and fine.close_code == 1000  # type: ignore[attr-defined]
    assert 'stream_tts_engine_worker_faults_total{reason="timeout"} 1.0' in metrics
    assert 'stream_tts_errors_total{code="engine_timeout"} 1.0' in metrics


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
async def test_each_worker_runs_one_thread() -> None:
    """One BLAS thread per worker: the workers fill the cores themselves, and OpenBLAS's own thread
    spun on the other core whenever eSpeak's resampling product grew past its threading threshold."""
    from engine.espeak import EspeakEngine

    recipe = recipe_of(EspeakEngine())
    assert recipe is not None
    lane = ProcessLane(0, recipe, AUDIO, watchdog_s=30.0, on_fault=lambda kind: None)
    sched = Scheduler(EspeakEngine(), AUDIO, max_jobs=8, max_ahead_s=100.0, lanes=[lane])  # type: ignore[arg-type]
    sched.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(asyncio.wrap_future(sched.warm_up()), 120.0)
        sink = Sink()
        ch = sched.open_channel("s", sink)
        text = "A sentence long enough for a four second piece of speech, said without any pause at all. " * 2
        sched.submit(ch, SynthRequest(0, 0, text, "en-us", SynthOptions(), "opus", 24000), arrival_s=0.0)
        assert await sink.wait_ended(1) == {0: "ok"}
        assert len(os.listdir(f"/proc/{lane.pid}/task")) == 1
    finally:
        await asyncio.to_thread(sched.stop)
