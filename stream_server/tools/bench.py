"""``stream-tts bench``: TTFA / RTF / playback-underrun benchmark against a running server.

At each concurrency level, N clients open ``/v1/stream`` at once; each streams one paragraph (whole,
or token by token at an LLM-like rate), sends ``end``, receives Opus frames until ``done`` and the
close, then decodes them and simulates playback. Per level it reports, with p50/p90/p95/p99:

- client TTFA: first text sent -> first audio frame received;
- sentence TTFA: the moment the client's text completes the first segment (as decided by the
  chunker with the default ``ChunkerConfig``, the server's default; or ``end`` when no segment
  completes earlier) -> first audio frame;
- server TTFA (``done.ttfa_ms``), utterance and segment RTF (``done`` / ``segment_done``);
- refusals: sessions or turns the server refused (``overloaded``, ``over_capacity``: admission
  control), counted apart from errors and not measured;
- playback underruns: playback starts when the first frame arrives and plays frames back to back;
  a frame that arrives after the moment it should start playing is an underrun (playback stalls
  until it arrives; the stall adds to ``stall_ms``).

Output: a printed table, optional JSON (``--json``) and a PNG of TTFA CDFs per level (``--plot``).
``--light``: the client counts packets and times them without decoding Opus (each packet is one
frame of ``frame_ms``) and speaks WebSocket through ``light_ws`` (frames cut out of large socket
reads, ws:// only), so it costs the server little CPU when both share a machine; the report
says which client mode ran. ``--duration SECONDS``: a soak instead of levels (``tools.soak``).
This module is the client side; the statistics, playback simulation and report are pure functions
in ``bench_report`` (unit-tested without a server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from chunker import SentenceChunker
from engine.codec import OpusFrameDecoder
from stream_server.tools.bench_report import (
    ClientResult,
    format_table,
    simulate_playback,
    summarize_level,
    write_json,
    write_plot,
)
from stream_server.tools.light_ws import LightWebSocket

DEFAULT_TEXTS = Path(__file__).parent.parent / "data" / "bench_texts.txt"
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
# LLM-like tokens: a CJK character, or a run of other non-space characters, with leading spaces
_TOKEN = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)|\s+$")


# the server refused the session or turn (max_sessions / admission control): counted as refusals
REFUSAL_CODES = frozenset({"overloaded", "over_capacity"})


class BenchError(Exception):
    """The benchmark cannot run (bad URL, server unreachable, no texts); one-line message."""


# --------------------------------------------------------------------------- one client


def split_tokens(text: str) -> list[str]:
    """LLM-like tokens (words with their leading space, single CJK characters); they join back to
    ``text`` exactly."""
    tokens = _TOKEN.findall(text)
    return tokens if "".join(tokens) == text else list(text)


async def run_client(
    url: str,
    text: str,
    text_index: int,
    clients: int,
    llm_rate: float,
    voice: str | None,
    timeout_s: float,
    prebuffer_ms: float,
    light: bool = False,
) -> ClientResult:
    """Stream one text through one session and measure it (never raises for server trouble)."""
    res = ClientResult(clients=clients, text_index=text_index)
    arrivals: list[float] = []
    packets: list[bytes] = []
    t_first_text = t_sentence = math.nan
    frame_ms = 20.0  # from `ready`
    t0 = time.perf_counter()
    # the light client parses frames itself (``light_ws``): far less client CPU on a shared box
    conn = (LightWebSocket.connect(url, timeout_s=timeout_s) if light
            else connect(url, max_size=2**22, open_timeout=timeout_s))
    try:
        async with conn as ws:
            start: dict[str, Any] = {"type": "start", "format": "opus", "sample_rate": 24000}
            if voice:
                start["voice"] = voice
            await ws.send(json.dumps(start))

            async def read() -> None:
                async for raw in ws:
                    now = time.perf_counter()
                    if isinstance(raw, bytes):
                        arrivals.append(now)
                        packets.append(raw)
                        continue
                    msg = json.loads(raw)
                    if msg.get("type") == "ready":
                        nonlocal frame_ms
                        frame_ms = float(msg.get("frame_ms", frame_ms))
                    elif msg.get("type") == "segment_done" and msg.get("rtf") is not None:
                        res.segment_rtfs.append(float(msg["rtf"]))
                    elif msg.get("type") == "done":
                        res.server_ttfa_ms = msg.get("ttfa_ms")
                        res.rtf = msg.get("rtf")
                        res.audio_ms = msg.get("audio_ms")
                    elif msg.get("type") == "error" and msg.get("code") in REFUSAL_CODES:
                        res.refused = res.refused or str(msg.get("code"))
                    elif msg.get("type") == "error" and res.error is None:
                        res.error = f"{msg.get('code')}: {msg.get('message')}"

            reader = asyncio.create_task(read())
            try:
                chunker = SentenceChunker()
                tokens = split_tokens(text) if llm_rate > 0 else [text]
                t_send0 = time.perf_counter()
                for i, token in enumerate(tokens):
                    if llm_rate > 0:  # absolute schedule, so send delays do not accumulate
                        await asyncio.sleep(max(0.0, t_send0 + i / llm_rate - time.perf_counter()))
                    await ws.send(json.dumps({"type": "text", "text": token}))
                    now = time.perf_counter()
                    if i == 0:
                        t_first_text = now
                    if math.isnan(t_sentence) and chunker.push(token):
                        t_sentence = now
                await ws.send(json.dumps({"type": "end"}))
                if math.isnan(t_sentence):
                    t_sentence = time.perf_counter()  # end flushes the only sentence
                await asyncio.wait_for(asyncio.shield(reader), timeout_s)
                if res.audio_ms is None and res.error is None and res.refused is None:
                    res.error = "the server closed the session without a done message"
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
    except (OSError, TimeoutError, WebSocketException, json.JSONDecodeError) as exc:
        rcvd = getattr(exc, "rcvd", None)  # a refused session is closed with 1013 and its code
        if res.refused is None and rcvd is not None and rcvd.reason in REFUSAL_CODES:
            res.refused = rcvd.reason
        if res.refused is None:
            res.error = res.error or f"{type(exc).__name__}: {exc}"
    res.wall_ms = (time.perf_counter() - t0) * 1000.0
    res.frames = len(packets)
    if arrivals:
        res.client_ttfa_ms = (arrivals[0] - t_first_text) * 1000.0
        res.sentence_ttfa_ms = (arrivals[0] - t_sentence) * 1000.0
        if light:  # one Opus packet = one frame: count, do not decode
            durations = [frame_ms / 1000.0] * len(packets)
        else:
            decoder = OpusFrameDecoder(24000)
            try:
                durations = [decoder.decode(p).shape[0] / 24000 for p in packets]
            except ValueError as exc:  # a corrupt packet: report it, measure nothing more
                res.error = res.error or f"undecodable audio frame: {exc}"
                return res
        res.decoded_ms = sum(durations) * 1000.0
        played = simulate_playback(arrivals, durations, prebuffer_ms / 1000.0)
        res.underruns, res.stall_ms = played.underruns, played.stall_s * 1000.0
        res.underrun_at_ms = [round(t * 1000.0, 1) for t in played.at_s[:20]]
    return res


# --------------------------------------------------------------------------- CLI


def load_texts(path: str | Path) -> list[str]:
    """Paragraphs, one per line; blank lines and ``#`` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read texts file {path}: {exc.strerror}") from exc
    texts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not texts:
        raise BenchError(f"texts file {path} has no text lines")
    return texts


