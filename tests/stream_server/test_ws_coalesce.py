"""A WebSocket's frames written in one event-loop turn leave in one socket write (``ws_coalesce``):
same bytes, same order, fewer system calls; close, abort and big writes behave."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from stream_server import ws_coalesce
from stream_server.ws_coalesce import FLUSH_BYTES, CoalescingWebSocketProtocol, WriteCoalescer
from tests.server_fixtures import SineBurstEngine, collect, make_config, running_server, ws_url


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.events.append("write")

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def _next_turn() -> None:
    await asyncio.sleep(0)


async def test_one_turns_writes_leave_together_in_order_at_the_next_turn() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    co.write(b"one")
    co.write(bytearray(b"two"))
    co.write(b"")
    co.write(memoryview(b"three"))
    assert real.writes == []
    assert co.get_write_buffer_size() == 11
    await _next_turn()
    assert real.writes == [b"onetwothree"]
    assert co.get_write_buffer_size() == 0
    co.write(b"four")
    await _next_turn()
    assert real.writes == [b"onetwothree", b"four"]


async def test_a_reused_buffer_is_copied_when_written() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    buf = bytearray(b"abc")
    co.write(buf)
    buf[:] = b"xyz"
    await _next_turn()
    assert real.writes == [b"abc"]


async def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    co.write(b"close frame")
    co.close()
    assert real.events == ["write", "close"] and real.writes == [b"close frame"]
    await _next_turn()  # the scheduled flush finds nothing left
    assert real.writes == [b"close frame"]

    real2 = FakeTransport()
    co2 = WriteCoalescer(real2, asyncio.get_running_loop())  # type: ignore[arg-type]
    co2.write(b"lost")
    co2.abort()
    await _next_turn()
    assert real2.events == ["abort"] and co2.get_write_buffer_size() == 0


async def test_write_eof_flushes_and_nothing_is_written_to_a_closing_transport() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    co.write(b"last")
    co.write_eof()
    assert real.events == ["write", "eof"]
    real.closing = True
    co.write(b"too late")
    await _next_turn()
    assert real.writes == [b"last"]


async def test_a_big_turn_is_sent_at_once_and_the_rest_at_the_next_turn() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    half = b"x" * (FLUSH_BYTES // 2)
    co.write(half)
    co.write(half)  # reaches FLUSH_BYTES
    assert real.writes == [half + half]
    co.write(b"tail")
    await _next_turn()
    assert real.writes == [half + half, b"tail"]


async def test_other_attributes_are_the_real_transports() -> None:
    real = FakeTransport()
    co = WriteCoalescer(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert co.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert co.is_closing() is False


def test_the_server_speaks_through_the_coalescing_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """A live session: every frame arrives intact and in order, in far fewer socket writes."""
    real_writes = 0
    flush = WriteCoalescer.flush

    def counting_flush(self: WriteCoalescer) -> None:
        nonlocal real_writes
        if self._pending:
            real_writes += 1
        flush(self)

    monkeypatch.setattr(ws_coalesce.WriteCoalescer, "flush", counting_flush)
    engine = SineBurstEngine(chunk_ms=200.0)  # 10 frames per engine chunk
    text = "A" * 200  # 2 s of tone
    with running_server(make_config(), engine) as url:
        got = asyncio.run(collect(ws_url(url), [{"type": "start"}, {"type": "text", "text": text + "."},
                                                {"type": "end"}]))
    assert got.close_code == 1000
    assert got.messages[-1]["type"] == "done"
    n_messages = len(got.frames) + len(got.messages)
    assert len(got.frames) >= 100  # 2 s of 20 ms frames
    assert got.assert_segment_order() is None
    # every message went through the coalescer (the handshake and close too), in fewer writes
    assert 0 < real_writes <= n_messages // 2


def test_build_server_uses_the_coalescing_protocol() -> None:
    from stream_server.app import build_server, create_app

    config = make_config()
    server = build_server(create_app(config, SineBurstEngine()), config)
    server.config.load()
    assert server.config.ws_protocol_class is CoalescingWebSocketProtocol


def _record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", level, __file__, 1, msg, args, None)


def test_websocket_lifecycle_lines_are_written_only_at_debug() -> None:
    from stream_server.app import WebSocketLifecycleAtDebug, build_server, create_app

    config = make_config()
    build_server(create_app(config, SineBurstEngine()), config, log_config=None)
    build_server(create_app(config, SineBurstEngine()), config, log_config=None)
    log = logging.getLogger("uvicorn.error")
    filters = [f for f in log.filters if isinstance(f, WebSocketLifecycleAtDebug)]
    assert len(filters) == 1  # installed once however many servers are built
    quiet = filters[0]
    lifecycle = [_record("connection open"), _record("connection closed"),
                 _record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/v1/stream")]
    kept = [_record('%s - "WebSocket %s" 403', "127.0.0.1:5", "/v1/stream"),
            _record("connection open", level=logging.WARNING), _record("Application startup complete.")]
    old = log.level
    try:
        log.setLevel(logging.INFO)
        assert [quiet.filter(r) for r in lifecycle] == [False, False, False]
        assert all(quiet.filter(r) for r in kept)
        log.setLevel(logging.DEBUG)
        assert all(quiet.filter(r) for r in lifecycle)
    finally:
        log.setLevel(old)
