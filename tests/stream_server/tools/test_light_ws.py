"""The benchmark's light WebSocket client (``tools.light_ws``): frames cut and masked per RFC 6455,
the same messages as the ``websockets`` client from a live server, handshake and close errors
raised as the ``websockets`` client raises them."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from stream_server.config import AppConfig, ServerConfig
from stream_server.tools.light_ws import FrameParser, LightWebSocket, mask_frame
from tests.server_fixtures import SineBurstEngine, collect, running_server, ws_url

SIZES = [0, 1, 125, 126, 65535, 65536, 70000]


def _server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked server frame, as the ``websockets`` library serializes it."""
    return Frame(Opcode(opcode), payload, fin=fin).serialize(mask=False)


def _parse_client_frame(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    gen = Frame.parse(reader.read_exact, mask=True)
    try:
        while True:
            next(gen)
    except StopIteration as done:
        frame: Frame = done.value
    return frame


@pytest.mark.parametrize("n", SIZES)
def test_masked_client_frames_parse_back_with_the_websockets_library(n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    frame = _parse_client_frame(mask_frame(0x1, payload))
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.TEXT, payload, True)
    raw = mask_frame(0x2, payload, mask=b"\x01\x02\x03\x04")
    assert raw[1] & 0x80  # the mask bit is set
    assert _parse_client_frame(raw).data == payload


def test_server_frames_are_cut_out_of_any_split_of_the_stream() -> None:
    frames = [(True, 0x2, bytes([k % 256]) * n) for k, n in enumerate(SIZES)] + [(False, 0x1, b"he"),
                                                                                   (True, 0x0, b"llo")]
    stream = b"".join(_server_frame(op, data, fin) for fin, op, data in frames)
    whole = FrameParser(1 << 20).feed(stream)
    assert whole == frames
    parser, got = FrameParser(1 << 20), []
    for i in range(0, len(stream), 7):  # odd pieces: headers and payloads split anywhere
        got += parser.feed(stream[i : i + 7])
    assert got == frames


def test_a_frame_over_the_size_limit_or_masked_by_the_server_is_refused() -> None:
    with pytest.raises(InvalidHandshake, match="limit"):
        FrameParser(100).feed(_server_frame(0x2, b"x" * 101))
    with pytest.raises(InvalidHandshake, match="masked"):
        FrameParser(100).feed(mask_frame(0x2, b"x"))


class _Writer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False


def test_ping_is_answered_with_pong_and_fragments_are_joined() -> None:
    writer = _Writer()
    ws = LightWebSocket(None, writer, 1 << 20, b"")  # type: ignore[arg-type]
    assert ws._on_frame(True, 0x9, b"beat") is None
    pong = _parse_client_frame(writer.data)
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"beat")
    assert ws._on_frame(False, 0x1, "é".encode()[:1]) is None
    assert ws._on_frame(True, 0x0, "é".encode()[1:]) == "é"  # a character split across fragments
    assert ws._on_frame(True, 0x2, b"\x00\x01") == b"\x00\x01"
    small = LightWebSocket(None, writer, 8, b"")  # type: ignore[arg-type]
    assert small._on_frame(False, 0x2, b"12345") is None
    with pytest.raises(InvalidHandshake, match="limit"):  # fragments add up past max_size
        small._on_frame(False, 0x0, b"6789")


MESSAGES = [{"type": "start", "voice": "high"}, {"type": "text",
             "text": "Hello there, this is the first sentence. And here is the second one, a bit longer."},
            {"type": "end"}]


async def _light_collect(url: str) -> tuple[list[dict[str, object]], list[bytes], int | None]:
    messages, frames = [], []
    async with LightWebSocket.connect(url, timeout_s=10) as ws:
        for m in MESSAGES:
            await ws.send(json.dumps(m))
        async for raw in ws:
            if isinstance(raw, bytes):
                frames.append(raw)
            else:
                messages.append(json.loads(raw))
    return messages, frames, ws.close_code


def test_a_live_session_gives_the_same_messages_as_the_websockets_client() -> None:
    with running_server(AppConfig(server=ServerConfig(port=0)), SineBurstEngine()) as url:
        reference = asyncio.run(collect(ws_url(url), list(MESSAGES)))
        messages, frames, close_code = asyncio.run(_light_collect(ws_url(url)))
    assert close_code == reference.close_code == 1000
    assert [m["type"] for m in messages] == [m["type"] for m in reference.messages]
    assert messages[-1]["type"] == "done" and messages[-1]["audio_ms"] == reference.messages[-1]["audio_ms"]
    assert len(frames) == len(reference.frames) > 30
    assert frames == reference.frames  # same engine, same encoder: the same Opus packets


def test_refusals_and_bad_urls_raise_the_websockets_exceptions() -> None:
    async def refused(url: str) -> None:
        async with LightWebSocket.connect(url, timeout_s=10) as ws:
            await ws.send(json.dumps({"type": "start"}))
            async for _ in ws:
                pass

    config = AppConfig(server=ServerConfig(port=0, max_sessions=1))
    with running_server(config, SineBurstEngine(ms_per_char=100.0, delay_s=0.05)) as url:
        async def two() -> None:
            async with LightWebSocket.connect(ws_url(url), timeout_s=10) as first:
                await first.send(json.dumps({"type": "start"}))
                await first.send(json.dumps({"type": "text", "text": "A long one."}))
                with pytest.raises(ConnectionClosedError) as closed:
                    await refused(ws_url(url))
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "overloaded")

        asyncio.run(two())
        with pytest.raises(InvalidStatus) as status:
            asyncio.run(refused(url.replace("http://", "ws://") + "/no-such-socket"))
        assert status.value.response.status_code in (403, 404)
    with pytest.raises(InvalidURI):
        asyncio.run(refused("wss://127.0.0.1:1/v1/stream"))
    assert struct.pack("!H", 1000) == b"\x03\xe8"  # the close code the client sends on leaving
