"""Faults the server already survives, kept true (issue 10): a stalled reader among busy clients,
a connection storm past ``max_sessions``, and chaos disconnects. (SIGTERM -> 1001: test_drain.py.)"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect

from tests.reliability_fixtures import RawWebSocket, fd_count, scrape, served
from tests.server_fixtures import SineBurstEngine, collect, make_config, poll_until, ws_url

SHORT = "A short turn for a busy client. It has two sentences."
LONG = " ".join(f"Sentence {i} is here to make a lot of audio for the stalled reader." for i in range(30))


async def _stalled_reader(url: str) -> RawWebSocket:
    """A session that asks for ~100 s of PCM audio and never reads (tiny receive buffer)."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((parts.hostname, parts.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    ws = RawWebSocket(reader, writer)
    await ws.send_json({"type": "start", "format": "pcm_s16le", "sample_rate": 48000})
    await ws.send_json({"type": "text", "text": LONG})
    await ws.send_json({"type": "flush"})
    return ws


async def test_a_stalled_reader_costs_the_busy_clients_nothing() -> None:
    config = make_config()
    with served(config, SineBurstEngine(ms_per_char=50)) as (url, _, app):
        hub = app.state.hub
        stalled = await _stalled_reader(url)
        await poll_until(lambda: len(hub.connections) == 1 and hub.scheduler.channel_count() == 1)
        channel = hub.scheduler._channels[0]

        async def parked() -> bool:  # the writer is blocked and synthesis stopped max_ahead_s ahead
            before = channel.produced_s
            await asyncio.sleep(0.3)
            return channel.produced_s == before and channel.produced_s - channel.written_s >= 3.0

        await poll_until(parked, timeout_s=30)
        held = (await scrape(url))["stream_tts_outbox_bytes"]
        busy = [await asyncio.gather(*(collect(ws_url(url), [{"type": "text", "text": SHORT}, {"type": "end"}])
                                       for _ in range(4))) for _ in range(2)]
        after = (await scrape(url))["stream_tts_outbox_bytes"]
        ahead_s = channel.produced_s - channel.written_s
        await stalled.aclose()
    for got in (g for rnd in busy for g in rnd):
        done = got.messages[-1]
        assert done["type"] == "done" and got.close_code == 1000
        assert len(got.frames) * 20 == done["audio_ms"] and done["segments"] == 2
        assert done["ttfa_ms"] < 2000  # generous: a stall would show as a timeout, not as slowness
    # memory bounded: synthesis parked max_ahead_s (+ one engine chunk) ahead, the outbox did not grow
    assert ahead_s <= config.server.max_ahead_s + 0.1
    assert after == held and held <= (config.server.max_ahead_s + 0.1) * 96000


async def test_a_connection_storm_is_refused_cleanly_and_fds_come_back() -> None:
    served_n, attempted = 8, 40
    with served(make_config(max_sessions=served_n), SineBurstEngine()) as (url, _, app):
        hub = app.state.hub
        baseline_fds = fd_count()
        held = []
        for _ in range(served_n):
            ws = await connect(ws_url(url))
            await ws.send(json.dumps({"type": "start"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            held.append(ws)

        health_s: list[float] = []

        async def probe_health() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
                for _ in range(10):
                    t0 = time.monotonic()
                    assert (await client.get("/healthz")).status_code == 200
                    health_s.append(time.monotonic() - t0)

        storm = asyncio.gather(*(collect(ws_url(url), [{"type": "start"}]) for _ in range(attempted - served_n)))
        refused, _ = await asyncio.gather(storm, probe_health())
        metrics = await scrape(url)
        # the held sessions still work
        await held[0].send(json.dumps({"type": "text", "text": SHORT}))
        await held[0].send(json.dumps({"type": "end"}))
        rest = [json.loads(m) async for m in held[0] if isinstance(m, str)]
        for ws in held:
            await ws.close()
        await poll_until(lambda: not hub.connections and hub.scheduler.channel_count() == 0)
        await poll_until(lambda: fd_count() <= baseline_fds, timeout_s=10)
    assert all(r.messages == [{"type": "error", "code": "overloaded", "message": "too many sessions; try again later"}]
               and r.close_code == 1013 for r in refused)
    assert metrics['stream_tts_refusals_total{reason="overloaded"}'] == attempted - served_n
    assert metrics["stream_tts_active_sessions"] == served_n
    assert max(health_s) < 5.0  # /healthz answered all through the storm
    assert rest[-1]["type"] == "done" and held[0].close_code == 1000


async def _chaos_client(url: str, rng: random.Random) -> None:
    """One client that goes away at a random moment in a random way."""
    way = rng.choice(["half_upgrade", "abort_after_text", "after_first_audio", "close_mid_turn",
                      "clear_then_abort", "close_before_start"])
    parts = urlsplit(url)
    if way == "half_upgrade":
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websoc")
        await asyncio.sleep(rng.uniform(0, 0.05))
        writer.transport.abort()
        return
    ws = await RawWebSocket.open(url)
    if way == "close_before_start":
        ws.writer.transport.abort()
        return
    await ws.send_json({"type": "start", "format": rng.choice(["opus", "pcm_s16le"])})
    await ws.send_json({"type": "text", "text": LONG[: rng.randint(80, 600)]})
    await ws.send_json({"type": "flush"})
    if way == "abort_after_text":
        await asyncio.sleep(rng.uniform(0, 0.05))
    elif way == "after_first_audio":
        while (await ws.recv_frame())[0] != 0x2:
            pass
    elif way == "close_mid_turn":
        await asyncio.sleep(rng.uniform(0, 0.1))
        await ws.send_frame(0x8, (1000).to_bytes(2, "big"))
    elif way == "clear_then_abort":
        await ws.send_json({"type": "clear"})
    ws.writer.transport.abort()


async def test_chaos_disconnects_leak_nothing() -> None:
    engine = SineBurstEngine(delay_s=0.002)
    with served(make_config(), engine) as (url, _, app):
        hub = app.state.hub
        baseline = await scrape(url)
        baseline_fds = fd_count()
        rng = random.Random(10)
        for _ in range(4):
            await asyncio.gather(*(_chaos_client(url, rng) for _ in range(10)))
        sched = hub.scheduler
        await poll_until(lambda: not hub.connections and sched.job_count() == 0 and sched.channel_count() == 0)
        await poll_until(lambda: fd_count() <= baseline_fds, timeout_s=10)
        after: dict[str, Any] = await scrape(url)
    assert after["stream_tts_asyncio_tasks"] == baseline["stream_tts_asyncio_tasks"]
    assert after["stream_tts_outbox_bytes"] == 0 and after["stream_tts_queued_jobs"] == 0
    assert after["stream_tts_active_sessions"] == 0
    assert 'stream_tts_errors_total{code="internal_error"}' not in after
    assert len(engine.calls) > 0  # the clients did get work started before they left
