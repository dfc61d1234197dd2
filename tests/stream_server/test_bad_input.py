"""Every bad input of issue 2 over a real socket: a stable error code, and the session goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.server_fixtures import SineBurstEngine, collect, make_config, running_server, ws_url

TEXT = "A perfectly fine sentence that is long enough."
LONG = " ".join(f"This is sentence number {i} of a rather long utterance." for i in range(6))


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    config = make_config(max_message_chars=200, max_session_chars=400, max_protocol_errors=3)
    with running_server(config, SineBurstEngine(delay_s=0.005)) as base:
        yield ws_url(base)


def errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["code"] for m in messages if m["type"] == "error"]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("this is not json", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        ({"type": "speak", "text": "x"}, "unknown_type"),
        ({"text": "x"}, "unknown_type"),
        ({"type": "text", "text": "x", "lang": "en"}, "unknown_field"),
        ({"type": "text", "text": 42}, "invalid_field"),
        ({"type": "text", "text": "a" * 201}, "text_too_long"),
        ({"type": "start", "voice": "nobody"}, "unknown_voice"),
        ({"type": "start", "format": "mp3"}, "unsupported_format"),
        ({"type": "start", "format": "pcm_s16le", "sample_rate": 11025}, "unsupported_sample_rate"),
        ({"type": "start", "options": {"speed": 9}}, "invalid_option"),
        (b"\x00\x01binary", "binary_not_allowed"),
    ],
)
async def test_bad_input_gets_its_code_and_the_session_goes_on(url: str, bad: Any, code: str) -> None:
    got = await collect(url, [bad, {"type": "text", "text": TEXT}, {"type": "end"}])
    assert errors(got.messages) == [code]
    assert got.messages[-1]["type"] == "done" and got.messages[-1]["segments"] == 1
    assert got.close_code == 1000 and got.frames


async def test_start_after_start_is_already_started(url: str) -> None:
    got = await collect(url, [{"type": "start"}, {"type": "start"}, {"type": "end"}])
    assert errors(got.messages) == ["already_started"]
    assert got.close_code == 1000


async def test_text_over_the_session_limit_is_dropped(url: str) -> None:
    chunk = "word " * 30  # 150 characters
    got = await collect(url, [{"type": "text", "text": chunk}] * 3 + [{"type": "end"}])
    assert errors(got.messages) == ["session_text_limit"]
    assert got.messages[-1]["type"] == "done"


async def test_messages_after_end_are_answered_after_end(url: str) -> None:
    pieces = [{"type": "text", "text": LONG[i : i + 100]} for i in range(0, len(LONG), 100)]
    got = await collect(url, [*pieces, {"type": "end"}, {"type": "text", "text": "late"}, {"type": "clear"}])
    assert errors(got.messages) == ["after_end", "after_end"]
    assert got.messages[-1]["type"] == "done" and got.close_code == 1000
    assert got.messages[-1]["segments"] == 6  # the late clear did not cancel anything


async def test_too_many_protocol_errors_close_with_1008(url: str) -> None:
    got = await collect(url, ["{"] * 5)
    assert errors(got.messages) == ["invalid_json"] * 3 + ["too_many_errors"]
    assert got.close_code == 1008


async def test_max_sessions_answers_overloaded_with_1013() -> None:
    with running_server(make_config(max_sessions=1), SineBurstEngine()) as base:
        async with connect(ws_url(base)) as first:
            await first.send(json.dumps({"type": "start"}))
            assert json.loads(await first.recv())["type"] == "ready"
            second = await collect(ws_url(base), [])
            assert second.messages == [{"type": "error", "code": "overloaded",
                                        "message": "too many sessions; try again later"}]
            assert second.close_code == 1013
            await first.send(json.dumps({"type": "end"}))  # the first session is unaffected
            rest = [json.loads(m) async for m in first if isinstance(m, str)]
            assert rest[-1]["type"] == "done" and first.close_code == 1000


async def test_idle_session_is_closed_after_the_idle_timeout() -> None:
    with running_server(make_config(idle_timeout_s=0.3), SineBurstEngine()) as base:
        async with asyncio.timeout(10):
            got = await collect(ws_url(base), [{"type": "start"}])
    assert [m["type"] for m in got.messages] == ["ready", "error"]
    assert errors(got.messages) == ["idle_timeout"] and got.close_code == 1000


async def test_errors_are_counted_by_code_in_metrics() -> None:
    with running_server(make_config(), SineBurstEngine()) as base:
        await collect(ws_url(base), ["{", {"type": "nope"}, {"type": "end"}])
        async with httpx.AsyncClient(base_url=base) as client:
            text = (await client.get("/metrics")).text
    assert 'stream_tts_errors_total{code="invalid_json"} 1.0' in text
    assert 'stream_tts_errors_total{code="unknown_type"} 1.0' in text
    assert "stream_tts_active_sessions 0.0" in text and "stream_tts_sessions_total 1.0" in text