def parse_levels(spec: str) -> list[int]:
    try:
        levels = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise BenchError(
            f"--clients must be a comma-separated list of integers, got {spec!r}"
        ) from None
    if not levels or any(n < 1 or n > 1000 for n in levels):
        raise BenchError(f"--clients values must be 1..1000, got {spec!r}")
    return levels


async def _probe(url: str, timeout_s: float) -> None:
    if not re.match(r"^wss?://[^/\s]+", url):
        raise BenchError(f"--url must look like ws://HOST:PORT/v1/stream, got {url!r}")
    try:
        async with connect(url, open_timeout=timeout_s):
            pass
    except InvalidURI as exc:
        raise BenchError(f"invalid --url {url!r}: {exc}") from None
    except InvalidHandshake as exc:
        raise BenchError(f"{url} refused the WebSocket handshake: {exc}") from None
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise BenchError(f"cannot connect to {url}: {reason}") from None


async def run_bench(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every level; returns (config, level summaries)."""
    texts = load_texts(args.texts)
    levels_spec = parse_levels(args.clients)
    if args.rounds < 1:
        raise BenchError("--rounds must be >= 1")
    if args.llm_rate < 0:
        raise BenchError("--llm-rate must be >= 0")
    if args.light and not args.url.startswith("ws://"):
        raise BenchError("--light speaks ws:// only (no TLS); drop --light for wss://")
    await _probe(args.url, args.timeout)
    levels = []
    for clients in levels_spec:
        results: list[ClientResult] = []
        for rnd in range(args.rounds):
            picks = [(rnd * clients + i) % len(texts) for i in range(clients)]
            results += await asyncio.gather(
                *(
                    run_client(
                        args.url,
                        texts[k],
                        k,
                        clients,
                        args.llm_rate,
                        args.voice,
                        args.timeout,
                        args.prebuffer_ms,
                        args.light,
                    )
                    for k in picks
                )
            )
        levels.append(summarize_level(clients, results))
    config = {
        "url": args.url,
        "clients": levels_spec,
        "rounds": args.rounds,
        "llm_rate": args.llm_rate,
        "voice": args.voice,
        "texts": str(args.texts),
        "n_texts": len(texts),
        "prebuffer_ms": args.prebuffer_ms,
        "client_mode": "light" if args.light else "decode",
    }
    return config, levels


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream", help="server WebSocket URL")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels, e.g. 1,4,16")
    p.add_argument("--texts", default=str(DEFAULT_TEXTS), help="one paragraph per line")
    p.add_argument(
        "--llm-rate",
        type=float,
        default=0.0,
        help="stream text at TOKENS_PER_S like an LLM (0 = send each text whole)",
    )
    p.add_argument("--rounds", type=int, default=1, help="utterances per client per level")
    p.add_argument("--voice", default=None, help="voice name (default: the server's)")
    p.add_argument(
        "--prebuffer-ms",
        type=float,
        default=0.0,
        help="simulated player buffers this long after the first frame (default 0)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per-session timeout in seconds")
    p.add_argument("--json", default=None, help="write the full report to this JSON file")
    p.add_argument("--plot", default=None, help="write TTFA CDFs to this PNG file")
    p.add_argument(
        "--light", action="store_true",
        help="count and time Opus packets without decoding them (little client CPU on a shared box)",
    )
    from stream_server.tools import soak  # soak flags (--duration ...), in their own module

    soak.configure_parser(p)


def run(args: argparse.Namespace) -> int:
    if args.duration > 0:
        from stream_server.tools import soak

        return soak.run(args)
    try:
        config, levels = asyncio.run(run_bench(args))
    except BenchError as exc:
        print(f"stream-tts bench: {exc}", file=sys.stderr)
        return 1
    print(format_table(levels))
    if args.json:
        write_json(args.json, config, levels)
    if args.plot:
        write_plot(args.plot, levels)
    return 0 if all(lv["errors"] == 0 for lv in levels) else 1
