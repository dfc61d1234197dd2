"""The soak (``stream-tts bench --duration``): metrics parsing, the summary, and a short run against
the real server with the light client."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from stream_server.tools import bench
from stream_server.tools.bench_report import ClientResult
from stream_server.tools.soak import (
    SoakRun,
    format_soak,
    metrics_url,
    parse_metrics,
    summarize_soak,
)
from tests.server_fixtures import SineBurstEngine, make_config, running_server, ws_url


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.configure_parser(p)
    return p.parse_args(list(argv))


def test_metrics_url_and_parse() -> None:
    assert metrics_url("ws://127.0.0.1:8765/v1/stream") == "http://127.0.0.1:8765/metrics"
    assert metrics_url("wss://tts.example/v1/stream") == "https://tts.example/metrics"
    text = "\n".join([
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "process_resident_memory_bytes 2.5e+08",
        "process_open_fds 17.0",
        "stream_tts_asyncio_tasks 9.0",
        "stream_tts_event_loop_lag_seconds_max 0.012",
        'stream_tts_errors_total{code="busy"} 2.0',
        'stream_tts_errors_total{code="invalid_json"} 1.0',
    ])
    got = parse_metrics(text)
    assert got["rss_mb"] == 250.0 and got["fds"] == 17 and got["tasks"] == 9
    assert got["loop_lag_max_ms"] == pytest.approx(12.0) and got["server_errors"] == 3


def _sample(t: float, rss: float, fds: float = 20) -> dict[str, float]:
    return {"t_s": t, "rss_mb": rss, "fds": fds, "tasks": 10, "threads": 2, "sessions": 4}


def test_summary_measures_growth_after_the_warmup_only() -> None:
    run = SoakRun(
        results=[ClientResult(clients=4, text_index=0, server_ttfa_ms=50.0, underruns=0),
                 ClientResult(clients=4, text_index=1, server_ttfa_ms=70.0, underruns=2),
                 ClientResult(clients=4, text_index=2, error="TimeoutError: ")],
        disconnects=3,
        samples=[_sample(0, 100), _sample(5, 180), _sample(10, 200), _sample(15, 200), _sample(20, 202),
                 _sample(25, 204), _sample(30, 206), _sample(35, 210, fds=25)],
    )
    config = {"warmup_s": 10.0, "client_mode": "light"}
    s = summarize_soak(config, run)
    assert (s["utterances"], s["errors"], s["disconnects"], s["underruns"]) == (3, 1, 3, 2)
    assert s["rss_mb"]["after_warmup"] == 200 and s["rss_mb"]["end"] == 206  # medians of 3
    assert s["rss_growth_pct"] == pytest.approx(3.0)
    assert s["fds"] == {"first": 20, "last": 25, "max": 25}
    assert s["server_ttfa_ms"]["p50"] == 60.0
    table = format_soak(s)
    assert "light client" in table and "growth +3.00 %" in table and "TimeoutError" in table


def test_summary_without_samples_or_results() -> None:
    s = summarize_soak({"warmup_s": 0.0, "client_mode": "decode"}, SoakRun())
    assert s["utterances"] == 0 and "rss_mb" not in s and math.isnan(s["server_ttfa_ms"]["p50"])
    assert "decode client" in format_soak(s)


def test_a_short_light_soak_against_the_server(tmp_path: Path) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    with running_server(make_config(), SineBurstEngine(ms_per_char=2.0)) as url:
        args = parse("--url", ws_url(url), "--clients", "3", "--duration", "3", "--sample-every", "0.5",
                     "--disconnect-rate", "0.3", "--light", "--json", str(out), "--plot", str(png))
        rc = bench.run(args)
    report = json.loads(out.read_text())
    summary, samples = report["summary"], report["samples"]
    assert rc == 0 and summary["errors"] == 0 and report["config"]["client_mode"] == "light"
    assert summary["utterances"] + summary["disconnects"] >= 3
    assert len(samples) >= 4 and all({"rss_mb", "fds", "tasks", "threads"} <= set(s) for s in samples)
    assert samples[-1]["sessions"] == 0  # everyone left at the end
    ok = [r for r in report["results"] if r["error"] is None]
    assert ok and all(r["frames"] * 20 == pytest.approx(r["decoded_ms"]) for r in ok)  # counted, not decoded
    assert png.stat().st_size > 10_000
