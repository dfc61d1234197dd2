"""``stream-tts bench --duration SECONDS``: a soak against a running server.

N clients (the first ``--clients`` level) speak paragraphs in a loop for ``--duration`` seconds;
each utterance is, with probability ``--disconnect-rate``, abandoned at a random moment (the client
drops the connection mid-turn). Every ``--sample-every`` seconds the server's ``/metrics`` is read:
RSS, open fds, asyncio tasks, threads, sessions, queued jobs, outbox bytes, event-loop lag. The
report gives the utterances' errors, underruns and TTFA, and the resources over time: memory growth
after the warm-up (median of the first three samples after ``--warmup`` against the median of the
last three), and first / last / max of fds, tasks and threads. JSON with every sample
(``--json``) and a PNG of the series (``--plot``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from stream_server.tools.bench_report import ClientResult, json_safe, summarize

# /metrics name -> (sample key, scale)
_SERIES = {
    "process_resident_memory_bytes": ("rss_mb", 1e-6),
    "process_open_fds": ("fds", 1.0),
    "stream_tts_asyncio_tasks": ("tasks", 1.0),
    "stream_tts_threads": ("threads", 1.0),
    "stream_tts_active_sessions": ("sessions", 1.0),
    "stream_tts_queued_jobs": ("queued_jobs", 1.0),
    "stream_tts_outbox_bytes": ("outbox_bytes", 1.0),
    "stream_tts_event_loop_lag_seconds_max": ("loop_lag_max_ms", 1000.0),
    "process_cpu_seconds_total": ("cpu_s", 1.0),
}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=float, default=0.0,
        help="soak for SECONDS instead of the levels: the first --clients level speaks in a loop",
    )
    p.add_argument(
        "--disconnect-rate", type=float, default=0.1,
        help="soak: fraction of utterances abandoned at a random moment (default 0.1)",
    )
    p.add_argument("--sample-every", type=float, default=5.0, help="soak: read /metrics every S seconds")
    p.add_argument(
        "--warmup", type=float, default=None,
        help="soak: seconds left out of the memory-growth figure (default 20%% of --duration, <= 60)",
    )


def metrics_url(ws_url: str) -> str:
    """``ws://HOST:PORT/v1/stream`` -> ``http://HOST:PORT/metrics``."""
    match = re.match(r"^(ws|wss)://([^/]+)", ws_url)
    if not match:
        raise ValueError(f"not a WebSocket URL: {ws_url!r}")
    scheme = "https" if match.group(1) == "wss" else "http"
    return f"{scheme}://{match.group(2)}/metrics"


def parse_metrics(text: str) -> dict[str, float]:
    """The soak's series from Prometheus text (missing ones are absent); ``errors`` sums all codes."""
    out: dict[str, float] = {}
    errors = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("stream_tts_errors_total{"):
            errors += float(value)
        elif name in _SERIES:
            key, scale = _SERIES[name]
            out[key] = float(value) * scale
    out["server_errors"] = errors
    return out


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_metrics(response.read().decode("utf-8"))


# --------------------------------------------------------------------------- clients


@dataclass
class SoakRun:
    results: list[ClientResult] = field(default_factory=list)
    disconnects: int = 0
    disconnect_errors: list[str] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)


