"""Handshakes that never finish (issue 10 item 5) are bounded by timeouts and leave nothing behind:
a TCP connection that sends nothing, an HTTP upgrade that stalls half-way (also on a keep-alive
connection), a WebSocket that never sends ``start`` or text."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.reliability_fixtures import RawWebSocket, scrape, served
from tests.server_fixtures import SineBurstEngine, make_config, poll_until

TIMEOUT_S = 0.5
PARTIAL_UPGRADE = b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upg"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    config = make_config(handshake_timeout_s=TIMEOUT_S, start_timeout_s=TIMEOUT_S)
    with served(config, SineBurstEngine()) as (url, _, app):
        yield url, app


async def _closed_by_server(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Read until EOF (the server closed); (everything read, seconds it took)."""
    t0 = time.monotonic()
    async with asyncio.timeout(10):
        data = await reader.read()
    return data, time.monotonic() - t0


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _settled(url: str, app: object) -> None:
    """No session and no extra task left on the server (tasks: this scrape's request only)."""
    hub = app.state.hub  # type: ignore[attr-defined]
    await poll_until(lambda: not hub.connections and hub.scheduler.channel_count() == 0)


@pytest.mark.parametrize("sent", [b"", PARTIAL_UPGRADE], ids=["silent", "half-upgrade"])
async def test_a_connection_without_a_whole_request_head_is_closed(
    server: tuple[str, object], sent: bytes
) -> None:
    url, app = server
    before = await scrape(url)
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(sent)
    data, took = await _closed_by_server(reader)
    await _close(writer)
    after = await scrape(url)
    assert data == b""  # closed without an answer: there was no request to answer
    assert TIMEOUT_S * 0.8 <= took < TIMEOUT_S + 5.0
    key = 'stream_tts_refusals_total{reason="handshake_timeout"}'
    assert after[key] == before.get(key, 0.0) + 1
    assert after["stream_tts_asyncio_tasks"] == before["stream_tts_asyncio_tasks"]
    await _settled(url, app)


async def test_a_stalled_second_request_on_a_keep_alive_connection_is_closed(server: tuple[str, object]) -> None:
    url, _ = server
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")  # the next request stops half-way
    data, took = await _closed_by_server(reader)
    await _close(writer)
    assert b"HTTP/1.1" not in data[data.find(b"}") + 1:]  # no second response
    assert took < TIMEOUT_S + 5.0


async def test_a_slow_but_complete_head_is_served(server: tuple[str, object]) -> None:
    url, _ = server
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        writer.write(piece)
        await asyncio.sleep(TIMEOUT_S / 4)
    head = await reader.readuntil(b"\r\n\r\n")
    await _close(writer)
    assert head.startswith(b"HTTP/1.1 200")


async def test_a_websocket_that_never_starts_is_closed_1008(server: tuple[str, object]) -> None:
    url, app = server
    before = await scrape(url)
    ws = await RawWebSocket.open(url)
    t0 = time.monotonic()
    messages, frames, code = await ws.read_until_close()
    took = time.monotonic() - t0
    assert [m["code"] for m in messages] == ["start_timeout"] and frames == 0 and code == 1008
    assert TIMEOUT_S * 0.8 <= took < TIMEOUT_S + 5.0
    await _settled(url, app)
    after = await scrape(url)
    assert after["stream_tts_asyncio_tasks"] == before["stream_tts_asyncio_tasks"]
    assert after['stream_tts_errors_total{code="start_timeout"}'] >= 1


async def test_the_start_timeout_does_not_touch_a_started_session(server: tuple[str, object]) -> None:
    url, _ = server
    ws = await RawWebSocket.open(url)
    await ws.send_json({"type": "start"})
    await asyncio.sleep(TIMEOUT_S * 2)
    await ws.send_json({"type": "text", "text": "Still here after the start timeout."})
    await ws.send_json({"type": "end"})
    messages, frames, code = await ws.read_until_close()
    assert [m["type"] for m in messages][0] == "ready" and messages[-1]["type"] == "done"
    assert frames > 0 and code == 1000
