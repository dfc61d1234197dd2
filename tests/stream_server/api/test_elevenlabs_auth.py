"""The ElevenLabs sockets with API keys on: a client without a valid key learns nothing about which
voice ids exist (the key is checked before the voice is looked up), whether the key comes in the
``xi-api-key`` header or in the first message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from stream_server.app import create_app
from stream_server.auth import AccessControl
from tests.server_fixtures import SineBurstEngine, make_config, serve_app
from tests.stream_server.api.el_client import ElReply, el_session, el_url

KEY = "el-test-key-0123456789abcdef"
UNAUTHORIZED = {"message": "missing or invalid API key", "error": "unauthorized", "code": 1008}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    cfg = make_config(key_requests_per_minute=0, key_max_sessions=0)
    app = create_app(cfg, SineBurstEngine(), access=AccessControl(cfg.server, (KEY,)))
    with serve_app(app, cfg) as url:
        yield url


def _session(url: str, voice: str, multi: bool, first: dict[str, Any],
             headers: dict[str, str] | None = None) -> ElReply:
    """``first``, one sentence, then the end of the socket (close 1000 when all goes well)."""
    messages: list[dict[str, Any] | str | bytes] = (
        [{**first, "context_id": "c1"}, {"text": "Hi. ", "context_id": "c1", "flush": True},
         {"close_socket": True}]
        if multi else [first, {"text": "Hi. "}, {"text": ""}]
    )
    return asyncio.run(el_session(el_url(url, voice, multi=multi), messages, headers=headers, timeout_s=20))


CASES = [  # (header key, first message): none of them authenticates
    (None, {"text": " "}),
    (None, {"text": " ", "xi_api_key": "wrong-key-0123456789"}),
    (None, {"text": " ", "xi-api-key": "wrong-key-0123456789"}),
    ("wrong-key-0123456789", {"text": " "}),
]


@pytest.mark.parametrize("multi", [False, True], ids=["stream-input", "multi-stream-input"])
@pytest.mark.parametrize(("header", "first"), CASES, ids=["no-key", "wrong-xi_api_key", "wrong-xi-api-key",
                                                          "wrong-header"])
def test_without_a_valid_key_an_unknown_voice_gets_the_auth_refusal(
        server: str, multi: bool, header: str | None, first: dict[str, Any]) -> None:
    headers = {"xi-api-key": header} if header else None
    for voice in ("nobody-0123456789", "default"):  # the same answer whether the voice exists or not
        reply = _session(server, voice, multi, first, headers)
        assert reply.messages == [UNAUTHORIZED], (voice, reply.messages)
        assert reply.close_code == 1008


@pytest.mark.parametrize("multi", [False, True], ids=["stream-input", "multi-stream-input"])
@pytest.mark.parametrize("where", ["header", "xi_api_key", "xi-api-key"])
def test_with_a_valid_key_an_unknown_voice_is_voice_not_found(server: str, multi: bool, where: str) -> None:
    headers = {"xi-api-key": KEY} if where == "header" else None
    first: dict[str, Any] = {"text": " "} if where == "header" else {"text": " ", where: KEY}
    reply = _session(server, "nobody-0123456789", multi, first, headers)
    assert [m["error"] for m in reply.messages] == ["voice_not_found"], reply.messages
    assert reply.messages[0]["code"] == 1008 and reply.close_code == 1008
    known = _session(server, "default", multi, first, headers)  # the same key and a voice that exists
    assert known.errors() == [] and known.close_code == 1000, known.messages
    assert known.audio("c1" if multi else None)
