"""A minimal WebSocket client for ``stream-tts bench --light``: the fewest CPU cycles per frame.

On a box shared with the server the benchmark client competes with it for the cores. The
``websockets`` client parses every frame through generator-based readers (about a third of the
light bench's CPU went there, py-spy); this client reads the socket in large pieces and cuts the
frames out with a few integer operations (server frames are unmasked). It speaks just what the
benchmark needs (RFC 6455): the opening handshake (status 101 and ``Sec-WebSocket-Accept``
checked), masked text frames out, text / binary / continuation frames in, ping answered with pong,
the closing handshake; no extensions (no permessage-deflate) and no TLS. It raises the
``websockets`` exceptions the full client raises (``InvalidStatus``/``InvalidHandshake``,
``ConnectionClosedError`` with the received close frame), so callers handle both clients alike.

    async with LightWebSocket.connect("ws://127.0.0.1:8765/v1/stream", timeout_s=10) as ws:
        await ws.send('{"type": "start"}')
        async for message in ws:   # str (text) or bytes (binary)
            ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Response

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_READ_BYTES = 1 << 16
_MAX_HEAD_BYTES = 16 << 10


def mask_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final client frame: FIN + ``opcode``, masked with ``mask`` (4 random bytes by default)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n == 0:
        return head + mask
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class FrameParser:
    """Server frames out of a byte stream: ``feed(data)`` -> complete ``(fin, opcode, payload)``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bool, int, bytes]]:
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            if b1 & 0x80:
                raise InvalidHandshake("the server sent a masked frame")
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n > self.max_size:
                raise InvalidHandshake(f"a frame of {n} bytes is over the {self.max_size}-byte limit")
            if end - pos < head + n:
                break
            frames.append((bool(b0 & 0x80), b0 & 0x0F, bytes(buf[pos + head : pos + head + n])))
            pos += head + n
        del buf[:pos]
        return frames


class LightWebSocket:
    """One client connection (see the module docstring); make it with ``connect``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_size: int,
                 rest: bytes) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = FrameParser(max_size)
        self._rest = rest  # bytes after the handshake response
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_sent = False

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, url: str, *, timeout_s: float,
                      max_size: int = 1 << 22) -> AsyncIterator[LightWebSocket]:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise InvalidURI(url, "the light client speaks ws:// only")
        port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(parts.hostname, port)
            try:
                writer.write((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n").encode())
                head, rest = await _read_head(reader)
                _check_upgrade(head, key)
            except BaseException:
                writer.close()
                raise
        ws = cls(reader, writer, max_size, rest)
        try:
            yield ws
        finally:
            await ws._shutdown()

    async def send(self, text: str) -> None:
        """Send one text message (the benchmark sends JSON only)."""
        if self.close_code is not None:
            raise ConnectionClosedError(Close(self.close_code, self.close_reason), None)
        self._writer.write(mask_frame(_OP_TEXT, text.encode()))
        await self._writer.drain()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        """Messages in arrival order until the server closes; a close other than 1000 / 1001
        raises ``ConnectionClosedError`` (like the ``websockets`` client)."""
        data, self._rest = self._rest, b""
        while True:
            for fin, opcode, payload in self._parser.feed(data):
                message = self._on_frame(fin, opcode, payload)
                if message is not None:
                    yield message
                if self.close_code is not None:
                    self._raise_unless_normal()
                    return
            data = await self._reader.read(_READ_BYTES)
            if not data:  # EOF without a close frame
                self.close_code = 1006
                self._raise_unless_normal()
                return

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> str | bytes | None:
        if opcode == _OP_PING:
            self._writer.write(mask_frame(_OP_PONG, payload))
            return None
        if opcode == _OP_PONG:
            return None
        if opcode == _OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_reason = payload[2:].decode("utf-8", "replace")
            self._send_close(payload[:2])
            return None
        if opcode == _OP_CONT:
            self._fragments.append(payload)
            if sum(map(len, self._fragments)) > self._parser.max_size:
                raise InvalidHandshake(f"a message over the {self._parser.max_size}-byte limit")
            if not fin:
                return None
            opcode, payload = self._fragment_op, b"".join(self._fragments)
            self._fragments = []
        elif not fin:
            self._fragment_op, self._fragments = opcode, [payload]
            return None
        return payload.decode() if opcode == _OP_TEXT else payload

    def _raise_unless_normal(self) -> None:
        if self.close_code not in (1000, 1001):
            raise ConnectionClosedError(Close(self.close_code or 1006, self.close_reason), None)

    def _send_close(self, code: bytes) -> None:
        if not self._close_sent and not self._writer.is_closing():
            self._close_sent = True
            self._writer.write(mask_frame(_OP_CLOSE, code))

    async def _shutdown(self) -> None:
        """Closing handshake (if the server has not closed first), then the socket."""
        self._send_close(struct.pack("!H", 1000))
        if self.close_code is None:
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                async with asyncio.timeout(2.0):
                    while await self._reader.read(_READ_BYTES):
                        pass  # until the server closes its side
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await reader.read(_READ_BYTES)
        if not data:
            raise InvalidHandshake("the server closed the connection during the handshake")
        buf += data
        if len(buf) > _MAX_HEAD_BYTES:
            raise InvalidHandshake("the handshake response is too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _check_upgrade(head: bytes, key: str) -> None:
    lines = head.decode("latin-1").split("\r\n")
    try:
        _, status, *reason = lines[0].split(" ", 2)
        code = int(status)
    except ValueError:
        raise InvalidHandshake(f"invalid status line {lines[0]!r}") from None
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    if code != 101:
        raise InvalidStatus(Response(code, reason[0] if reason else "", headers))
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    if headers.get("Sec-WebSocket-Accept") != accept:
        raise InvalidHandshake("the server's Sec-WebSocket-Accept does not match the key")
    if headers.get("Sec-WebSocket-Extensions"):
        raise InvalidHandshake("the server negotiated an extension the light client does not speak")
