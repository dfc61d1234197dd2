"""The real server (uvicorn, websockets-sansio) on port 0 with the deterministic sine engine."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from engine.codec import OpusFrameDecoder
from stream_server.app import create_app
from tests.server_fixtures import (
    SineBurstEngine,
    collect,
    make_config,
    poll_until,
    running_server,
    serve_app,
    ws_url,
)

TEXT = ("The first sentence is long enough to stand alone. The second one follows it closely. "
        "And here comes a third sentence to finish.")
LONG = " ".join(f"This is sentence number {i} of a rather long utterance." for i in range(12))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Any, SineBurstEngine]]:
    engine = SineBurstEngine(delay_s=0.005)  # ~12x real time: in-flight work is observable
    config = make_config()
    app = create_app(config, engine)
    with serve_app(app, config) as url:
        yield url, app, engine


def decode_opus(frames: list[bytes]) -> np.ndarray:
    dec = OpusFrameDecoder(24000)
    return np.concatenate([dec.decode(f) for f in frames]) if frames else np.zeros(0, np.float32)


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    return float(np.fft.rfftfreq(pcm.shape[0], 1 / rate)[int(np.argmax(spectrum))])


async def test_message_order_audio_duration_and_normal_close(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    got = await collect(ws_url(url), [{"type": "text", "text": TEXT}, {"type": "end"}])
    assert got.close_code == 1000
    assert got.messages[0]["type"] == "ready" and got.messages[-1]["type"] == "done"
    # every segment's `segment` precedes its audio, `segment_done` follows it
    got.assert_segment_order()
    segs = [m for m in got.messages if m["type"] == "segment"]
    dones = [m for m in got.messages if m["type"] == "segment_done"]
    assert [m["index"] for m in segs] == [m["index"] for m in dones] == list(range(len(segs)))
    assert len(segs) == 3
    done = got.messages[-1]
    pcm = decode_opus(got.frames)
    assert pcm.shape[0] / 24.0 == pytest.approx(done["audio_ms"])  # exactly the frames sent
    assert done["audio_ms"] == pytest.approx(sum(m["audio_ms"] for m in dones))
    expected_ms = sum(len(m["text"]) * 10 + 120 for m in segs)  # engine + pause, per segment
    assert abs(done["audio_ms"] - expected_ms) <= 20 * len(segs)  # within one frame per segment
    assert float(np.sqrt(np.mean(pcm**2))) > 0.1  # not silence
    assert done["segments"] == 3 and done["ttfa_ms"] > 0 and done["rtf"] > 0
    flushed = [m for m in got.messages if m["type"] == "flushed"]
    assert len(flushed) == 1 and flushed[0]["segments"] == 3


async def test_token_by_token_streaming_gives_the_same_segments(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    whole = await collect(ws_url(url), [{"type": "text", "text": TEXT}, {"type": "end"}])
    tokens = [TEXT[i : i + 4] for i in range(0, len(TEXT), 4)]
    pieces = await collect(ws_url(url), [{"type": "text", "text": t} for t in tokens] + [{"type": "end"}])

    def segments(c: Any) -> list[tuple[int, str]]:
        return [(m["index"], m["text"]) for m in c.messages if m["type"] == "segment"]

    assert segments(pieces) == segments(whole)
    assert pieces.messages[-1]["audio_ms"] == whole.messages[-1]["audio_ms"]


async def test_flush_reports_each_turn(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    got = await collect(ws_url(url), [
        {"type": "text", "text": "A first turn that is long enough."}, {"type": "flush"},
        {"type": "text", "text": "And a second turn, also long enough."}, {"type": "flush"},
        {"type": "end"},
    ])
    flushed = [m for m in got.messages if m["type"] == "flushed"]
    assert [m["segments"] for m in flushed] == [1, 1]  # end right after a flush adds no empty turn
    assert all(m["ttfa_ms"] > 0 for m in flushed)
    assert got.messages[-1]["audio_ms"] == pytest.approx(sum(m["audio_ms"] for m in flushed))


async def test_clear_mid_utterance_sends_no_old_audio_after_cleared(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    events: list[tuple[str, Any]] = []
    async with connect(ws_url(url)) as ws:
        await ws.send(json.dumps({"type": "text", "text": LONG}))
        await ws.send(json.dumps({"type": "flush"}))
        async for raw in ws:  # wait for the first audio, then barge in
            events.append(("audio", raw) if isinstance(raw, bytes) else ("json", json.loads(raw)))
            if isinstance(raw, bytes):
                break
        await ws.send(json.dumps({"type": "clear"}))
        await ws.send(json.dumps({"type": "text", "text": "Something entirely new to say now."}))
        await ws.send(json.dumps({"type": "end"}))
        async for raw in ws:
            events.append(("audio", raw) if isinstance(raw, bytes) else ("json", json.loads(raw)))
    cut = next(i for i, (k, v) in enumerate(events) if k == "json" and v["type"] == "cleared")
    after = events[cut + 1 :]
    segs_after = [v for k, v in after if k == "json" and v["type"] == "segment"]
    assert [s["text"] for s in segs_after] == ["Something entirely new to say now."]
    new_ms = sum(v["audio_ms"] for k, v in after if k == "json" and v["type"] == "segment_done")
    frames_after = [v for k, v in after if k == "audio"]
    assert len(frames_after) * 20 == pytest.approx(new_ms)  # only the new segment's audio
    old_segments = [v for k, v in events[:cut] if k == "json" and v["type"] == "segment"]
    assert len(old_segments) < 12  # the old utterance was really cut short


async def test_disconnect_mid_utterance_cancels_work(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, app, engine = server
    hub = app.state.hub
    async with connect(ws_url(url)) as ws:
        await ws.send(json.dumps({"type": "text", "text": LONG}))
        await ws.send(json.dumps({"type": "flush"}))
        async for raw in ws:
            if isinstance(raw, bytes):
                break
    await poll_until(lambda: not (hub.scheduler.job_count() or hub.connections or hub.scheduler.channel_count()))
    synthesized = [t for t, _ in engine.calls if t.startswith("This is sentence number")]
    assert len(synthesized) < 12  # not everything was synthesized after the client left


async def test_two_concurrent_sessions_do_not_interfere(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    low, high = await asyncio.gather(
        collect(ws_url(url), [{"type": "start", "voice": "low"}, {"type": "text", "text": TEXT}, {"type": "end"}]),
        collect(ws_url(url), [{"type": "start", "voice": "high"},
                              {"type": "text", "text": "Only one sentence for the high voice."}, {"type": "end"}]),
    )
    assert [m["voice"] for m in (low.messages[0], high.messages[0])] == ["low", "high"]
    assert low.messages[0]["session_id"] != high.messages[0]["session_id"]
    assert [m["text"] for m in high.messages if m["type"] == "segment"] == ["Only one sentence for the high voice."]
    assert len([m for m in low.messages if m["type"] == "segment"]) == 3
    for got, hz in ((low, 220.0), (high, 880.0)):
        pcm = decode_opus(got.frames)
        assert pcm.shape[0] / 24.0 == pytest.approx(got.messages[-1]["audio_ms"])
        assert abs(dominant_hz(pcm, 24000) - hz) < 10


async def test_pcm_at_another_sample_rate(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    got = await collect(ws_url(url), [
        {"type": "start", "format": "pcm_s16le", "sample_rate": 16000},
        {"type": "text", "text": TEXT}, {"type": "end"},
    ])
    ready = got.messages[0]
    assert (ready["format"], ready["sample_rate"]) == ("pcm_s16le", 16000)
    assert all(len(f) <= 640 and len(f) % 2 == 0 for f in got.frames)  # 20 ms = 320 samples
    pcm = np.concatenate([np.frombuffer(f, "<i2") for f in got.frames]).astype(np.float32) / 32768
    assert pcm.shape[0] / 16.0 == pytest.approx(got.messages[-1]["audio_ms"])
    assert abs(dominant_hz(pcm, 16000) - 220.0) < 10


async def test_http_routes(server: tuple[str, Any, SineBurstEngine]) -> None:
    url, _, _ = server
    await collect(ws_url(url), [{"type": "text", "text": TEXT}, {"type": "end"}])
    async with httpx.AsyncClient(base_url=url) as client:
        health = (await client.get("/healthz")).json()
        voices = (await client.get("/v1/voices")).json()
        info = (await client.get("/v1/info")).json()
        metrics = (await client.get("/metrics")).text
        code_py = (await client.get("/__init__.py")).status_code
    assert health["status"] == "ok" and health["engine"] == "sine"
    assert voices == {"engine": "sine", "default": "low", "voices": [
        {"name": "low", "language": "xx", "description": "220 Hz"},
        {"name": "high", "language": "xx", "description": "880 Hz"}]}
    assert info["protocol_version"] == 1 and info["options"] == ["speed"]
    assert info["sample_rates"]["pcm_s16le"] == [8000, 16000, 22050, 24000, 32000, 44100, 48000]
    assert info["sample_rates"]["ulaw"] == info["sample_rates"]["alaw"] == [8000]
    assert "stream_tts_ttfa_seconds_count" in metrics and "stream_tts_segment_rtf_bucket" in metrics
    count = next(line for line in metrics.splitlines() if line.startswith("stream_tts_ttfa_seconds_count"))
    assert float(count.split()[-1]) >= 1
    assert code_py == 404  # the web_demo package's Python files are not served


async def test_healthz_is_503_until_warm_up_is_done() -> None:
    engine = SineBurstEngine(warmup_s=1.0)
    with running_server(make_config(), engine, wait_healthy=False) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.get("/healthz")

            async def healthy() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await poll_until(healthy)
            ok = (await client.get("/healthz")).json()
    assert first.status_code == 503 and first.json()["status"] == "warming_up"
    assert ok["status"] == "ok" and ok["warmup_s"] >= 1.0


async def test_shutdown_tells_open_sessions_and_closes_1001() -> None:
    with running_server(make_config(), SineBurstEngine()) as url:
        ws = await connect(ws_url(url))
        await ws.send(json.dumps({"type": "start"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        reader = asyncio.create_task(_read_all(ws))
    messages = await reader
    assert messages[-1] == {"type": "error", "code": "shutting_down", "message": "server is shutting down"}
    assert ws.close_code == 1001


async def _read_all(ws: Any) -> list[dict[str, Any]]:
    return [json.loads(raw) async for raw in ws if isinstance(raw, str)]


async def test_stopping_the_server_leaves_no_worker_thread_or_session() -> None:
    engine = SineBurstEngine()
    config = make_config()
    app = create_app(config, engine)
    before = set(threading.enumerate())
    with serve_app(app, config) as url:
        await collect(ws_url(url), [{"type": "text", "text": TEXT}, {"type": "end"}])
        started = set(threading.enumerate()) - before
    hub = app.state.hub
    assert not hub.connections and hub.scheduler.job_count() == 0 and hub.scheduler.channel_count() == 0
    assert {t.name for t in started} >= {"engine-worker", "test-uvicorn"}
    assert not any(t.is_alive() for t in started)


@pytest.mark.parametrize("compression", [False, True])
def test_permessage_deflate_only_when_configured(compression: bool) -> None:
    """Audio frames do not compress: by default the server declines permessage-deflate even when the
    client offers it (every client does), and ``ws_compression`` turns it on."""
    from websockets.sync.client import connect as connect_sync

    with running_server(make_config(ws_compression=compression), SineBurstEngine()) as url:
        with connect_sync(ws_url(url)) as ws:  # offers permessage-deflate by default
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
    assert ("permessage-deflate" in extensions) is compression
