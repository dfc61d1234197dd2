"""The overlay queue routes on a small app of their own (no engine needed)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from stream_server.auth import AccessControl
from stream_server.auth_asgi import install_access_control
from stream_server.config import ServerConfig
from stream_server.overlay import OverlayQueue, create_overlay_router


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Build a client on a fresh app. Entering the client keeps ONE event loop for all requests,
    as uvicorn has (the queue's asyncio objects must live on a single loop)."""
    with contextlib.ExitStack() as stack:

        def make(**overrides: object) -> TestClient:
            cfg = dataclasses.replace(ServerConfig(), **overrides)
            app = FastAPI()
            app.include_router(create_overlay_router(cfg))
            install_access_control(app, AccessControl(cfg, ()))  # the legacy overlay_api_key
            return stack.enter_context(TestClient(app))

        yield make


def test_say_returns_id_and_position(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    first = client.post("/v1/overlay/say", json={"text": "Hello there.", "author": "ann"})
    second = client.post("/v1/overlay/say", json={"text": "Second one.", "voice": "en-gb"})
    assert first.status_code == 202 and second.status_code == 202
    assert first.json()["position"] == 0
    assert second.json()["position"] == 1
    assert first.json()["id"] != second.json()["id"]
    pending = client.get("/v1/overlay/queue").json()["pending"]
    assert [p["text"] for p in pending] == ["Hello there.", "Second one."]
    assert pending[0]["author"] == "ann" and pending[1]["voice"] == "en-gb"


def test_queue_full_is_429(make_client: Callable[..., TestClient]) -> None:
    client = make_client(overlay_queue_size=2)
    for i in range(2):
        assert client.post("/v1/overlay/say", json={"text": f"m{i}"}).status_code == 202
    resp = client.post("/v1/overlay/say", json={"text": "one too many"})
    assert resp.status_code == 429
    assert resp.json() == {"type": "error", "code": "queue_full", "message": resp.json()["message"]}


def test_text_too_long_is_400(make_client: Callable[..., TestClient]) -> None:
    client = make_client(overlay_max_chars=10)
    assert client.post("/v1/overlay/say", json={"text": "x" * 10}).status_code == 202
    resp = client.post("/v1/overlay/say", json={"text": "x" * 11})
    assert resp.status_code == 400
    assert resp.json()["code"] == "text_too_long"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"text": ""}', "invalid_field"),
        (b'{"text": 5}', "invalid_field"),
        (b'{"text": "hi", "voice": 3}', "invalid_field"),
        (b'{"text": "hi", "colour": "red"}', "unknown_field"),
    ],
)
def test_bad_say_bodies_are_400(
    make_client: Callable[..., TestClient], body: bytes, code: str
) -> None:
    client = make_client()
    resp = client.post(
        "/v1/overlay/say", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["type"] == "error" and resp.json()["code"] == code


def test_api_key_required_for_posts_only(make_client: Callable[..., TestClient]) -> None:
    client = make_client(overlay_api_key="s3cret")
    for path, body in [
        ("/v1/overlay/say", {"text": "hi"}),
        ("/v1/overlay/skip", None),
        ("/v1/overlay/clear", None),
    ]:
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert (
            client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).json()
            ["error"]["code"]
            == "unauthorized"
        )
    assert (
        client.post(
            "/v1/overlay/say", json={"text": "a"}, headers={"X-API-Key": "s3cret"}
        ).status_code
        == 202
    )
    ok = client.post(
        "/v1/overlay/say", json={"text": "b"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 202
    assert client.get("/v1/overlay/queue").status_code == 200  # reading needs no key


def test_page_gets_messages_in_order_and_played_advances(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    a = client.post("/v1/overlay/say", json={"text": "first"}).json()["id"]
    b = client.post("/v1/overlay/say", json={"text": "second", "author": "bob"}).json()["id"]
    with client.websocket_connect("/v1/overlay/events") as ws:
        say = ws.receive_json()
        assert say == {"type": "say", "id": a, "text": "first", "voice": "", "author": ""}
        ws.send_json({"type": "played", "id": "not-current"})  # ignored
        ws.send_json({"type": "played", "id": a})
        say = ws.receive_json()
        assert say["id"] == b and say["author"] == "bob"
        ws.send_json({"type": "played", "id": b})
        c = client.post("/v1/overlay/say", json={"text": "third"}).json()
        assert c["position"] == 0
        assert ws.receive_json()["text"] == "third"


def test_skip_and_clear(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    ids = [client.post("/v1/overlay/say", json={"text": f"t{i}"}).json()["id"] for i in range(3)]
    assert client.post("/v1/overlay/skip").json() == {"skipped": None}  # nobody reading yet
    with client.websocket_connect("/v1/overlay/events") as ws:
        assert ws.receive_json()["id"] == ids[0]
        assert client.post("/v1/overlay/skip").json() == {"skipped": ids[0]}
        assert ws.receive_json() == {"type": "skip", "id": ids[0]}
        assert ws.receive_json()["id"] == ids[1]
        assert client.post("/v1/overlay/clear").json() == {"removed": 1, "skipped": ids[1]}
        assert ws.receive_json() == {"type": "skip", "id": ids[1]}
        state = client.get("/v1/overlay/queue").json()
        assert state["current"] is None and state["pending"] == [] and state["listeners"] == 1


def test_unfinished_message_is_requeued_when_the_last_page_leaves(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    a = client.post("/v1/overlay/say", json={"text": "interrupted"}).json()["id"]
    with client.websocket_connect("/v1/overlay/events") as ws:
        assert ws.receive_json()["id"] == a
    state = client.get("/v1/overlay/queue").json()
    assert [p["id"] for p in state["pending"]] == [a] and state["listeners"] == 0
    with client.websocket_connect("/v1/overlay/events") as ws:
        assert ws.receive_json()["id"] == a


def test_two_pages_get_the_same_message_first_report_advances(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    with (
        client.websocket_connect("/v1/overlay/events") as one,
        client.websocket_connect("/v1/overlay/events") as two,
    ):
        a = client.post("/v1/overlay/say", json={"text": "both"}).json()["id"]
        b = client.post("/v1/overlay/say", json={"text": "next"}).json()["id"]
        assert one.receive_json()["id"] == a and two.receive_json()["id"] == a
        two.send_json({"type": "played", "id": a})
        assert one.receive_json()["id"] == b and two.receive_json()["id"] == b
        one.send_json({"type": "played", "id": a})  # late report of the old one: ignored
        one.send_json({"type": "oops"})
        assert one.receive_json()["code"] == "invalid_message"
        assert client.get("/v1/overlay/queue").json()["current"]["id"] == b


def test_queue_rejects_nonsense_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OverlayQueue(0, 100)
