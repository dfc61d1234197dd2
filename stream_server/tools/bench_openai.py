"""``stream-tts bench-openai``: time to first byte of ``POST /v1/audio/speech`` and encoder cost.

At each concurrency level and for each ``response_format``, N clients post the bench paragraphs
(``--rounds`` requests each, one after the other) and time the first body byte (request sent ->
first audio byte received) and the whole response. The same clients also open ``/v1/stream``
WebSocket sessions with the same texts (``stream-tts bench``'s client) so the table sets the HTTP
path's TTFB next to the WebSocket path's TTFA. The HTTP client is h11 (uvicorn's own HTTP/1.1
state machine) over asyncio streams, so the command needs nothing beyond the server's dependencies.

Encoder cost (``--encoder-cost``, on by default) is measured in-process: the bench paragraphs are
synthesized once with eSpeak, and each format's encoder encodes that PCM in the engine's chunks (the
server's: ``SpeechEncoder``, or for MP3 the engine workers' ``make_encoder("mp3")``); cost = encoding CPU time (of the encoding thread, so other load on the machine does not
count) / audio duration (median of ``--encoder-repeats`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from stream_server.tools.bench import (
    DEFAULT_TEXTS,
    BenchError,
    load_texts,
    parse_levels,
    run_client,
)
from stream_server.tools.bench_report import percentile


@dataclass
class SpeechResult:
    ttfb_ms: float = float("nan")
    total_ms: float = float("nan")
    body_bytes: int = 0
    error: str | None = None


async def http_request(base_url: str, method: str, target: str, body: dict[str, Any] | None,
                       api_key: str | None, timeout_s: float) -> SpeechResult:
    """One request; never raises for server trouble (the error is in the result)."""
    res = SpeechResult()
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", f"{host}:{port}"), ("Content-Type", "application/json"),
               ("Content-Length", str(len(payload))), ("Connection", "close")]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    conn = h11.Connection(our_role=h11.CLIENT)
    t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(conn.send(h11.Request(method=method, target=target, headers=headers)))
            writer.write(conn.send(h11.Data(data=payload)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if res.body_bytes == 0:
                        res.ttfb_ms = (time.perf_counter() - t0) * 1000.0
                    res.body_bytes += len(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            res.total_ms = (time.perf_counter() - t0) * 1000.0
            if status != 200:
                res.error = f"HTTP {status}"
    except (OSError, TimeoutError, h11.ProtocolError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
    return res


async def _http_level(args: argparse.Namespace, texts: list[str], clients: int, fmt: str) -> list[SpeechResult]:
    async def client(i: int) -> list[SpeechResult]:
        out = []
        for r in range(args.rounds):
            body = {"model": "tts-1", "voice": args.voice, "input": texts[(r * clients + i) % len(texts)],
                    "response_format": fmt}
            out.append(await http_request(args.url, "POST", "/v1/audio/speech", body, args.api_key,
                                          args.timeout))
        return out

    per_client = await asyncio.gather(*(client(i) for i in range(clients)))
    return [r for rs in per_client for r in rs]


async def _ws_level(args: argparse.Namespace, texts: list[str], clients: int) -> list[float]:
    ws_url = args.url.replace("http://", "ws://", 1).rstrip("/") + "/v1/stream"

    async def client(i: int) -> list[float]:
        out = []
        for r in range(args.rounds):
            k = (r * clients + i) % len(texts)
            voice = None if args.voice == "alloy" else args.voice
            res = await run_client(ws_url, texts[k], k, clients, 0.0, voice, args.timeout, 0.0)
            if res.error is None and res.client_ttfa_ms is not None:
                out.append(res.client_ttfa_ms)
        return out

    per_client = await asyncio.gather(*(client(i) for i in range(clients)))
    return [t for ts in per_client for t in ts]


def _row(label: str, clients: int, values: list[float], errors: int) -> dict[str, Any]:
    return {"path": label, "clients": clients, "n": len(values), "errors": errors,
            "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95)}


async def run_levels(args: argparse.Namespace) -> list[dict[str, Any]]:
    texts = load_texts(args.texts)
    probe = await http_request(args.url, "GET", "/healthz", None, None, args.timeout)
    if probe.error is not None:
        raise BenchError(f"{args.url}/healthz: {probe.error} (is the server up and warm?)")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    rows = []
    for clients in parse_levels(args.clients):
        for fmt in formats:
            results = await _http_level(args, texts, clients, fmt)
            ok = [r.ttfb_ms for r in results if r.error is None]
            rows.append(_row(f"http {fmt} ttfb", clients, ok, len(results) - len(ok)))
        if args.ws:
            ttfa = await _ws_level(args, texts, clients)
            rows.append(_row("ws opus ttfa", clients, ttfa, clients * args.rounds - len(ttfa)))
    return rows


def encoder_cost(texts: list[str], formats: list[str], repeats: int) -> dict[str, float]:
    """Encoding CPU time / audio time (percent) per format, on eSpeak speech of ``texts``."""
    from engine.base import SynthOptions
    from engine.codec import float_to_s16, make_encoder
    from engine.config import AudioConfig, EngineConfig
    from engine.factory import create_engine
    from stream_server.api.audio_encode import SPEECH_SAMPLE_RATE, SpeechEncoder

    engine, _ = create_engine(EngineConfig(engine="espeak"))
    audio = AudioConfig()
    floats = [c for text in texts for c in engine.synthesize(text, engine.default_voice, SynthOptions())]
    chunks = [float_to_s16(c).astype("<i2").tobytes() for c in floats]
    audio_s = sum(len(c) for c in floats) / engine.sample_rate
    out = {}
    for fmt in formats:
        runs = []
        for _ in range(repeats):
            t0 = time.thread_time()  # CPU time of this thread: the machine may be busy
            speech = SpeechEncoder(fmt, mp3_quality=audio.mp3_quality)  # (PCM at 22.05 kHz read as 24)
            if speech.session_format is not None:  # the server's engine workers encode this one
                worker = make_encoder(speech.session_format, SPEECH_SAMPLE_RATE, audio, engine.sample_rate,
                                      bitrate=speech.format.bit_rate)
                for f in floats:
                    worker.encode(f)
                worker.flush()
            else:
                for c in chunks:
                    speech.encode(c)
                speech.finish()
            runs.append(time.thread_time() - t0)
        out[fmt] = 100.0 * statistics.median(runs) / audio_s
    return out


def format_table(rows: list[dict[str, Any]], cost: dict[str, float]) -> str:
    lines = [f"{'path':<18} {'clients':>7} {'n':>4} {'err':>4} {'p50 ms':>8} {'p95 ms':>8}"]
    for r in rows:
        lines.append(f"{r['path']:<18} {r['clients']:>7} {r['n']:>4} {r['errors']:>4} "
                     f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f}")
    if cost:
        lines.append("")
        lines.append("encoder cost (CPU time, % of audio time): " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
    return "\n".join(lines)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8765", help="server base URL")
    p.add_argument("--clients", default="1,16", help="concurrency levels, e.g. 1,16")
    p.add_argument("--formats", default="pcm,mp3", help="response formats to time")
    p.add_argument("--rounds", type=int, default=5, help="requests per client per level and format")
    p.add_argument("--texts", default=str(DEFAULT_TEXTS), help="one paragraph per line")
    p.add_argument("--voice", default="alloy", help="voice (ours or an OpenAI name)")
    p.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--no-ws", dest="ws", action="store_false", help="skip the WebSocket comparison")
    p.add_argument("--encoder-cost", default="mp3,aac",
                   help="formats whose encoder cost to measure in-process ('' = skip)")
    p.add_argument("--encoder-repeats", type=int, default=3, help="encoder runs per format (median)")
    p.add_argument("--encoder-texts", type=int, default=5, help="paragraphs synthesized for the encoders")
    p.add_argument("--json", default=None, help="write the rows and costs to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        print("stream-tts bench-openai: --rounds must be >= 1", file=sys.stderr)
        return 1
    try:
        rows = asyncio.run(run_levels(args))
        cost_formats = [f.strip() for f in args.encoder_cost.split(",") if f.strip()]
        texts = load_texts(args.texts)[: args.encoder_texts]
        cost = encoder_cost(texts, cost_formats, args.encoder_repeats) if cost_formats else {}
    except BenchError as exc:
        print(f"stream-tts bench-openai: {exc}", file=sys.stderr)
        return 1
    print(format_table(rows, cost))
    if args.json:
        clean = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows]
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"rows": clean, "encoder_cost_pct": cost}, fh, indent=2)
    return 0 if all(r["errors"] == 0 for r in rows) else 1
