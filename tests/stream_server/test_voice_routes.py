"""POST /v1/voices and DELETE /v1/voices/{name} on a tiny app with a VoiceStore in tmp_path."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.f5.voices import VoiceStore
from stream_server.voice_routes import FORM_OVERHEAD_BYTES, create_voice_router

SR = 16000
MAX_BYTES = 200_000


def clip_bytes(seconds: float = 2.0, amp: float = 0.05) -> bytes:
    t = np.arange(round(seconds * SR)) / SR
    audio = np.concatenate(
        [np.zeros(SR // 5), amp * np.sin(2 * np.pi * 220 * t), np.zeros(SR // 5)]
    )
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path: Path) -> VoiceStore:
    return VoiceStore(tmp_path / "voices", max_upload_bytes=MAX_BYTES)


@pytest.fixture
def client(store: VoiceStore) -> Iterator[TestClient]:
    app = FastAPI()
    app.include_router(create_voice_router(lambda: store))
    with TestClient(app) as c:
        yield c


def upload(client: TestClient, name: str, audio: bytes, text: str = "Hello there.") -> object:
    return client.post(
        "/v1/voices",
        data={"name": name, "text": text},
        files={"audio": ("clip.wav", audio, "audio/wav")},
    )


def assert_error(response: object, status: int, code: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["type"] == "error" and body["code"] == code and body["message"]


def test_upload_creates_a_voice(client: TestClient, store: VoiceStore) -> None:
    response = upload(client, "alice", clip_bytes(), "Hi, I am Alice")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "alice"
    assert body["duration_s"] == pytest.approx(2.05, abs=0.011)
    assert store.names() == ["alice"]
    assert store.prepare("alice").text == "Hi, I am Alice.  "


def test_duplicate_upload_is_a_conflict(client: TestClient) -> None:
    assert upload(client, "bob", clip_bytes()).status_code == 201
    assert_error(upload(client, "bob", clip_bytes(3.0)), 409, "voice_exists")


@pytest.mark.parametrize(
    ("name", "audio", "text"),
    [
        ("carol", b"this is not audio", "Text."),
        ("carol", clip_bytes(0.3), "Text."),
        ("carol", clip_bytes(amp=0.0), "Text."),
        ("bad/name", clip_bytes(), "Text."),
        ("carol", clip_bytes(), "   "),
    ],
    ids=["undecodable", "too_short", "silent", "bad_name", "empty_text"],
)
def test_invalid_uploads_are_bad_requests(
    client: TestClient, store: VoiceStore, name: str, audio: bytes, text: str
) -> None:
    assert_error(upload(client, name, audio, text), 400, "invalid_voice")
    assert store.names() == []


def test_missing_form_parts_are_bad_requests(client: TestClient) -> None:
    no_file = client.post("/v1/voices", data={"name": "dave", "text": "Text."})
    assert_error(no_file, 400, "invalid_voice")
    no_text = client.post(
        "/v1/voices", data={"name": "dave"}, files={"audio": ("a.wav", clip_bytes(), "audio/wav")}
    )
    assert_error(no_text, 400, "invalid_voice")
    not_a_form = client.post("/v1/voices", json={"name": "dave", "text": "Text."})
    assert_error(not_a_form, 400, "invalid_voice")


def test_audio_over_the_limit_is_too_large(client: TestClient, store: VoiceStore) -> None:
    # the whole request fits the form allowance, the audio part alone does not
    assert_error(upload(client, "erin", b"\0" * (MAX_BYTES + 10)), 413, "voice_too_large")
    # the declared body length alone is over the limit
    big = b"\0" * (MAX_BYTES + FORM_OVERHEAD_BYTES + 1)
    assert_error(upload(client, "erin", big), 413, "voice_too_large")
    assert store.names() == []


def test_a_chunked_body_is_cut_off_at_the_limit(client: TestClient, store: VoiceStore) -> None:
    boundary = "voiceboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nfrank\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="text"\r\n\r\nText.\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        yield head
        for _ in range(100):  # 100 x 64 KiB = 6.4 MB, far over the limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/v1/voices",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "voice_too_large")
    assert store.names() == []


def test_delete_removes_a_voice(client: TestClient, store: VoiceStore) -> None:
    assert upload(client, "gina", clip_bytes()).status_code == 201
    response = client.delete("/v1/voices/gina")
    assert response.status_code == 204 and response.content == b""
    assert store.names() == []
    assert_error(client.delete("/v1/voices/gina"), 404, "unknown_voice")


def test_delete_of_an_unknown_voice_is_not_found(client: TestClient) -> None:
    assert_error(client.delete("/v1/voices/nobody"), 404, "unknown_voice")
    assert_error(client.delete("/v1/voices/..etc"), 404, "unknown_voice")


def test_engines_without_a_store_refuse_voice_changes() -> None:
    app = FastAPI()
    app.include_router(create_voice_router(lambda: None))
    with TestClient(app) as client:
        assert_error(upload(client, "hank", clip_bytes()), 409, "voices_not_supported")
        assert_error(client.delete("/v1/voices/hank"), 409, "voices_not_supported")
