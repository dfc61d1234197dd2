"""``stream-tts bench``: TTFA / RTF / playback-underrun benchmark against a running server.

At each concurrency level, N clients open ``/v1/stream`` at once; each streams one paragraph (whole,
or token by token at an LLM-like rate), sends ``end``, receives Opus frames until ``done`` and the
close, then decodes them and simulates playback. Per level it reports, with p50/p90/p95/p99:

- client TTFA: first text sent -> first audio frame received;
- sentence TTFA: the moment the client's text completes the first segment (as decided by the
  chunker with the default ``ChunkerConfig``, the server's default; or ``end`` when no segment
  completes earlier) -> first audio frame;
- server TTFA (``done.ttfa_ms``), utterance and segment RTF (``done`` / ``segment_done``);
- playback underruns: playback starts when the first frame arrives and plays frames back to back;
  a frame that arrives after the moment it should start playing is an underrun (playback stalls
  until it arrives; the stall adds to ``stall_ms``).

Output: a printed table, optional JSON (``--json``) and a PNG of TTFA CDFs per level (``--plot``).
The statistics and report code are pure functions (unit-tested without a server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

from chunker import SentenceChunker
from engine.codec import OpusFrameDecoder

DEFAULT_TEXTS = Path(__file__).parent / "data" / "bench_texts.txt"
PERCENTILES = (50, 90, 95, 99)
_CJK = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
# LLM-like tokens: a CJK character, or a run of other non-space characters, with leading spaces
_TOKEN = re.compile(rf"\s*(?:[{_CJK}]|[^\s{_CJK}]+)|\s+$")


class BenchError(Exception):
    """The benchmark cannot run (bad URL, server unreachable, no texts); one-line message."""


# --------------------------------------------------------------------------- pure statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float]:
    """n, mean, max and p50/p90/p95/p99 of ``values`` (NaN where empty)."""
    out: dict[str, float] = {"n": len(values)}
    out["mean"] = sum(values) / len(values) if values else math.nan
    out["max"] = max(values) if values else math.nan
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    return out


class Playback(NamedTuple):
    underruns: int  # frames that arrived after they should have started playing
    stall_s: float  # total time playback waited for them
    at_s: list[float]  # audio position (s of audio played before) of each underrun


def simulate_playback(
    arrivals_s: list[float], durations_s: list[float], prebuffer_s: float = 0.0
) -> Playback:
    """Play frames back to back, starting ``prebuffer_s`` after the first one arrives; a frame
    that is not there when it is due stalls playback until it arrives."""
    if len(arrivals_s) != len(durations_s):
        raise ValueError("arrivals and durations must have the same length")
    if not arrivals_s:
        return Playback(0, 0.0, [])
    clock = arrivals_s[0] + prebuffer_s  # when the next frame is due to start playing
    stall, position, at = 0.0, 0.0, []
    for arrival, duration in zip(arrivals_s, durations_s, strict=True):
        if arrival > clock + 1e-9:  # 1 ns: only float rounding of the running clock is forgiven
            at.append(position)
            stall += arrival - clock
            clock = arrival
        clock += duration
        position += duration
    return Playback(len(at), stall, at)


def split_tokens(text: str) -> list[str]:
    """LLM-like tokens (words with their leading space, single CJK characters); they join back to
    ``text`` exactly."""
    tokens = _TOKEN.findall(text)
    return tokens if "".join(tokens) == text else list(text)


# --------------------------------------------------------------------------- one client


@dataclass
class ClientResult:
    """One utterance as one client saw it. Times in ms; None when not measured."""

    clients: int
    text_index: int
    client_ttfa_ms: float | None = None
    sentence_ttfa_ms: float | None = None
    server_ttfa_ms: float | None = None
    rtf: float | None = None
    segment_rtfs: list[float] = field(default_factory=list)
    audio_ms: float | None = None  # done.audio_ms
    decoded_ms: float = 0.0  # duration of the decoded Opus frames
    frames: int = 0
    underruns: int = 0
    stall_ms: float = 0.0
    underrun_at_ms: list[float] = field(default_factory=list)  # audio positions, first 20
    wall_ms: float = 0.0
    error: str | None = None


async def run_client(
    url: str,
    text: str,
    text_index: int,
    clients: int,
    llm_rate: float,
    voice: str | None,
    timeout_s: float,
    prebuffer_ms: float,
) -> ClientResult:
    """Stream one text through one session and measure it (never raises for server trouble)."""
    res = ClientResult(clients=clients, text_index=text_index)
    arrivals: list[float] = []
    packets: list[bytes] = []
    t_first_text = t_sentence = math.nan
    t0 = time.perf_counter()
    try:
        async with connect(url, max_size=2**22, open_timeout=timeout_s) as ws:
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
                    if msg.get("type") == "segment_done" and msg.get("rtf") is not None:
                        res.segment_rtfs.append(float(msg["rtf"]))
                    elif msg.get("type") == "done":
                        res.server_ttfa_ms = msg.get("ttfa_ms")
                        res.rtf = msg.get("rtf")
                        res.audio_ms = msg.get("audio_ms")
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
                if res.audio_ms is None and res.error is None:
                    res.error = "the server closed the session without a done message"
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
    except (OSError, TimeoutError, WebSocketException, json.JSONDecodeError) as exc:
        res.error = res.error or f"{type(exc).__name__}: {exc}"
    res.wall_ms = (time.perf_counter() - t0) * 1000.0
    res.frames = len(packets)
    if arrivals:
        res.client_ttfa_ms = (arrivals[0] - t_first_text) * 1000.0
        res.sentence_ttfa_ms = (arrivals[0] - t_sentence) * 1000.0
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


# --------------------------------------------------------------------------- levels and report


def summarize_level(clients: int, results: list[ClientResult]) -> dict[str, Any]:
    """Aggregate one concurrency level (errored clients counted, not measured)."""
    ok = [r for r in results if r.error is None]

    def values(name: str) -> list[float]:
        return [float(getattr(r, name)) for r in ok if getattr(r, name) is not None]

    return {
        "clients": clients,
        "utterances": len(results),
        "errors": len(results) - len(ok),
        "client_ttfa_ms": summarize(values("client_ttfa_ms")),
        "sentence_ttfa_ms": summarize(values("sentence_ttfa_ms")),
        "server_ttfa_ms": summarize(values("server_ttfa_ms")),
        "rtf": summarize(values("rtf")),
        "segment_rtf": summarize([x for r in ok for x in r.segment_rtfs]),
        "underruns": {**summarize(values("underruns")), "total": sum(r.underruns for r in ok)},
        "stall_ms": summarize(values("stall_ms")),
        "audio_s": sum(r.decoded_ms for r in ok) / 1000.0,
        "results": [asdict(r) for r in results],
    }


def _fmt(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3f}"


def format_table(levels: list[dict[str, Any]]) -> str:
    """The printed report: one row per concurrency level."""
    head = (
        f"{'clients':>7} {'utts':>5} {'err':>4} | {'client TTFA ms p50/p90/p99':>26} | "
        f"{'sentence TTFA p50/p90/p99':>25} | {'server TTFA p50/p95/p99':>23} | "
        f"{'RTF p50/p90':>13} | {'underruns':>9} {'stall ms p99':>12}"
    )
    rows = [head, "-" * len(head)]

    def trio(s: dict[str, float], qs: tuple[int, ...]) -> str:
        return "/".join(_fmt(s[f"p{q}"]) for q in qs)

    for lv in levels:
        rows.append(
            f"{lv['clients']:>7} {lv['utterances']:>5} {lv['errors']:>4} | "
            f"{trio(lv['client_ttfa_ms'], (50, 90, 99)):>26} | "
            f"{trio(lv['sentence_ttfa_ms'], (50, 90, 99)):>25} | "
            f"{trio(lv['server_ttfa_ms'], (50, 95, 99)):>23} | "
            f"{trio(lv['rtf'], (50, 90)):>13} | "
            f"{lv['underruns']['total']:>9} {_fmt(lv['stall_ms']['p99']):>12}"
        )
    return "\n".join(rows)


def write_json(path: str | Path, config: dict[str, Any], levels: list[dict[str, Any]]) -> None:
    """Write the full report (config, per-level summaries and per-utterance results); NaN -> null."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and math.isnan(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    Path(path).write_text(json.dumps(clean({"config": config, "levels": levels}), indent=2))


