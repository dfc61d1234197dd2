"""End to end on a real server with the deterministic fake engine."""

from __future__ import annotations

from engine.codec import OpusFrameDecoder
from tests.server_fixtures import SineBurstEngine, collect, make_config, running_server, ws_url


async def test_text_then_end_streams_audio_and_closes_normally() -> None:
    engine = SineBurstEngine()
    with running_server(make_config(), engine) as url:
        got = await collect(ws_url(url), [
            {"type": "text", "text": "Hello there, this is a test sentence. And another one follows."},
            {"type": "end"},
        ])
    types = [m["type"] for m in got.messages]
    assert types[0] == "ready"
    assert types[-1] == "done"
    assert got.close_code == 1000
    dec = OpusFrameDecoder()
    pcm = sum(dec.decode(f).shape[0] for f in got.frames)
    assert abs(pcm / 24000 * 1000 - got.messages[-1]["audio_ms"]) < 1e-6
