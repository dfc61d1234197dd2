"""Graceful drain (issue 10 item 4): on SIGTERM/SIGINT /healthz turns 503, new work is refused,
sessions mid-turn finish their audio within ``drain_timeout_s``, then everything closes 1001 and
the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.reliability_fixtures import ServerProcess, scrape, served
from tests.server_fixtures import SineBurstEngine, collect, make_config, ws_url

TURN = " ".join(f"Sentence number {i} of the turn that is being spoken when the signal comes." for i in range(4))
UNFINISHED = "This sentence is still being typed and has no end yet"
SHUT = {"type": "error", "code": "shutting_down", "message": "server is shutting down"}


async def _session(url: str, *messages: dict[str, Any]) -> ClientConnection:
    ws = await connect(ws_url(url))
    await ws.send(json.dumps({"type": "start"}))
    assert json.loads(await ws.recv())["type"] == "ready"
    for m in messages:
        await ws.send(json.dumps(m))
    return ws


async def _read_to_close(ws: ClientConnection) -> tuple[list[Any], float]:
    """Everything the server sends until the close (JSON as dicts, audio as int sizes), close time."""
    events: list[Any] = []
    try:
        async for raw in ws:
            events.append(len(raw) if isinstance(raw, bytes) else json.loads(raw))
    except ConnectionClosed:
        pass
    return events, time.monotonic()


async def _wait_healthz_503(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        for _ in range(100):
            r = await client.get("/healthz")
            if r.status_code == 503:
                return dict(r.json())
            await asyncio.sleep(0.01)
    raise AssertionError("/healthz did not turn 503")


async def test_drain_finishes_turns_refuses_new_work_then_closes_1001() -> None:
    engine = SineBurstEngine(delay_s=0.01)  # 60 ms of audio per 10 ms: a turn takes a while
    with served(make_config(drain_timeout_s=3.0), engine) as (url, server, app):
        idle = await _session(url)
        unfinished = await _session(url, {"type": "text", "text": UNFINISHED})
        busy = await _session(url, {"type": "text", "text": TURN}, {"type": "flush"})
        while not isinstance(await busy.recv(), bytes):  # the turn's audio has started
            pass
        readers = [asyncio.create_task(_read_to_close(ws)) for ws in (idle, unfinished, busy)]
        t0 = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)

        health = await _wait_healthz_503(url)
        refused = await collect(ws_url(url), [{"type": "start"}])
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
            say = await client.post("/v1/overlay/say", json={"text": "hello"})
            info = await client.get("/v1/info")
        other_api = await connect(url.replace("http://", "ws://") + "/v1/text-to-speech/low/stream-input")
        other_events, _ = await _read_to_close(other_api)  # another API's WebSocket: 1001 at once
        metrics = await scrape(url)
        (idle_ev, idle_t), (unf_ev, unf_t), (busy_ev, _) = await asyncio.gather(*readers)

    assert health["status"] == "draining"
    assert refused.messages == [SHUT] and refused.close_code == 1001
    assert say.status_code == 503 and say.json()["error"]["code"] == "shutting_down"
    assert info.status_code == 200  # reads still work while draining
    assert metrics["stream_tts_draining"] == 1.0
    assert other_events == [] and other_api.close_code == 1001
    assert metrics['stream_tts_refusals_total{reason="shutting_down"}'] == 3.0
    # idle: closed at once; unfinished turn: cut at the deadline; busy turn: all its audio first
    assert idle_ev == [SHUT] and idle.close_code == 1001 and idle_t - t0 < 1.5
    assert unf_ev == [SHUT] and unfinished.close_code == 1001 and unf_t - t0 >= 2.9
    flushed = next(m for m in busy_ev if isinstance(m, dict) and m["type"] == "flushed")
    frames = [e for e in busy_ev if isinstance(e, int)]
    assert (len(frames) + 1) * 20 == pytest.approx(flushed["audio_ms"])  # + the frame read above
    assert busy_ev[-1] == SHUT and busy.close_code == 1001
    assert busy_ev.index(flushed) < len(busy_ev) - 1


async def test_a_second_signal_closes_everything_at_once() -> None:
    with served(make_config(drain_timeout_s=30.0), SineBurstEngine()) as (url, server, _):
        unfinished = await _session(url, {"type": "text", "text": UNFINISHED})
        reader = asyncio.create_task(_read_to_close(unfinished))
        t0 = time.monotonic()
        server.handle_exit(signal.SIGINT, None)
        await _wait_healthz_503(url)
        server.handle_exit(signal.SIGINT, None)
        events, t_close = await reader
    assert events == [SHUT] and unfinished.close_code == 1001
    assert t_close - t0 < 10.0  # not the 30-s grace


async def test_server_process_drains_on_sigterm_and_exits_0() -> None:
    """The real signal path (SIGINT takes the same path: see the in-process tests above)."""
    grace_s = 3.0
    with ServerProcess(["--drain-timeout-s", str(grace_s)]) as proc:
        idle = await _session(proc.url)
        unfinished = await _session(proc.url, {"type": "text", "text": UNFINISHED})
        readers = [asyncio.create_task(_read_to_close(ws)) for ws in (idle, unfinished)]
        t0 = proc.signal(signal.SIGTERM)
        health = await _wait_healthz_503(proc.url)
        (idle_ev, idle_t), (unf_ev, unf_t) = await asyncio.gather(*readers)
        rc = await asyncio.to_thread(proc.popen.wait, grace_s + 20.0)
        t_exit = time.monotonic()
    assert health["status"] == "draining"
    assert idle_ev == [SHUT] and idle.close_code == 1001 and idle_t - t0 < grace_s
    assert unf_ev == [SHUT] and unfinished.close_code == 1001 and unf_t - t0 >= grace_s - 0.2
    assert rc == 0, "".join(proc.lines[-20:])
    assert t_exit - t0 < grace_s + 15.0
    assert any("1 session(s) closed after their turn, 1 cut at the deadline" in ln for ln in proc.lines)
