"""Live fuzzing (issue 10 item 6): Hypothesis-generated WebSocket frame sequences against a running
server (valid and invalid messages interleaved, huge ones, deeply nested JSON, invalid UTF-8,
binary frames, fragments, pings, protocol violations). Never a 1011 or ``internal_error``, never
an exception in the server log, and a well-behaved session running alongside gets all its audio.

Examples are derandomized (the same every run) so the suite stays deterministic; to search more,
set STREAM_TTS_FUZZ_EXAMPLES=500 (random examples, shrunk on failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability_fixtures import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    served,
)
from tests.server_fixtures import SineBurstEngine, collect, make_config, ws_url

_EXAMPLES = int(os.environ.get("STREAM_TTS_FUZZ_EXAMPLES", "0"))
WITNESS = "The well-behaved session speaks while the fuzzer runs."

# --------------------------------------------------------------------------- strategies

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
names = st.sampled_from(["type", "text", "voice", "format", "sample_rate", "options", "speed", "nfe", "x"])
types = st.sampled_from(["start", "text", "flush", "clear", "end", "speak", ""])

valid = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("start")},
        optional={
            "voice": st.sampled_from(["low", "high", "nobody"]),
            "format": st.sampled_from(["opus", "pcm_s16le", "mp3"]),
            "sample_rate": st.sampled_from([8000, 24000, 48000, 11025]),
            "options": st.fixed_dictionaries({}, optional={"speed": st.floats(0.1, 5.0)}),
        },
    ),
    st.builds(lambda t: {"type": "text", "text": t}, st.text(min_size=1, max_size=120)),
    st.sampled_from([{"type": "flush"}, {"type": "clear"}, {"type": "end"}]),
)
mutated = st.dictionaries(names, json_values | types, max_size=4)
nested = st.builds(
    lambda depth, kind: ("[" * depth + "]" * depth) if kind else ('{"a":' * depth + "1" + "}" * depth),
    st.sampled_from([10, 1000, 100_000]),
    st.booleans(),
)

# an action is (kind, payload)
actions = st.one_of(
    st.tuples(st.just("json"), valid | mutated),
    st.tuples(st.just("text"), st.text(max_size=60) | nested),
    st.tuples(st.just("raw_text"), st.binary(max_size=40)),  # often invalid UTF-8
    st.tuples(st.just("binary"), st.binary(max_size=200)),
    st.tuples(st.just("fragments"), st.tuples(valid, st.integers(2, 5), st.booleans())),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("pong"), st.binary(max_size=20)),
    st.tuples(st.just("huge"), st.sampled_from([1_500, 200_000, 2_000_000])),
    st.tuples(st.just("violation"), st.sampled_from(
        ["unmasked", "rsv", "opcode", "lone_continuation", "fragmented_ping", "big_ping", "bad_close"])),
)


async def _perform(ws: RawWebSocket, kind: str, payload: Any) -> None:
    if kind == "json":
        await ws.send_frame(OP_TEXT, json.dumps(payload).encode())
    elif kind == "text":
        await ws.send_frame(OP_TEXT, payload.encode("utf-8", "surrogatepass"))
    elif kind == "raw_text":
        await ws.send_frame(OP_TEXT, payload)
    elif kind == "binary":
        await ws.send_frame(OP_BINARY, payload)
    elif kind == "fragments":
        message, n, ping_between = payload
        data = json.dumps(message).encode()
        step = max(1, len(data) // n)
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        for i, piece in enumerate(pieces):
            await ws.send_frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)
            if ping_between and i < len(pieces) - 1:
                await ws.send_frame(OP_PING, b"between")
    elif kind == "ping":
        await ws.send_frame(OP_PING, payload)
    elif kind == "pong":
        await ws.send_frame(OP_PONG, payload)
    elif kind == "huge":
        await ws.send_frame(OP_TEXT, json.dumps({"type": "text", "text": "a" * payload}).encode())
    elif payload == "unmasked":
        await ws.send_frame(OP_TEXT, b'{"type":"flush"}', mask=False)
    elif payload == "rsv":
        await ws.send_frame(OP_TEXT, b'{"type":"flush"}', rsv=0b010)
    elif payload == "opcode":
        await ws.send_frame(0x3, b"reserved opcode")
    elif payload == "lone_continuation":
        await ws.send_frame(OP_CONT, b"no message to continue")
    elif payload == "fragmented_ping":
        await ws.send_frame(OP_PING, b"x", fin=False)
    elif payload == "big_ping":
        await ws.send_frame(OP_PING, b"p" * 200)
    else:  # bad_close: a 1-byte close payload and an invalid close code
        await ws.send_frame(OP_CLOSE, b"\x03")


# --------------------------------------------------------------------------- the server


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, Any, _Errors]]:
    errors = _Errors()
    logger = logging.getLogger("stream_server")
    logger.addHandler(errors)
    config = make_config(max_message_chars=1000, max_session_chars=3000, max_protocol_errors=6)
    try:
        with served(config, SineBurstEngine()) as (url, _, app):
            yield url, app, errors
    finally:
        logger.removeHandler(errors)


async def _fuzz_session(url: str, sequence: list[tuple[str, Any]]) -> tuple[list[dict[str, Any]], int | None]:
    ws = await RawWebSocket.open(url)
    reader = asyncio.create_task(ws.read_until_close(timeout_s=30))
    try:
        for kind, payload in sequence:
            await _perform(ws, kind, payload)
        await ws.send_frame(OP_TEXT, b'{"type": "end"}')
    except (ConnectionError, OSError):
        pass  # the server closed the connection (a protocol violation): the reader saw why
    messages, _, code = await reader
    await ws.aclose()
    return messages, code


settings_ = settings(
    max_examples=_EXAMPLES or 25,
    derandomize=not _EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings_
@given(sequence=st.lists(actions, min_size=1, max_size=10))
def test_fuzzed_frames_never_crash_the_server_nor_disturb_other_sessions(
    live: tuple[str, Any, _Errors], sequence: list[tuple[str, Any]]
) -> None:
    url, app, errors = live

    async def run() -> None:
        witness = collect(ws_url(url), [{"type": "text", "text": WITNESS}, {"type": "end"}], timeout_s=30)
        (messages, code), got = await asyncio.gather(_fuzz_session(url, sequence), witness)
        assert code != 1011 and "internal_error" not in [m.get("code") for m in messages]
        assert code in (None, 1000, 1002, 1007, 1008, 1009), code
        done = got.messages[-1]
        assert done["type"] == "done" and got.close_code == 1000
        assert len(got.frames) * 20 == pytest.approx(done["audio_ms"]) and done["segments"] == 1
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200

    asyncio.run(run())
    assert [r.getMessage() for r in errors.records] == []


def test_after_fuzzing_nothing_is_left(live: tuple[str, Any, _Errors]) -> None:
    _, app, errors = live
    hub = app.state.hub

    async def settled() -> None:
        for _ in range(500):
            if not hub.connections and hub.scheduler.job_count() == 0 and hub.scheduler.channel_count() == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("sessions left after fuzzing")

    asyncio.run(settled())
    assert errors.records == []
