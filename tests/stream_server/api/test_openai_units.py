"""The OpenAI API's pieces without a server: encoders, speed plan, voice aliases, errors, schema."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from stream_server.api.audio_encode import SPEECH_FORMATS, SpeechEncoder, TempoStretcher
from stream_server.api.openai_errors import STATUS_OF_CODE, OpenAIError
from stream_server.api.openai_schema import VoiceId, parse_aliases, plan_speed, resolve_voice
from stream_server.app import create_app
from stream_server.config import ServerConfig
from stream_server.errors import ERROR_TABLE
from tests.server_fixtures import SineBurstEngine, make_config

SR = 24000


def tone(seconds: float, hz: float = 300.0) -> bytes:
    t = np.arange(round(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("fmt", [f for f in SPEECH_FORMATS if f != "pcm"])
def test_every_container_emits_bytes_before_the_end(fmt: str) -> None:
    encoder = SpeechEncoder(fmt)
    pcm = tone(0.5)
    step = 960 * 2  # 40 ms pieces
    pieces = [encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    assert sum(len(p) for p in pieces) > 0  # streamed, not held until finish
    data = b"".join(pieces) + encoder.finish()
    with av.open(io.BytesIO(data)) as container:
        n = sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))
    assert 0.5 - 0.002 <= n <= 0.5 + 0.1
    assert encoder.samples_in == encoder.samples_out == len(pcm) // 2


def test_wav_header_is_the_streaming_kind() -> None:
    encoder = SpeechEncoder("wav")
    head = encoder.encode(tone(0.1))
    assert head[:4] == b"RIFF" and head[4:8] == b"\xff\xff\xff\xff" and head[8:12] == b"WAVE"
    assert b"Lavf" not in head  # bitexact: no encoder tag


def test_pcm_passes_through_unchanged() -> None:
    encoder = SpeechEncoder("pcm")
    pcm = tone(0.1)
    assert encoder.passthrough and encoder.encode(pcm) == pcm and encoder.finish() == b""


@pytest.mark.parametrize("tempo", [0.5, 0.8, 1.25, 2.0])
def test_tempo_stretch_gives_the_exact_length(tempo: float) -> None:
    stretch = TempoStretcher(tempo)
    pcm = np.frombuffer(tone(1.0), "<i2")
    out = [stretch.process(pcm[i : i + 480]) for i in range(0, len(pcm), 480)]
    total = sum(len(o) for o in out) + len(stretch.flush())
    assert total == round(len(pcm) / tempo)
    assert sum(len(o) for o in out) > 0  # streaming


def test_tempo_outside_one_atempo_stage_is_refused() -> None:
    with pytest.raises(ValueError):
        TempoStretcher(3.0)


@pytest.mark.parametrize(("speed", "engine", "tempo"), [
    (1.0, 1.0, 1.0), (0.25, 0.5, 0.5), (0.4, 0.5, 0.8), (0.5, 0.5, 1.0), (2.0, 2.0, 1.0),
    (3.0, 2.0, 1.5), (4.0, 2.0, 2.0), (1.3, 1.3, 1.0),
])
def test_speed_plan(speed: float, engine: float, tempo: float) -> None:
    plan = plan_speed(speed)
    assert plan.engine_speed == pytest.approx(engine) and plan.tempo == pytest.approx(tempo)


def test_voice_resolution() -> None:
    ours = {"en-us", "cmn", "auto"}
    aliases = parse_aliases(["Alloy = cmn", "echo=missing"])
    assert aliases == {"alloy": "cmn", "echo": "missing"}
    assert resolve_voice("en-us", ours, "auto", aliases) == "en-us"
    assert resolve_voice(VoiceId(id="EN-US"), ours, "auto", aliases) == "en-us"
    assert resolve_voice("ALLOY", ours, "auto", aliases) == "cmn"
    assert resolve_voice("onyx", ours, "auto", aliases) == "auto"  # no entry: the default voice
    for bad in ("echo", "nobody"):
        with pytest.raises(OpenAIError) as info:
            resolve_voice(bad, ours, "auto", aliases)
        assert (info.value.status, info.value.code, info.value.param) == (404, "voice_not_found", "voice")


def test_bad_alias_config_is_refused() -> None:
    with pytest.raises(ValueError, match="NAME=VOICE"):
        ServerConfig(openai_voice_aliases=("alloy",))
    with pytest.raises(ValueError):
        ServerConfig(openai_max_input_chars=0)


def test_status_table_names_codes_of_the_error_table() -> None:
    assert set(STATUS_OF_CODE) <= set(ERROR_TABLE)
    assert OpenAIError.from_code("busy", "x").status == 503
    assert OpenAIError.from_code("busy", "x").headers["Retry-After"]


def test_openapi_schema_documents_request_and_audio_types() -> None:
    schema = create_app(make_config(), SineBurstEngine()).openapi()
    op = schema["paths"]["/v1/audio/speech"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert request["additionalProperties"] is False
    assert set(request["required"]) == {"model", "input", "voice"}
    assert set(request["properties"]) == {"model", "input", "voice", "instructions", "response_format",
                                          "speed", "stream_format"}
    content = op["responses"]["200"]["content"]
    assert set(content) == {"audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav",
                            "audio/pcm", "text/event-stream"}
    assert "422" not in op["responses"]  # validation errors are OpenAI-shaped 400s
    for status in ("400", "404", "503"):
        assert op["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/OpenAIErrorBody")
    for path in ("/v1/models", "/v1/models/{model_id}", "/v1/audio/voices"):
        assert "200" in schema["paths"][path]["get"]["responses"]


def test_validation_errors_name_the_top_level_field() -> None:
    from fastapi.testclient import TestClient

    app = create_app(make_config(), SineBurstEngine())
    client = TestClient(app)  # no lifespan: validation answers before the engine is needed
    cases = [
        ({"model": "tts-1", "input": "hi", "voice": 12}, "voice", "invalid_value"),
        ({"model": "tts-1", "input": "hi", "voice": {"id": "x", "name": "y"}}, "voice", "unknown_parameter"),
        ({"model": "tts-1", "voice": "alloy"}, "input", "missing_required_parameter"),
        (["not", "an", "object"], None, "invalid_request"),
    ]
    for body, param, code in cases:
        response = client.post("/v1/audio/speech", json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    response = client.post("/v1/audio/speech", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_a_body_that_does_not_decode_gets_the_openai_error_shape() -> None:
    from fastapi.testclient import TestClient

    from stream_server.app import create_app
    from tests.server_fixtures import SineBurstEngine, make_config

    with TestClient(create_app(make_config(), SineBurstEngine())) as client:
        r = client.post("/v1/audio/speech", content=b'{"model": "tts-1", "input": "\xff", "voice": "low"}',
                        headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
