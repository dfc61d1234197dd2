"""/v1/stream in the telephony formats: G.711 mu-law and A-law at 8 kHz."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.g711 import alaw2lin, ulaw2lin
from tests.server_fixtures import SineBurstEngine, collect, make_config, running_server, ws_url


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_stream_in_g711_at_8_khz(law: str) -> None:
    engine = SineBurstEngine()
    text = "Hello there, this is a phone call."
    with running_server(make_config(), engine) as url:
        got = asyncio.run(collect(ws_url(url), [{"type": "start", "format": law}, {"type": "text", "text": text},
                                                {"type": "end"}]))
    ready = got.messages[0]
    assert (ready["format"], ready["sample_rate"]) == (law, 8000)  # 8 kHz without asking
    assert got.close_code == 1000 and got.messages[-1]["type"] == "done"
    assert all(len(f) == 160 for f in got.frames[:-1])  # 20 ms = 160 one-byte samples
    data = np.frombuffer(b"".join(got.frames), np.uint8)
    seconds = data.shape[0] / 8000
    assert seconds == pytest.approx(engine.samples_for(text) / 24000 + 0.12, abs=0.002)
    assert got.messages[-1]["audio_ms"] == pytest.approx(seconds * 1000, abs=0.5)
    pcm = (ulaw2lin(data) if law == "ulaw" else alaw2lin(data)).astype(np.float32) / 32768
    assert 0.4 < float(np.abs(pcm).max()) < 0.6  # SineBurstEngine's 0.5 tone


def test_g711_rejects_other_rates() -> None:
    with running_server(make_config(), SineBurstEngine()) as url:
        got = asyncio.run(collect(ws_url(url), [{"type": "start", "format": "alaw", "sample_rate": 16000}],
                                  until_close=False))
    assert got.messages[0]["type"] == "error" and got.messages[0]["code"] == "unsupported_sample_rate"