def write_plot(path: str | Path, levels: list[dict[str, Any]]) -> None:
    """PNG of TTFA CDFs, one colour per level: client TTFA (solid), first-sentence TTFA (dotted,
    when streaming tokens) and server TTFA (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    curves = (
        ("client_ttfa_ms", "-", "client"),
        ("sentence_ttfa_ms", ":", "first sentence"),
        ("server_ttfa_ms", "--", "server"),
    )
    for i, lv in enumerate(levels):
        colour = f"C{i % 10}"
        ok = [r for r in lv["results"] if r["error"] is None]
        for key, style, label in curves:
            xs = sorted(r[key] for r in ok if r[key] is not None)
            if not xs or (
                key == "sentence_ttfa_ms"
                and all(r["sentence_ttfa_ms"] == r["client_ttfa_ms"] for r in ok)
            ):
                continue  # whole-text mode: the sentence curve is the client curve
            ys = [0.0] + [(k + 1) / len(xs) for k in range(len(xs))]
            ax.step(
                [xs[0]] + xs,
                ys,
                where="post",
                linestyle=style,
                color=colour,
                label=f"{lv['clients']} clients: {label}",
            )
    if ax.lines:
        ax.set_xscale("log")  # TTFAs span single milliseconds to seconds (token streaming)
    ax.set_xlabel("TTFA (ms, log scale)")
    ax.set_ylabel("fraction of utterances")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Time to first audio, CDF per concurrency level")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def run(args: argparse.Namespace) -> int:
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
