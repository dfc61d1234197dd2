"""Run the real server in-process for tests, plus a tiny WebSocket client and a fake engine.

    with running_server(config, engine) as url:          # "http://127.0.0.1:PORT"
        messages, frames = asyncio.run(collect(ws_url(url), [{"type": "text", "text": "Hi."}, {"type": "end"}]))

``running_server`` starts uvicorn (ws="websockets-sansio") on 127.0.0.1 port 0 in a background
thread, waits until ``/healthz`` answers 200, and stops it cleanly (thread joined) on exit.
``engine=None`` lets the app create its engine from ``config.engine`` (eSpeak on a CPU machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.base import Engine, SynthOptions, UnknownVoiceError, VoiceInfo
from stream_server.app import build_server, create_app
from stream_server.config import AppConfig, ServerConfig


class SineBurstEngine:
    """Deterministic fake engine: each character of text becomes ``ms_per_char`` of a sine tone.

    Voices "low" (220 Hz) and "high" (880 Hz); chunks of ``chunk_ms``. ``delay_s`` sleeps per chunk
    (to make in-flight work observable), ``warmup_s`` sleeps in ``warmup``. Records every call.
    """

    name = "sine"
    sample_rate = 24000
    device = "cpu"
    default_voice = "low"
    FREQS = {"low": 220.0, "high": 880.0}

    def __init__(self, *, ms_per_char: float = 10.0, chunk_ms: float = 60.0, delay_s: float = 0.0,
                 warmup_s: float = 0.0) -> None:
        self.ms_per_char = ms_per_char
        self.chunk_ms = chunk_ms
        self.delay_s = delay_s
        self.warmup_s = warmup_s
        self.calls: list[tuple[str, str]] = []
        self.fast_starts: list[bool] = []  # the fast_start hint of each call
        self.closed: list[str] = []  # texts whose generator was closed before the end

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("low", "xx", "220 Hz"), VoiceInfo("high", "xx", "880 Hz")]

    def samples_for(self, text: str, speed: float = 1.0) -> int:
        return round(len(text) * self.ms_per_char / 1000.0 / speed * self.sample_rate)

    def synthesize(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> Iterator[np.ndarray]:
        if voice not in self.FREQS:
            raise UnknownVoiceError(f"unknown voice {voice!r}")
        options.validate()
        self.calls.append((text, voice))
        self.fast_starts.append(fast_start)
        n = self.samples_for(text, options.speed)
        t = np.arange(n, dtype=np.float64) / self.sample_rate
        audio = (0.5 * np.sin(2 * np.pi * self.FREQS[voice] * t)).astype(np.float32)
        step = max(1, round(self.chunk_ms / 1000.0 * self.sample_rate))
        finished = False
        try:
            for i in range(0, n, step):
                if self.delay_s:
                    time.sleep(self.delay_s)
                yield audio[i : i + step]
            finished = True
        finally:
            if not finished:
                self.closed.append(text)

    def warmup(self) -> float:
        time.sleep(self.warmup_s)
        return self.warmup_s


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/v1/stream"


def make_config(**server: Any) -> AppConfig:
    """AppConfig with ServerConfig overrides (port 0 by default)."""
    server.setdefault("port", 0)
    return AppConfig(server=ServerConfig(**server))


@contextmanager
def running_server(config: AppConfig | None = None, engine: Engine | None = None,
                   *, wait_healthy: bool = True, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve the app on 127.0.0.1, port 0; yield ``"http://127.0.0.1:PORT"``.

    ``wait_healthy=False`` yields as soon as the socket is bound (``/healthz`` may still be 503).
    """
    config = config or AppConfig()
    with serve_app(create_app(config, engine), config, wait_healthy=wait_healthy, timeout_s=timeout_s) as url:
        yield url


@contextmanager
def serve_app(app: FastAPI, config: AppConfig | None = None, *, wait_healthy: bool = True,
              timeout_s: float = 60.0) -> Iterator[str]:
    """Like ``running_server`` for an app the test built itself (to inspect ``app.state.hub``)."""
    config = config or AppConfig()
    # gc_freeze off: in the test process it would pin whatever earlier tests left for the GC
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, host="127.0.0.1", port=0,
                                                                    gc_freeze=False))
    server = build_server(app, config, log_config=None)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("server failed to start (see the log)")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        if wait_healthy:
            with httpx.Client(timeout=5.0) as client:
                while client.get(url + "/healthz").status_code != 200:
                    if time.monotonic() > deadline:
                        raise TimeoutError("/healthz did not turn 200")
                    time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        if thread.is_alive():
            raise RuntimeError("server thread did not stop")


@dataclasses.dataclass
class Collected:
    messages: list[dict[str, Any]]  # JSON messages in arrival order
    frames: list[bytes]  # binary audio frames in arrival order
    events: list[tuple[str, Any]]  # ("json", msg) / ("audio", bytes), interleaved in arrival order
    close_code: int | None

    def assert_segment_order(self) -> None:
        """Each segment's ``segment`` message precedes its audio; its ``segment_done`` follows it."""
        current = None
        for kind, value in self.events:
            if kind == "audio":
                assert current is not None, "audio before any segment message"
            elif value["type"] == "segment":
                current = value["index"]
            elif value["type"] == "segment_done":
                assert value["index"] == current


async def collect(url: str, messages: list[dict[str, Any] | str | bytes], *,
                  until_close: bool = True, timeout_s: float = 30.0) -> Collected:
    """Send ``messages`` (dicts as JSON, str as raw text, bytes as binary) then read until the
    server closes the socket; returns everything received."""
    events: list[tuple[str, Any]] = []
    async with connect(url, max_size=2**22) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may close before we are done
            for m in messages:
                await ws.send(json.dumps(m) if isinstance(m, dict) else m)
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(ConnectionClosed):  # closes other than 1000 raise here
                while True:
                    raw = await ws.recv()
                    if isinstance(raw, bytes):
                        events.append(("audio", raw))
                    else:
                        events.append(("json", json.loads(raw)))
                    if not until_close and events[-1][0] == "json" and events[-1][1]["type"] in ("done", "error"):
                        break
        close_code = ws.close_code if until_close else None
    return Collected(
        messages=[e[1] for e in events if e[0] == "json"],
        frames=[e[1] for e in events if e[0] == "audio"],
        events=events,
        close_code=close_code,
    )


async def poll_until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 20.0,
                     interval_s: float = 0.02) -> None:
    """Await until ``predicate()`` is true (state owned by another thread); TimeoutError if never."""
    for _ in range(max(1, int(timeout_s / interval_s))):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval_s)
    raise TimeoutError("condition not reached")
