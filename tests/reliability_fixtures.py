"""Helpers for the fault tests: a server we can signal, a server process, a raw WebSocket client,
and readers for ``/metrics`` and the process's file descriptors.

    with served(make_config(), SineBurstEngine()) as (url, server, app): ...   # in-process
    with ServerProcess(["--drain-timeout-s", "3"]) as proc: proc.url, proc.popen  # python -m stream_server
    ws = await RawWebSocket.open(url); await ws.send_frame(OP_TEXT, b"{}"); await ws.read_until_close()
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from engine.base import Engine
from stream_server.app import StreamServer, build_server, create_app
from stream_server.config import AppConfig

ROOT = Path(__file__).resolve().parents[1]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# --------------------------------------------------------------------------- servers


@contextmanager
def served(config: AppConfig, engine: Engine | None = None,
           timeout_s: float = 60.0) -> Iterator[tuple[str, StreamServer, FastAPI]]:
    """Like ``server_fixtures.serve_app`` but yields the uvicorn server too (to signal it)."""
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, host="127.0.0.1", port=0))
    app = create_app(config, engine)
    server = build_server(app, config, log_config=None)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        with httpx.Client(timeout=5.0) as client:
            while client.get(url + "/healthz").status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("/healthz did not turn 200")
                time.sleep(0.02)
        yield url, server, app
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError("server thread did not stop")


class ServerProcess:
    """``python -m stream_server serve --engine espeak --port 0 ARGS`` in a child process.

    ``url`` is read from the ready log line; ``lines`` collects the log.
    """

    def __init__(self, args: list[str], timeout_s: float = 120.0) -> None:
        self.args = args
        self.timeout_s = timeout_s
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "stream_server", "serve", "--engine", "espeak", "--port", "0",
               "--log-level", "info", *self.args]
        self.popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        self._log_thread = threading.Thread(target=self._read_log, daemon=True)
        self._log_thread.start()
        if not self._ready.wait(self.timeout_s) or not self.url:
            self.popen.kill()
            raise RuntimeError("server process not ready:\n" + "".join(self.lines[-30:]))
        return self

    def _read_log(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line)
            match = re.search(r"stream-tts ready at (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def signal(self, sig: signal.Signals) -> float:
        """Send ``sig``; returns the monotonic time it was sent."""
        self.popen.send_signal(sig)
        return time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._log_thread.join(10)
        assert self.popen.stderr is not None
        self.popen.stderr.close()


# --------------------------------------------------------------------------- raw WebSocket


class RawWebSocket:
    """A WebSocket client that writes any frame it is told to (bad UTF-8, fragments, bad opcodes).

    Client frames are masked (as RFC 6455 requires) unless ``mask=False``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, path: str = "/v1/stream") -> RawWebSocket:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise ConnectionError(f"upgrade refused: {head[:80]!r}")
        return cls(reader, writer)

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
                         rsv: int = 0) -> None:
        first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask_fast(payload, key)
            self.writer.write(head + key + masked)
        else:
            self.writer.write(head + payload)
        await self.writer.drain()

    async def send_json(self, obj: Any) -> None:
        await self.send_frame(OP_TEXT, json.dumps(obj).encode())

    async def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (whole, the server does not fragment)."""
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return b0 & 0xF, await self.reader.readexactly(n)

    async def read_until_close(self, timeout_s: float = 20.0) -> tuple[list[dict[str, Any]], int, int | None]:
        """(JSON messages, audio frame count, close code or None when the TCP connection just ended)."""
        messages: list[dict[str, Any]] = []
        frames = 0
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    opcode, payload = await self.recv_frame()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return messages, frames, None
                if opcode == OP_TEXT:
                    messages.append(json.loads(payload))
                elif opcode == OP_BINARY:
                    frames += 1
                elif opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    with _suppress_conn():
                        await self.send_frame(OP_CLOSE, payload[:2])
                    await self.aclose()
                    return messages, frames, code

    async def aclose(self) -> None:
        """Close the TCP connection and wait until it is closed (no transport left for the GC)."""
        self.writer.close()
        with _suppress_conn():
            await self.writer.wait_closed()


def _mask_fast(payload: bytes, key: bytes) -> bytes:
    import numpy as np

    data = np.frombuffer(payload, np.uint8)
    keys = np.resize(np.frombuffer(key, np.uint8), data.shape[0])
    return (data ^ keys).tobytes()


@contextmanager
def _suppress_conn() -> Iterator[None]:
    try:
        yield
    except (ConnectionError, OSError):
        pass


# --------------------------------------------------------------------------- observing the server


async def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value} (comments skipped)."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        text = (await client.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def fd_count() -> int:
    """Open file descriptors of this process (Linux)."""
    return len(os.listdir("/proc/self/fd"))

