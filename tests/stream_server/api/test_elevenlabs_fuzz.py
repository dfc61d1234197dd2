"""Hypothesis over whole ElevenLabs-API sessions: any sequence of frames, valid or not, ends in
documented messages and a documented close, never an internal error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_fixtures import SineBurstEngine, make_config, running_server
from tests.stream_server.api.el_client import el_session, el_url

_ids = st.sampled_from(["a", "b", "c", "d", "e", "f", None])
_texts = st.sampled_from(["", " ", "Hello there. ", "How are", " you today? ", "x" * 30, "Ünïcode ✓ 你好。"])


def _with_id(body: dict[str, Any], cid: str | None) -> dict[str, Any]:
    return body if cid is None else {**body, "context_id": cid}


_frames = st.one_of(
    st.builds(lambda t, cid, f: _with_id({"text": t, "flush": f}, cid), _texts, _ids, st.booleans()),
    st.builds(lambda cid: _with_id({"text": " ", "voice_settings": {"speed": 1.1}}, cid), _ids),
    st.builds(lambda cid: _with_id({"flush": True}, cid), _ids),
    st.builds(lambda cid: _with_id({"close_context": True}, cid), _ids),
    st.just({"close_socket": True}),
    st.sampled_from(['{"text": 1}', "nonsense", "[]", '{"text": " ", "voice_settings": {"speed": 9}}', b"\x00"]),
)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(make_config(max_pending_segments=2), SineBurstEngine()) as url:
        yield url


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_frames, min_size=1, max_size=8), st.booleans())
def test_any_session_ends_cleanly(server: str, frames: list[Any], multi: bool) -> None:
    end = {"close_socket": True} if multi else {"text": ""}
    reply = asyncio.run(el_session(el_url(server, "low", multi=multi, query="output_format=pcm_16000"),
                                   [*frames, end], timeout_s=20))
    assert reply.close_code in (1000, 1008)
    for m in reply.messages:
        if "error" in m:
            assert m["code"] == reply.close_code and m["error"] != "internal_error" and m["message"]
        elif m.get("isFinal") is True:
            assert set(m) <= {"isFinal", "contextId"}
        else:
            assert m["audio"] and m["isFinal"] is None
    errors = reply.errors()
    assert len(errors) <= 1 and (not errors or reply.messages[-1] is errors[0])
