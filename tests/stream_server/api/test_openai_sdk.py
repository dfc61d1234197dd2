"""POST /v1/audio/speech, GET /v1/models and /v1/audio/voices driven by the official ``openai``
SDK against the real server (uvicorn on port 0) with the deterministic sine engine."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import openai
import pytest

from tests.server_fixtures import SineBurstEngine, make_config, running_server

SR = 24000
TEXT = "Hello there, this is one sentence."  # one segment: 34 chars = 340 ms of tone
PAUSE_S = 0.12  # AudioConfig.pause_ms after every segment
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
# decoded length - PCM length, (least, most): ADTS AAC cannot tell the decoder to trim the codec's
# delay and padding; MP3 takes its delay out of the segment's pause, to within half a frame (12 ms
# at 24 kHz); Ogg Opus, FLAC and WAV are exact
CODEC_SLACK_S = {"mp3": (-0.012, 0.012), "aac": (0.0, 0.1), "opus": (0.0, 0.002), "flac": (0.0, 0.0),
                 "wav": (0.0, 0.0), "pcm": (0.0, 0.0)}


def expected_s(text: str = TEXT, speed: float = 1.0) -> float:
    return len(text) * 0.010 / speed + PAUSE_S


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate (PyAV decodes every container; pcm is raw s16le)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, SR
    parts, rate = [], SR
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            parts.append(frame.to_ndarray().reshape(-1).astype(np.float32))  # mono: one plane
            rate = frame.sample_rate
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm))
    return float(np.argmax(spectrum) * rate / len(pcm))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    config = make_config(openai_max_input_chars=300, openai_voice_aliases=("nova=high",))
    with running_server(config, SineBurstEngine()) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def speak(client: openai.OpenAI, **kwargs: Any) -> tuple[bytes, str, int]:
    args: dict[str, Any] = {"model": "tts-1", "voice": "alloy", "input": TEXT}
    args.update(kwargs)
    with client.audio.speech.with_streaming_response.create(**args) as response:
        chunks = list(response.iter_bytes(1024))
        return b"".join(chunks), response.headers["content-type"], len(chunks)


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_every_format_streams_audio_of_the_expected_length(client: openai.OpenAI, fmt: str) -> None:
    data, content_type, _ = speak(client, response_format=fmt)
    assert content_type == CONTENT_TYPES[fmt]
    pcm, rate = decode(data, fmt)
    seconds = len(pcm) / rate
    least, most = CODEC_SLACK_S[fmt]
    assert expected_s() + least - 0.002 <= seconds <= expected_s() + most + 0.002
    assert abs(dominant_hz(pcm, rate) - 220.0) < 10.0  # "alloy" speaks with the default voice "low"


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_mp3_of_several_segments_keeps_their_length(client: openai.OpenAI, speed: float) -> None:
    # at the engine's tempo the engine encodes each segment as its own MP3 stream (chained; the
    # codec's delay is taken out of each segment's pause); beyond the engine's speeds the server
    # stretches the PCM and encodes it as one stream (its delay and padding once, up to 72 ms)
    text = "The first sentence is right here. A second one follows it now. And a third one ends it."
    pcm_data, _, _ = speak(client, input=text, response_format="pcm", speed=speed)
    mp3_data, _, _ = speak(client, input=text, response_format="mp3", speed=speed)
    want = len(pcm_data) / 2 / SR
    mp3, rate = decode(mp3_data, "mp3")
    got = len(mp3) / rate
    if speed == 1.0:  # each of the 3 segments within half a frame (12 ms)
        assert rate == SR and abs(got - want) <= 3 * 0.012 + 0.001
    else:
        assert rate == SR and want <= got <= want + 0.075
    assert abs(dominant_hz(mp3, rate) - 220.0) < 10.0


def test_pcm_is_exactly_the_session_audio(client: openai.OpenAI) -> None:
    data, _, _ = speak(client, response_format="pcm")
    assert len(data) == round(expected_s() * SR) * 2


async def test_async_client_streams(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="alloy", input=TEXT, response_format="opus",
        instructions="Speak cheerfully.",  # accepted and ignored
    ) as response:
        assert response.headers["content-type"] == "audio/ogg"
        data = b"".join([chunk async for chunk in response.iter_bytes()])
    pcm, rate = decode(data, "opus")
    assert abs(len(pcm) / rate - expected_s()) < 0.01
    await client.close()


def test_sse_deltas_and_done_with_usage(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = [json.loads(line[len("data: "):]) for line in text.split("\n\n") if line.startswith("data: ")]
    assert text.endswith("\n\n") and len(events) >= 2
    deltas, done = events[:-1], events[-1]
    assert all(e["type"] == "speech.audio.delta" for e in deltas)
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio) == round(expected_s() * SR) * 2
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(TEXT)
    assert usage["output_tokens"] == round(expected_s() / 0.02)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_of_mp3_made_by_the_engine_counts_its_frames(client: openai.OpenAI) -> None:
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="mp3", stream_format="sse"
    ) as response:
        text = response.read().decode()
    events = [json.loads(line[len("data: "):]) for line in text.split("\n\n") if line.startswith("data: ")]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    pcm, rate = decode(audio, "mp3")
    assert abs(len(pcm) / rate - expected_s()) <= 0.014
    # output_tokens: 20 ms frames of the audio sent (24 ms MP3 frames, counted by their length)
    assert events[-1]["usage"]["output_tokens"] == pytest.approx(len(pcm) / rate / 0.02, abs=1.5)


def test_voice_by_name_by_object_and_by_alias(client: openai.OpenAI) -> None:
    for voice in ("high", {"id": "high"}, "nova", "NOVA"):
        data, _, _ = speak(client, voice=voice, response_format="pcm")
        pcm, rate = decode(data, "pcm")
        assert abs(dominant_hz(pcm, rate) - 880.0) < 10.0, voice


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 3.0, 4.0])
def test_speed_over_openais_whole_range(client: openai.OpenAI, speed: float) -> None:
    # 0.5..2.0 is the engine's; beyond it the rest is a time-stretch (pause included)
    data, _, _ = speak(client, speed=speed, response_format="pcm")
    engine_speed = min(max(speed, 0.5), 2.0)
    tempo = speed / engine_speed
    want = (len(TEXT) * 0.010 / engine_speed + PAUSE_S) / tempo
    assert abs(len(data) / 2 / SR - want) < 0.03


def test_models_and_voices(client: openai.OpenAI, server: str) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"stream-tts", "sine", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert client.models.retrieve("tts-1").id == "tts-1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")
    voices = client.get("/audio/voices", cast_to=object)
    assert isinstance(voices, dict)
    assert [v["id"] for v in voices["voices"]] == ["low", "high"]
    assert voices["aliases"]["nova"] == "high" and voices["aliases"]["alloy"] == "low"


ERROR_CASES = [
    ({"extra_body": {"language": "en"}}, openai.BadRequestError, "unknown_parameter", "language"),
    ({"response_format": "ogg"}, openai.BadRequestError, "invalid_value", "response_format"),
    ({"speed": 4.5}, openai.BadRequestError, "invalid_value", "speed"),
    ({"speed": 0.1}, openai.BadRequestError, "invalid_value", "speed"),
    ({"stream_format": "json"}, openai.BadRequestError, "invalid_value", "stream_format"),
    ({"input": "x" * 301}, openai.BadRequestError, "string_above_max_length", "input"),
    ({"input": ""}, openai.BadRequestError, "invalid_value", "input"),
    ({"input": "   "}, openai.BadRequestError, "invalid_value", "input"),
    ({"voice": "nobody"}, openai.NotFoundError, "voice_not_found", "voice"),
    ({"voice": {"id": "nobody"}}, openai.NotFoundError, "voice_not_found", "voice"),
    ({"model": "whisper-1"}, openai.NotFoundError, "model_not_found", "model"),
]


@pytest.mark.parametrize(("kwargs", "exc_type", "code", "param"), ERROR_CASES)
def test_errors_arrive_as_sdk_exceptions(client: openai.OpenAI, kwargs: dict[str, Any],
                                         exc_type: type[openai.APIStatusError], code: str, param: str) -> None:
    with pytest.raises(exc_type) as info:
        speak(client, **kwargs)
    body = info.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}  # the SDK unwraps {"error": ...}
    assert (body["code"], body["param"], body["type"]) == (code, param, "invalid_request_error")
    assert body["message"]


def test_503_while_warming_up() -> None:
    engine = SineBurstEngine(warmup_s=2.0)
    with running_server(make_config(), engine, wait_healthy=False) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client, \
                pytest.raises(openai.InternalServerError) as info:
            speak(client)
        assert info.value.status_code == 503
        assert info.value.response.headers["retry-after"]
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "warming_up"


@pytest.mark.parametrize("fmt", ["mp3", "pcm"])
def test_nothing_speakable_gives_a_short_valid_file(client: openai.OpenAI, fmt: str) -> None:
    data, _, _ = speak(client, input="... 😀", response_format=fmt)  # the chunker finds no segment
    pcm, rate = decode(data, fmt)
    assert 0.1 <= len(pcm) / rate <= 0.2 and float(np.max(np.abs(pcm))) < 1e-3  # silence
