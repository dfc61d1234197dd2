"""Streaming behaviour of POST /v1/audio/speech: the body starts before synthesis ends, a reader
that does not read parks the session (bounded buffering), a client that leaves frees everything."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from stream_server.api.speech_stream import AudioBatch, SpeechStream, StreamFailure
from stream_server.app import create_app
from stream_server.config import AppConfig, ServerConfig
from stream_server.connection import Hub
from stream_server.metrics import ServerMetrics
from tests.server_fixtures import SineBurstEngine, make_config, poll_until, serve_app

SENTENCES = [f"Sentence number {i} is long enough to be a segment of its own." for i in range(4)]
TEXT = " ".join(SENTENCES)


def test_first_bytes_arrive_while_later_segments_are_not_synthesized_yet() -> None:
    # 60 ms chunks that each take 30 ms to make: the whole text takes over a second
    engine = SineBurstEngine(delay_s=0.03)
    with serve_app(create_app(make_config(), engine)) as url, \
            openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        t0 = time.monotonic()
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="mp3"
        ) as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            first_s = time.monotonic() - t0
            calls_at_first = len(engine.calls)
            rest = b"".join(chunks)
        total_s = time.monotonic() - t0
    assert first and rest
    assert calls_at_first < len(SENTENCES)  # later segments were not even started
    assert len(engine.calls) == len(SENTENCES)
    assert first_s < total_s / 2


def test_mp3_is_encoded_next_to_the_synthesis_and_aac_by_the_server() -> None:
    # MP3 at the engine's tempo: the session speaks mp3, so the engine's lane (a worker process with
    # [server] workers > 1) encodes it; the server's own encoder threads stay unused
    def encoder_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("speech-")}

    with serve_app(create_app(make_config(), SineBurstEngine())) as url, \
            openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        before = encoder_threads()
        mp3 = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="mp3")
        assert mp3.content[:2] in (b"\xff\xf3", b"\xff\xf2")  # an MPEG-2 Layer III frame (24 kHz)
        assert not encoder_threads() - before
        aac = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="aac")
        assert aac.content[:2] == b"\xff\xf1"  # ADTS
        assert encoder_threads() - before


async def test_unread_audio_parks_the_session_until_the_writer_catches_up() -> None:
    engine = SineBurstEngine()
    config = AppConfig(server=ServerConfig(port=0, max_ahead_s=0.5))
    hub = Hub(config, ServerMetrics(), engine, "test")
    hub.start(asyncio.get_running_loop())
    stream = SpeechStream(hub, "t")
    try:
        stream.begin(TEXT, "low", 1.0)
        batches = stream.batches()
        first = await anext(batches)
        assert isinstance(first, AudioBatch)
        await asyncio.sleep(0.5)  # nothing is written: the worker must stop after max_ahead_s
        channel = stream.channel
        assert channel.produced_s - channel.written_s < 0.5 + 0.7  # + one segment's last chunk
        assert len(engine.calls) < len(SENTENCES)
        stream.written(first)
        total = first.audio_s
        async for event in batches:
            assert not isinstance(event, StreamFailure)
            stream.written(event)
            total += event.audio_s
        assert len(engine.calls) == len(SENTENCES)
        assert abs(total - sum(len(s) * 0.01 + 0.12 for s in SENTENCES)) < 0.01
    finally:
        stream.close()
        await asyncio.to_thread(hub.stop)


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])  # mp3: encoded by the engine's lane
def test_a_client_that_leaves_mid_stream_frees_its_session(fmt: str) -> None:
    engine = SineBurstEngine(delay_s=0.05)
    app = create_app(make_config(), engine)
    hub = app.state.hub
    with serve_app(app) as url, httpx.Client(timeout=10.0) as client:
        body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt}
        with client.stream("POST", url + "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            next(response.iter_bytes())
        # the connection is closed with most of the text unsynthesized

        async def freed() -> None:
            await poll_until(lambda: hub.scheduler.channel_count() == 0 and hub.scheduler.job_count() == 0,
                             timeout_s=10.0)

        asyncio.run(freed())
        assert len(engine.closed) <= 1  # the in-flight segment's generator was closed
        assert len(engine.calls) < len(SENTENCES)