async def _abandon(url: str, text: str, rng: random.Random, timeout_s: float) -> str | None:
    """Start an utterance and drop the connection at a random moment; an error string or None."""
    try:
        async with connect(url, open_timeout=timeout_s, close_timeout=1) as ws:
            await ws.send(json.dumps({"type": "start", "format": "opus"}))
            await ws.send(json.dumps({"type": "text", "text": text}))
            await ws.send(json.dumps({"type": "flush"}))
            with_end = asyncio.get_running_loop().time() + rng.uniform(0.0, 1.5)
            while asyncio.get_running_loop().time() < with_end:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.0, with_end - asyncio.get_running_loop().time()))
                except TimeoutError:
                    break
                if isinstance(raw, str) and json.loads(raw).get("type") == "error":
                    return f"error before the disconnect: {raw}"
            ws.transport.abort()  # no close handshake: the rudest way to leave
    except (OSError, TimeoutError, WebSocketException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _client(i: int, args: argparse.Namespace, texts: list[str], clients: int, stop_at: float,
                  run: SoakRun) -> None:
    from stream_server.tools.bench import run_client

    rng = random.Random(1000 + i)
    k = i
    await asyncio.sleep(0.05 * i)  # stagger the first turns a little
    while time.monotonic() < stop_at:
        idx = k % len(texts)
        k += clients
        if rng.random() < args.disconnect_rate:
            run.disconnects += 1
            error = await _abandon(args.url, texts[idx], rng, args.timeout)
            if error:
                run.disconnect_errors.append(error)
            continue
        run.results.append(await run_client(
            args.url, texts[idx], idx, clients, args.llm_rate, args.voice, args.timeout,
            args.prebuffer_ms, args.light,
        ))


async def _sampler(url: str, t0: float, every_s: float, stop: asyncio.Event, run: SoakRun) -> None:
    while True:
        try:
            sample = await asyncio.to_thread(_scrape, url)
        except OSError as exc:
            sample = {"scrape_error": 1.0}
            print(f"stream-tts bench: /metrics unreadable: {exc}", file=sys.stderr)
        sample["t_s"] = round(time.monotonic() - t0, 2)
        run.samples.append(sample)
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            continue


async def run_soak(args: argparse.Namespace) -> tuple[dict[str, Any], SoakRun]:
    from stream_server.tools.bench import BenchError, _probe, load_texts, parse_levels

    texts = load_texts(args.texts)
    clients = parse_levels(args.clients)[0]
    if not 0 <= args.disconnect_rate <= 1:
        raise BenchError("--disconnect-rate must be in 0..1")
    if args.sample_every <= 0:
        raise BenchError("--sample-every must be > 0")
    await _probe(args.url, args.timeout)
    url = metrics_url(args.url)
    try:
        await asyncio.to_thread(_scrape, url)
    except OSError as exc:
        raise BenchError(f"cannot read {url}: {exc}") from None
    run = SoakRun()
    t0 = time.monotonic()
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sampler(url, t0, args.sample_every, stop, run))
    await asyncio.gather(*(_client(i, args, texts, clients, t0 + args.duration, run) for i in range(clients)))
    await asyncio.sleep(min(5.0, args.sample_every))  # let the server settle, then the last sample
    stop.set()
    await sampler
    warmup = args.warmup if args.warmup is not None else min(60.0, 0.2 * args.duration)
    config = {
        "url": args.url, "clients": clients, "duration_s": args.duration, "warmup_s": warmup,
        "disconnect_rate": args.disconnect_rate, "llm_rate": args.llm_rate, "voice": args.voice,
        "texts": str(args.texts), "sample_every_s": args.sample_every, "prebuffer_ms": args.prebuffer_ms,
        "client_mode": "light" if args.light else "decode", "wall_s": round(time.monotonic() - t0, 1),
    }
    return config, run


# --------------------------------------------------------------------------- report


def _series(samples: list[dict[str, float]], key: str) -> list[float]:
    return [s[key] for s in samples if key in s]


