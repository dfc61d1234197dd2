"""End to end with the real eSpeak NG engine: real speech as Opus over the WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from engine.codec import OpusFrameDecoder
from engine.config import EngineConfig
from engine.espeak import EspeakEngine
from tests.server_fixtures import collect, make_config, running_server, ws_url

ENGLISH = "Streaming speech should start quickly. Each sentence arrives as its own segment."
CHINESE = "今天天气很好，我们一起去公园散步吧。然后再回家吃饭。"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(make_config(), EspeakEngine(EngineConfig())) as base:
        yield base


def _decode(frames: list[bytes]) -> np.ndarray:
    dec = OpusFrameDecoder(24000)
    return np.concatenate([dec.decode(f) for f in frames])


@pytest.mark.parametrize(("voice", "text"), [("en-us", ENGLISH), ("cmn", CHINESE)])
async def test_espeak_streams_real_speech(url: str, voice: str, text: str) -> None:
    got = await collect(ws_url(url), [{"type": "start", "voice": voice}, {"type": "text", "text": text},
                                      {"type": "end"}])
    assert got.close_code == 1000
    types = [m["type"] for m in got.messages]
    assert types[0] == "ready" and types[-1] == "done" and "error" not in types
    done = got.messages[-1]
    segments = [m for m in got.messages if m["type"] == "segment"]
    assert len(segments) >= 2 and done["segments"] == len(segments)
    pcm = _decode(got.frames)
    # the decoded duration is what the server reports, to within one 20 ms frame per segment
    assert abs(pcm.shape[0] / 24.0 - done["audio_ms"]) <= 20 * len(segments)
    assert 1000 < done["audio_ms"] < 20000
    assert float(np.sqrt(np.mean(pcm**2))) > 0.01  # speech, not silence
    assert done["ttfa_ms"] > 0 and 0 < done["rtf"] < 1


async def test_espeak_voices_are_listed(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        body = (await client.get("/v1/voices")).json()
    names = {v["name"] for v in body["voices"]}
    assert body["engine"] == "espeak" and {"auto", "en-us", "cmn"} <= names and body["default"] == "auto"


async def test_two_espeak_sessions_in_parallel_each_get_their_own_audio(url: str) -> None:
    a, b = await asyncio.gather(
        collect(ws_url(url), [{"type": "start", "voice": "en-us"}, {"type": "text", "text": ENGLISH}, {"type": "end"}]),
        collect(ws_url(url), [{"type": "start", "voice": "cmn"}, {"type": "text", "text": CHINESE}, {"type": "end"}]),
    )
    assert [m["text"] for m in a.messages if m["type"] == "segment"][0].startswith("Streaming")
    assert [m["text"] for m in b.messages if m["type"] == "segment"][0].startswith("今天")
    for got in (a, b):
        assert abs(_decode(got.frames).shape[0] / 24.0 - got.messages[-1]["audio_ms"]) <= 40


def test_openai_mp3_from_the_engine_workers_is_the_pcms_speech(url: str) -> None:
    """``workers`` defaults to one process per core: the MP3 of POST /v1/audio/speech is encoded in
    those processes, one stream per sentence, and decodes to the same speech as the PCM body."""
    import io

    import av

    body = {"model": "tts-1", "voice": "en-us", "input": ENGLISH}
    with httpx.Client(base_url=url, timeout=60) as client:
        pcm_bytes = client.post("/v1/audio/speech", json={**body, "response_format": "pcm"}).content
        mp3_bytes = client.post("/v1/audio/speech", json={**body, "response_format": "mp3"}).content
    pcm = np.frombuffer(pcm_bytes, "<i2").astype(np.float32) / 32768.0
    with av.open(io.BytesIO(mp3_bytes), format="mp3") as container:
        mp3 = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert pcm.shape[0] > 24000
    assert abs(mp3.shape[0] - pcm.shape[0]) <= 2 * 288 + 24  # two sentences, half a frame each
    rms_pcm, rms_mp3 = (float(np.sqrt(np.mean(x**2))) for x in (pcm, mp3))
    assert rms_mp3 == pytest.approx(rms_pcm, rel=0.15)
