"""Hypothesis over the /v1/stream message parser: any input is a message or a ``ProtocolError`` from
the table (never another exception), and every valid message survives encode -> parse."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_server.errors import ERROR_TABLE, ProtocolError
from stream_server.protocol import (
    MAX_VOICE_CHARS,
    SAMPLE_RATES,
    Clear,
    ClientMessage,
    End,
    Flush,
    ProtocolLimits,
    Start,
    StartOptions,
    Text,
    encode_client_message,
    parse_client_message,
)

LIMITS = ProtocolLimits(max_message_chars=200, default_format="opus")
# derandomize: the same examples every run, so a CI failure reproduces
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
PARSER_CODES = {"invalid_json", "unknown_type", "unknown_field", "invalid_field", "text_too_long",
                "unsupported_format", "unsupported_sample_rate"}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=6,
)
field_names = st.sampled_from(["type", "text", "voice", "format", "sample_rate", "options", "speed",
                               "nfe", "seed", "cfg_strength", "extra"]) | st.text(max_size=8)
message_types = st.sampled_from(["start", "text", "flush", "clear", "end", "ready", ""]) | st.text(max_size=8)


@st.composite
def message_like_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Objects close to real messages: a known type (mostly) and fields of any JSON type."""
    obj = draw(st.dictionaries(field_names, json_values, max_size=5))
    if draw(st.booleans()):
        obj["type"] = draw(message_types)
    if obj.get("type") == "start" and draw(st.booleans()):
        obj["options"] = draw(st.dictionaries(field_names, json_values, max_size=4))
    return obj


def _parse_or_error(raw: str) -> ClientMessage | ProtocolError:
    try:
        return parse_client_message(raw, LIMITS)
    except ProtocolError as exc:
        assert exc.code in PARSER_CODES and exc.code in ERROR_TABLE
        assert exc.message and len(exc.message) < 300
        return exc


@FUZZ
@given(st.text(max_size=300))
def test_any_text_frame_is_a_message_or_a_protocol_error(raw: str) -> None:
    _parse_or_error(raw)


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_decoded_leniently_are_handled(raw: bytes) -> None:
    _parse_or_error(raw.decode("utf-8", errors="replace"))


@FUZZ
@given(message_like_objects())
def test_message_like_objects_are_handled(obj: dict[str, Any]) -> None:
    result = _parse_or_error(json.dumps(obj))
    if isinstance(result, ClientMessage):  # type: ignore[misc, arg-type]
        assert type(result).type == obj["type"]
        allowed = {"type", "voice", "format", "sample_rate", "options"} if obj["type"] == "start" else {"type", "text"}
        assert set(obj) <= allowed


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=5000))
def test_deeply_nested_json_is_rejected_cleanly(depth_extra: int, width: int) -> None:
    raw = "[" * (1000 + depth_extra * 100) + "]" * (1000 + depth_extra * 100)
    assert isinstance(_parse_or_error(raw), ProtocolError)
    long = json.dumps({"type": "text", "text": "x" * (LIMITS.max_message_chars + 1 + width)})
    result = _parse_or_error(long)
    assert isinstance(result, ProtocolError) and result.code == "text_too_long"


@st.composite
def valid_messages(draw: st.DrawFn) -> ClientMessage:
    kind = draw(st.sampled_from(["start", "text", "flush", "clear", "end"]))
    if kind == "text":
        return Text(text=draw(st.text(max_size=LIMITS.max_message_chars)))
    if kind != "start":
        return {"flush": Flush, "clear": Clear, "end": End}[kind]()
    fmt = draw(st.none() | st.sampled_from(sorted(SAMPLE_RATES)))
    rates = SAMPLE_RATES[fmt or LIMITS.default_format]
    finite = st.floats(allow_nan=False, allow_infinity=False)
    options = StartOptions(
        speed=draw(st.none() | finite),
        nfe=draw(st.none() | st.integers()),
        seed=draw(st.none() | st.integers()),
        cfg_strength=draw(st.none() | finite),
    )
    return Start(
        voice=draw(st.none() | st.text(min_size=1, max_size=MAX_VOICE_CHARS)),
        format=fmt,  # type: ignore[arg-type]
        sample_rate=draw(st.none() | st.sampled_from(rates)),
        options=options,
    )


@FUZZ
@given(valid_messages())
def test_valid_messages_round_trip(msg: ClientMessage) -> None:
    assert parse_client_message(encode_client_message(msg), LIMITS) == msg


@FUZZ
@given(valid_messages(), st.text(min_size=1, max_size=12).filter(lambda k: k not in
       {"type", "text", "voice", "format", "sample_rate", "options"}), json_values)
def test_an_unknown_field_is_always_named(msg: ClientMessage, name: str, value: Any) -> None:
    obj = json.loads(encode_client_message(msg))
    obj[name] = value
    result = _parse_or_error(json.dumps(obj))
    assert isinstance(result, ProtocolError) and result.code == "unknown_field"