def summarize_soak(config: dict[str, Any], run: SoakRun) -> dict[str, Any]:
    """Utterance figures and resource figures (pure: tested without a server)."""
    ok = [r for r in run.results if r.error is None]
    warm = [s for s in run.samples if s.get("t_s", 0.0) >= config["warmup_s"]] or run.samples
    summary: dict[str, Any] = {
        "client_mode": config["client_mode"],
        "utterances": len(run.results),
        "errors": len(run.results) - len(ok) + len(run.disconnect_errors),
        "error_examples": sorted({r.error for r in run.results if r.error} | set(run.disconnect_errors))[:5],
        "disconnects": run.disconnects,
        "underruns": sum(r.underruns for r in ok),
        "stall_ms": summarize([r.stall_ms for r in ok]),
        "server_ttfa_ms": summarize([r.server_ttfa_ms for r in ok if r.server_ttfa_ms is not None]),
        "client_ttfa_ms": summarize([r.client_ttfa_ms for r in ok if r.client_ttfa_ms is not None]),
        "audio_s": sum(r.audio_ms or 0.0 for r in ok) / 1000.0,
        "samples": len(run.samples),
    }
    rss = _series(warm, "rss_mb")
    if len(rss) >= 2:
        start, end = statistics.median(rss[:3]), statistics.median(rss[-3:])
        summary["rss_mb"] = {"after_warmup": start, "end": end, "max": max(_series(run.samples, "rss_mb"))}
        summary["rss_growth_pct"] = (end - start) / start * 100.0 if start else math.nan
    for key in ("fds", "tasks", "threads", "sessions", "loop_lag_max_ms", "queued_jobs"):
        values = _series(warm, key)
        if values:
            summary[key] = {"first": values[0], "last": values[-1], "max": max(values)}
    return summary


def format_soak(summary: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"

    s = summary
    lines = [
        f"soak ({s['client_mode']} client): {s['utterances']} utterances, {s['disconnects']} abandoned, "
        f"{s['errors']} errors, {s['underruns']} underruns (stall p99 {f(s['stall_ms']['p99'])} ms), "
        f"{f(s['audio_s'])} s of audio",
        f"server TTFA p50/p95/p99 ms: {f(s['server_ttfa_ms']['p50'])} / {f(s['server_ttfa_ms']['p95'])} / "
        f"{f(s['server_ttfa_ms']['p99'])}",
    ]
    if "rss_mb" in s:
        r = s["rss_mb"]
        lines.append(f"RSS MB after warm-up {f(r['after_warmup'])}, end {f(r['end'])}, max {f(r['max'])}: "
                     f"growth {s['rss_growth_pct']:+.2f} %")
    for key in ("fds", "tasks", "threads", "sessions", "loop_lag_max_ms"):
        if key in s:
            v = s[key]
            lines.append(f"{key}: first {f(v['first'])}, last {f(v['last'])}, max {f(v['max'])}")
    for example in s["error_examples"]:
        lines.append(f"error: {example}")
    return "\n".join(lines)


def write_soak_json(path: str | Path, config: dict[str, Any], summary: dict[str, Any], run: SoakRun) -> None:
    body = {"config": config, "summary": summary, "samples": run.samples,
            "results": [asdict(r) for r in run.results]}
    Path(path).write_text(json.dumps(json_safe(body), indent=2))


def write_soak_plot(path: str | Path, config: dict[str, Any], samples: list[dict[str, float]]) -> None:
    """PNG: RSS, fds, tasks and sessions, threads over time; the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("tasks", "asyncio tasks"), ("threads", "threads"))
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        pts = [(s["t_s"], s[key]) for s in samples if key in s]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
        if key == "tasks":
            sess = [(s["t_s"], s["sessions"]) for s in samples if "sessions" in s]
            if sess:
                ax.plot([p[0] for p in sess], [p[1] for p in sess], linestyle="--", label="sessions")
            ax.legend(fontsize=8)
        ax.axvspan(0, config["warmup_s"], color="grey", alpha=0.15)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("time (s)")
    fig.suptitle(f"soak: {config['clients']} clients, {config['duration_s']:g} s, {config['client_mode']} client")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from stream_server.tools.bench import BenchError

    try:
        config, soak = asyncio.run(run_soak(args))
    except BenchError as exc:
        print(f"stream-tts bench: {exc}", file=sys.stderr)
        return 1
    summary = summarize_soak(config, soak)
    print(format_soak(summary))
    if args.json:
        write_soak_json(args.json, config, summary, soak)
    if args.plot:
        write_soak_plot(args.plot, config, soak.samples)
    return 0 if summary["errors"] == 0 else 1
