"""A raw websockets client for the ElevenLabs-compatible routes, and decoders for every output format."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.g711 import alaw2lin, ulaw2lin


@dataclass
class ElReply:
    messages: list[dict[str, Any]]
    close_code: int | None

    def audio(self, context_id: str | None = None) -> bytes:
        return b"".join(base64.b64decode(m["audio"]) for m in self.messages
                        if m.get("audio") and m.get("contextId") == context_id)

    def finals(self) -> list[str | None]:
        return [m.get("contextId") for m in self.messages if m.get("isFinal") is True]

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "error" in m]


def el_url(base_url: str, voice: str, *, multi: bool = False, query: str = "") -> str:
    path = "multi-stream-input" if multi else "stream-input"
    url = f"{base_url.replace('http://', 'ws://', 1)}/v1/text-to-speech/{voice}/{path}"
    return f"{url}?{query}" if query else url


async def el_session(url: str, messages: list[dict[str, Any] | str | bytes], *, headers: dict[str, str] | None = None,
                     timeout_s: float = 30.0, pause_s: float = 0.0) -> ElReply:
    """Send ``messages`` (``pause_s`` apart), then read until the server closes."""
    received: list[dict[str, Any]] = []
    async with connect(url, max_size=2**24, additional_headers=headers or {}) as ws:
        with contextlib.suppress(ConnectionClosed):
            for m in messages:
                await ws.send(json.dumps(m) if isinstance(m, dict) else m)
                if pause_s:
                    await asyncio.sleep(pause_s)
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    raw = await ws.recv()
                    received.append(json.loads(raw))
        code = ws.close_code
    return ElReply(received, code)


def decode_audio(fmt: str, data: bytes) -> tuple[np.ndarray, int]:
    """Bytes of one output format -> (float32 mono samples, sample rate)."""
    codec, rate = fmt.split("_")[0], int(fmt.split("_")[1])
    if codec == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate
    if codec in ("ulaw", "alaw"):
        lin = ulaw2lin(np.frombuffer(data, np.uint8)) if codec == "ulaw" else alaw2lin(np.frombuffer(data, np.uint8))
        return lin.astype(np.float32) / 32768.0, rate
    import av

    container = av.open(io.BytesIO(data), format="mp3" if codec == "mp3" else "ogg")
    parts, out_rate = [], 0
    for frame in container.decode(audio=0):
        parts.append(frame.to_ndarray().reshape(-1).astype(np.float32))
        out_rate = frame.sample_rate
    container.close()
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), out_rate
