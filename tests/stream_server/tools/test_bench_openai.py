"""``stream-tts bench-openai``'s client half against the real server with the sine engine."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

import pytest

from stream_server.tools.bench import BenchError
from stream_server.tools.bench_openai import (
    configure_parser,
    format_table,
    http_request,
    run_levels,
)
from tests.server_fixtures import SineBurstEngine, make_config, running_server


def test_requests_levels_and_table(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there, this is one sentence.\n", encoding="utf-8")
    with running_server(make_config(), SineBurstEngine()) as url:
        ok = asyncio.run(http_request(url, "POST", "/v1/audio/speech",
                                      {"model": "tts-1", "voice": "alloy", "input": "Hi there.",
                                       "response_format": "pcm"}, None, 30.0))
        assert ok.error is None and ok.ttfb_ms <= ok.total_ms
        assert ok.body_bytes == round((9 * 0.010 + 0.12) * 24000) * 2
        bad = asyncio.run(http_request(url, "POST", "/v1/audio/speech",
                                       {"model": "tts-1", "voice": "nobody", "input": "Hi."}, None, 30.0))
        assert bad.error == "HTTP 404"
        parser = argparse.ArgumentParser()
        configure_parser(parser)
        args = parser.parse_args(["--url", url, "--clients", "1,2", "--rounds", "1", "--texts", str(texts),
                                  "--formats", "pcm,mp3"])
        rows = asyncio.run(run_levels(args))
    assert [(r["path"], r["clients"]) for r in rows] == [
        ("http pcm ttfb", 1), ("http mp3 ttfb", 1), ("ws opus ttfa", 1),
        ("http pcm ttfb", 2), ("http mp3 ttfb", 2), ("ws opus ttfa", 2),
    ]
    assert all(r["errors"] == 0 and not math.isnan(r["p50_ms"]) for r in rows)
    table = format_table(rows, {"mp3": 2.5})
    assert "http mp3 ttfb" in table and "mp3 2.50" in table


def test_an_unreachable_server_is_a_clear_error() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--url", "http://127.0.0.1:9", "--timeout", "5"])
    with pytest.raises(BenchError, match="healthz"):
        asyncio.run(run_levels(args))
