"""The batch worker with a fake batching engine: batching, EDF, cancel, and faults contained."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from engine.config import AudioConfig
from stream_server.batch_worker import BatchScheduler, is_out_of_memory, make_scheduler
from stream_server.scheduler import Scheduler, SegmentAudio, SegmentFailed, SegmentFinished
from tests.server_fixtures import SineBurstEngine
from tests.stream_server.batch_fakes import FakeBatchEngine, cpu_like_cost, gpu_like_cost
from tests.stream_server.test_scheduler import Sink, finished, request

AUDIO = AudioConfig()


async def started(engine: FakeBatchEngine, faults: Counter[str] | None = None, **kw: float) -> BatchScheduler:
    counts = Counter[str]() if faults is None else faults
    sched = BatchScheduler(
        engine, AUDIO, max_jobs=64, max_ahead_s=kw.pop("max_ahead_s", 100.0),
        on_fault=lambda kind: counts.update([kind]),
        max_rows=int(kw.pop("max_rows", 0)) or None,
    )
    sched.start(asyncio.get_running_loop())
    return sched


def pcm(events: list, index: int | None = None) -> bytes:  # type: ignore[type-arg]
    return b"".join(p for e in events if isinstance(e, SegmentAudio)
                    and (index is None or e.request.index == index) for p in e.packets)


async def run_sessions(engine: FakeBatchEngine, texts: list[list[str]], **kw: float) -> tuple[list[Sink], Counter[str]]:
    faults: Counter[str] = Counter()
    sched = await started(engine, faults, **kw)
    sinks = []
    for s, segs in enumerate(texts):
        sink = Sink()
        ch = sched.open_channel(f"s{s}", sink)
        for i, t in enumerate(segs):
            sched.submit(ch, request(t, i, fmt="pcm_s16le"), arrival_s=0.0)
        sinks.append(sink)
    for sink, segs in zip(sinks, texts, strict=True):
        n = len(segs)
        await sink.wait_for(lambda ev, n=n: len(finished(ev)) == n)
    assert sched.job_count() == 0
    await asyncio.to_thread(sched.stop)
    return sinks, faults


async def test_make_scheduler_picks_the_batch_worker_only_for_batching_engines() -> None:
    batch = make_scheduler(FakeBatchEngine(), AUDIO, max_jobs=4, max_ahead_s=1.0)
    chunk = make_scheduler(SineBurstEngine(), AUDIO, max_jobs=4, max_ahead_s=1.0)  # type: ignore[arg-type]
    assert isinstance(batch, BatchScheduler)
    assert type(chunk) is Scheduler


async def test_sessions_are_batched_on_a_gpu_like_device_and_audio_equals_solo() -> None:
    texts = [["first session speaks.", "then more."], ["second one here, a bit longer."]]
    engine = FakeBatchEngine(cost=gpu_like_cost, step_delay_s=0.005)  # the second joins in time
    sinks, faults = await run_sessions(engine, texts)
    assert max(len(t) for k, t in engine.steps if k == "sample") == 2
    assert any(k == "vocode" and len(t) == 2 for k, t in engine.steps)
    # the same segments alone
    for s, segs in enumerate(texts):
        solo, _ = await run_sessions(FakeBatchEngine(cost=gpu_like_cost), [segs])
        for i in range(len(segs)):
            assert pcm(sinks[s].events, i) == pcm(solo[0].events, i)
    assert [e.request.index for e in sinks[0].events if isinstance(e, SegmentFinished)] == [0, 1]
    assert not faults
    assert all(i.closed for i in engine.opened)  # every item released


async def test_on_a_cpu_like_device_steps_run_one_item_each() -> None:
    engine = FakeBatchEngine(cost=cpu_like_cost)
    await run_sessions(engine, [["one."], ["two."], ["three."]])
    assert all(len(texts) == 1 for _, texts in engine.steps)
    # EDF with equal arrivals: channel order; the first session's first audio comes first
    first_vocode = [t[0] for k, t in engine.steps if k == "vocode"]
    assert first_vocode.index("one.") < first_vocode.index("two.") < first_vocode.index("three.")


async def test_max_rows_one_is_one_at_a_time_even_on_a_gpu_like_device() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost)
    await run_sessions(engine, [["one."], ["two."]], max_rows=1)
    assert all(len(texts) == 1 for _, texts in engine.steps)


async def test_the_next_segment_samples_ahead_while_the_head_is_parked() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost)
    sched = await started(engine, max_ahead_s=0.3)
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("x" * 200, 0, fmt="pcm_s16le"), arrival_s=0.0)  # 2 s of audio
    sched.submit(ch, request("second.", 1, fmt="pcm_s16le"), arrival_s=0.0)
    await sink.wait_for(lambda ev: pcm(ev) != b"")
    await asyncio.sleep(0.3)
    produced = len(pcm(sink.events)) / 2 / 24000
    assert 0.3 <= produced < 1.5 and finished(sink.events) == []  # parked: no more audio
    second = next(i for i in engine.opened if i.text == "second.")
    assert second.phase == "vocoding"  # but the next segment was sampled meanwhile
    sched.note_written(ch, 10.0)
    await sink.wait_for(lambda ev: finished(ev) == [0, 1])
    await asyncio.to_thread(sched.stop)


async def test_an_empty_segment_gives_its_pause_only() -> None:
    engine = FakeBatchEngine()
    sinks, _ = await run_sessions(engine, [["  ", "hello."]])
    assert finished(sinks[0].events) == [0, 1]
    assert len(pcm(sinks[0].events, 0)) == round(AUDIO.pause_ms / 1000 * 24000) * 2


async def test_cancel_removes_the_item_at_the_next_step() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, step_delay_s=0.01)
    sched = await started(engine)
    sink_a, sink_b = Sink(), Sink()
    a = sched.open_channel("a", sink_a)
    b = sched.open_channel("b", sink_b)
    sched.submit(a, request("long " * 100, 0, fmt="pcm_s16le"), arrival_s=0.0)
    sched.submit(b, request("other " * 80, 0, fmt="pcm_s16le"), arrival_s=0.0)
    await sink_a.wait_for(lambda ev: len(ev) >= 1)
    sched.cancel(a)
    n_steps = len(engine.steps)
    await sink_b.wait_for(lambda ev: finished(ev) == [0])
    await asyncio.to_thread(sched.stop)
    later = engine.steps[n_steps + 1 :]  # the step in flight at cancel may still carry it
    assert later and all("long " * 100 not in texts for _, texts in later)
    assert "long " * 100 in engine.closed
    assert finished(sink_a.events) == []
    assert sched.job_count() == 0


async def test_an_engine_exception_fails_only_its_segment() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, fail_texts=["boom."])
    sinks, faults = await run_sessions(engine, [["fine one.", "boom.", "after."], ["other."], ["third."]])
    failed = [(e.request.index, e.code) for e in sinks[0].events if isinstance(e, SegmentFailed)]
    assert failed == [(1, "engine_fault")]
    assert [e.request.index for e in sinks[0].events if isinstance(e, SegmentFinished)] == [0, 2]
    for sink in sinks[1:]:
        assert [type(e) for e in sink.events if not isinstance(e, SegmentAudio)] == [SegmentFinished]
    assert faults == Counter({"exception": 1})
    assert "boom." in engine.closed


async def test_out_of_memory_retries_smaller_batches_and_everyone_finishes() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, oom_over_rows=2, step_delay_s=0.005)
    texts = [[f"session {k} speaks."] for k in range(6)]
    sinks, faults = await run_sessions(engine, texts)
    for sink in sinks:
        assert [type(e) for e in sink.events if not isinstance(e, SegmentAudio)] == [SegmentFinished]
    assert faults["oom"] >= 1 and faults["exception"] == 0
    assert max(len(t) for k, t in engine.steps if k == "sample") <= 2


async def test_an_item_out_of_memory_alone_fails_with_its_code_and_others_go_on() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost, oom_texts=["huge."])
    sinks, faults = await run_sessions(engine, [["huge.", "small."], ["other."]])
    failed = [(e.request.index, e.code) for e in sinks[0].events if isinstance(e, SegmentFailed)]
    assert failed == [(0, "out_of_memory")]
    assert [e.request.index for e in sinks[0].events if isinstance(e, SegmentFinished)] == [1]
    assert [e.request.index for e in sinks[1].events if isinstance(e, SegmentFinished)] == [0]
    assert faults["oom"] >= 1


async def test_unknown_voice_at_open_keeps_its_engine_code() -> None:
    engine = FakeBatchEngine()
    faults: Counter[str] = Counter()
    sched = await started(engine, faults)
    sink = Sink()
    ch = sched.open_channel("s", sink)
    sched.submit(ch, request("hi.", 0, voice="nobody"), arrival_s=0.0)
    sched.submit(ch, request("hi.", 1), arrival_s=0.0)
    await sink.wait_for(lambda ev: len(finished(ev)) == 2)
    await asyncio.to_thread(sched.stop)
    assert [(e.request.index, e.code) for e in sink.events if isinstance(e, SegmentFailed)] == [(0, "unknown_voice")]
    assert not faults


async def test_fast_start_only_for_a_session_with_nothing_playing() -> None:
    engine = FakeBatchEngine()
    await run_sessions(engine, [["first.", "second."]])
    assert [(i.text, i.fast_start) for i in engine.opened] == [("first.", True), ("second.", False)]


def test_out_of_memory_is_recognised_by_class() -> None:
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))


async def test_a_new_listener_goes_before_a_session_playing_ahead() -> None:
    engine = FakeBatchEngine(cost=cpu_like_cost, step_delay_s=0.005)
    sched = await started(engine)
    sink_a, sink_b = Sink(), Sink()
    a = sched.open_channel("a", sink_a)
    b = sched.open_channel("b", sink_b)
    sched.submit(a, request("a" * 800, 0, fmt="pcm_s16le"), arrival_s=0.0)  # 8 s of audio
    await sink_a.wait_for(lambda ev: len(pcm(ev)) / 2 / 24000 >= 1.5)  # A has 1.5 s of buffer
    sched.submit(b, request("new listener.", 0, fmt="pcm_s16le"), arrival_s=time.monotonic())
    await sink_b.wait_for(lambda ev: finished(ev) == [0])
    await sink_a.wait_for(lambda ev: finished(ev) == [0])
    await asyncio.to_thread(sched.stop)
    steps = engine.steps
    b_first = next(i for i, (_, t) in enumerate(steps) if t == ("new listener.",))
    b_audio = next(i for i, (k, t) in enumerate(steps) if k == "vocode" and t == ("new listener.",))
    # from B's arrival to its first audio, nothing of A ran (A's buffer covered it)
    assert all(t == ("new listener.",) for _, t in steps[b_first : b_audio + 1])
    assert b_audio - b_first == engine.nfe  # its sampler steps, then its first chunk



async def test_only_segments_that_can_join_the_next_step_are_opened_before_it() -> None:
    engine = FakeBatchEngine(cost=gpu_like_cost)
    sched = BatchScheduler(engine, AUDIO, max_jobs=64, max_ahead_s=100.0, max_rows=2)
    sinks = []
    for k in range(5):  # five listeners arrive together, before the worker starts
        sink = Sink()
        ch = sched.open_channel(f"s{k}", sink)
        sched.submit(ch, request(f"listener {k}.", 0, fmt="pcm_s16le"), arrival_s=float(k))
        sinks.append(sink)
    sched.start(asyncio.get_running_loop())
    for sink in sinks:
        await sink.wait_for(lambda ev: finished(ev) == [0])
    await asyncio.to_thread(sched.stop)
    assert engine.trace[:3] == ["open listener 0.", "open listener 1.", "sample 2"]
    assert all(int(t.split()[1]) <= 2 for t in engine.trace if not t.startswith("open"))
