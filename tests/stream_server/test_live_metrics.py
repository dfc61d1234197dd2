"""/metrics exposes the live state (issue 10 item 8): process RSS and fds, tasks, threads, queued
jobs, in-flight segments, outbox bytes, event-loop lag, refusals by reason."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.reliability_fixtures import scrape, served
from tests.server_fixtures import SineBurstEngine, make_config, ws_url

LIVE = (
    "process_resident_memory_bytes", "process_open_fds", "stream_tts_threads", "stream_tts_asyncio_tasks",
    "stream_tts_queued_jobs", "stream_tts_inflight_segments", "stream_tts_backlog_segments",
    "stream_tts_outbox_bytes", "stream_tts_outbox_items", "stream_tts_scheduler_channels",
    "stream_tts_event_loop_lag_seconds_max", "stream_tts_event_loop_lag_seconds_count",
    "stream_tts_draining", "stream_tts_active_sessions",
)


async def test_live_gauges_follow_a_busy_session_and_the_loop_lag() -> None:
    engine = SineBurstEngine(delay_s=0.05)  # slow: the session's work stays visible
    with served(make_config(), engine) as (url, _, app):
        idle = await scrape(url)
        async with connect(ws_url(url)) as ws:
            text = " ".join(f"Sentence {i} keeps the engine busy for a while." for i in range(6))
            await ws.send(json.dumps({"type": "text", "text": text}))
            assert json.loads(await ws.recv())["type"] == "ready"
            busy = await scrape(url)
        loop = app.state.hub.scheduler._loop
        loop.call_soon_threadsafe(time.sleep, 0.3)  # block the server's event loop for 300 ms
        await asyncio.sleep(0.6)
        lagged = await scrape(url)
    for name in LIVE:
        assert name in idle, name
    assert idle["stream_tts_queued_jobs"] == 0 and idle["stream_tts_inflight_segments"] == 0
    assert idle["process_resident_memory_bytes"] > 10e6 and idle["process_open_fds"] > 3
    assert idle["stream_tts_threads"] >= 2  # the event loop's and the engine worker
    assert busy["stream_tts_queued_jobs"] == 2 and busy["stream_tts_inflight_segments"] == 2  # SUBMIT_AHEAD
    assert busy["stream_tts_backlog_segments"] == 3  # the 6th sentence waits for a lookahead or flush
    assert busy["stream_tts_active_sessions"] == 1 and busy["stream_tts_scheduler_channels"] == 1
    assert busy["stream_tts_asyncio_tasks"] >= idle["stream_tts_asyncio_tasks"] + 2  # reader + writer
    # the monitor's 100 ms sleep was somewhere in its course when the 300 ms block began
    assert lagged["stream_tts_event_loop_lag_seconds_max"] >= 0.19


@pytest.mark.parametrize("freeze", [True, False])
def test_warm_up_freezes_the_start_up_objects_out_of_the_gc(freeze: bool) -> None:
    """A full collection over the start-up objects stalled the event loop 250-450 ms; after
    warm-up they are frozen (``gc_freeze``). In a subprocess: freezing pins the test process."""
    code = f"""
import asyncio, gc
from stream_server.app import create_app
from tests.server_fixtures import SineBurstEngine, make_config
app = create_app(make_config(gc_freeze={freeze}), SineBurstEngine())
async def main():
    async with app.router.lifespan_context(app):
        while not app.state.hub.warm:
            await asyncio.sleep(0.01)
        print(gc.get_freeze_count())
asyncio.run(main())
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    frozen = int(out.stdout.split()[-1])
    assert (frozen > 10_000) is freeze, frozen
