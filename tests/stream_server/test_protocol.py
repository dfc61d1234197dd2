"""The sans-I/O protocol: every bad input gets its code; encoding is stable JSON."""

from __future__ import annotations

import json

import pytest

from engine import codec
from stream_server.errors import ERROR_TABLE, ProtocolError
from stream_server.protocol import (
    PROTOCOL_VERSION,
    SAMPLE_RATES,
    Clear,
    Done,
    End,
    Error,
    Flush,
    Flushed,
    ProtocolLimits,
    Ready,
    SegmentDone,
    SegmentStarted,
    Start,
    StartOptions,
    Text,
    encode_client_message,
    encode_server_message,
    parse_client_message,
)

LIMITS = ProtocolLimits(max_message_chars=100)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"type":"text","text":"Hello."}', Text("Hello.")),
        ('{"type":"text","text":""}', Text("")),
        ('{"type":"flush"}', Flush()),
        ('{"type":"clear"}', Clear()),
        ('{"type":"end"}', End()),
        ('{"type":"start"}', Start()),
        (
            '{"type":"start","voice":"en-us","format":"pcm_s16le","sample_rate":16000,'
            '"options":{"speed":1.5,"nfe":7,"seed":3,"cfg_strength":2}}',
            Start("en-us", "pcm_s16le", 16000, StartOptions(1.5, 7, 3, 2.0)),
        ),
        ('{"type":"start","options":{"speed":1}}', Start(options=StartOptions(speed=1.0))),
        ('{"type":"start","voice":null,"options":null}', Start()),
        ('{"type":"start","sample_rate":24000}', Start(sample_rate=24000)),
    ],
)
def test_valid_messages_parse(raw: str, expected: object) -> None:
    assert parse_client_message(raw, LIMITS) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("{", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('"text"', "invalid_json"),
        ("null", "invalid_json"),
        ("{}", "unknown_type"),
        ('{"type": 3}', "unknown_type"),
        ('{"type":"speak"}', "unknown_type"),
        ('{"type":"text","text":"a","lang":"en"}', "unknown_field"),
        ('{"type":"flush","now":true}', "unknown_field"),
        ('{"type":"start","volume":1}', "unknown_field"),
        ('{"type":"start","options":{"pitch":1}}', "unknown_field"),
        ('{"type":"text"}', "invalid_field"),
        ('{"type":"text","text":5}', "invalid_field"),
        ('{"type":"text","text":null}', "invalid_field"),
        ('{"type":"start","voice":7}', "invalid_field"),
        ('{"type":"start","voice":""}', "invalid_field"),
        ('{"type":"start","format":1}', "invalid_field"),
        ('{"type":"start","sample_rate":"16000"}', "invalid_field"),
        ('{"type":"start","sample_rate":16000.0}', "invalid_field"),
        ('{"type":"start","sample_rate":true}', "invalid_field"),
        ('{"type":"start","options":[]}', "invalid_field"),
        ('{"type":"start","options":{"speed":"fast"}}', "invalid_field"),
        ('{"type":"start","options":{"speed":true}}', "invalid_field"),
        ('{"type":"start","options":{"nfe":7.5}}', "invalid_field"),
        ('{"type":"start","options":{"seed":"1"}}', "invalid_field"),
        ('{"type":"start","format":"mp3"}', "unsupported_format"),
        ('{"type":"start","format":"opus","sample_rate":44100}', "unsupported_sample_rate"),
        ('{"type":"start","format":"pcm_s16le","sample_rate":12345}', "unsupported_sample_rate"),
        ('{"type":"start","sample_rate":22050}', "unsupported_sample_rate"),
        ('{"type":"text","text":"' + "a" * 101 + '"}', "text_too_long"),
        ("x" * 5000, "text_too_long"),
    ],
)
def test_bad_messages_raise_their_code(raw: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw, LIMITS)
    assert info.value.code == code
    assert code in ERROR_TABLE
    assert info.value.message


def test_text_at_the_limit_is_accepted() -> None:
    assert parse_client_message(json.dumps({"type": "text", "text": "é" * 100}), LIMITS) == Text("é" * 100)


def test_escaped_text_within_the_limit_is_accepted() -> None:
    raw = json.dumps({"type": "text", "text": "\u4f60" * 100}, ensure_ascii=True)  # 6 chars each
    assert parse_client_message(raw, LIMITS) == Text("\u4f60" * 100)


def test_sample_rate_without_format_is_checked_against_the_default_format() -> None:
    pcm_default = ProtocolLimits(max_message_chars=100, default_format="pcm_s16le")
    assert parse_client_message('{"type":"start","sample_rate":22050}', pcm_default) == Start(sample_rate=22050)


def test_sample_rates_match_what_the_codecs_support() -> None:
    assert SAMPLE_RATES["opus"] == codec.OPUS_RATES
    assert SAMPLE_RATES["pcm_s16le"] == codec.PCM_RATES
    assert SAMPLE_RATES["ulaw"] == SAMPLE_RATES["alaw"] == (8000,)


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (
            Ready(PROTOCOL_VERSION, "s1", "espeak", "cpu", "en-us", "opus", 24000, 20),
            {"type": "ready", "protocol_version": 1, "session_id": "s1", "engine": "espeak", "device": "cpu",
             "voice": "en-us", "format": "opus", "sample_rate": 24000, "frame_ms": 20, "channels": 1, "replica": ""},
        ),
        (SegmentStarted(0, "Hi."), {"type": "segment", "index": 0, "text": "Hi."}),
        (SegmentDone(2, 1500.0, 12.345678, 0.00823045),
         {"type": "segment_done", "index": 2, "audio_ms": 1500.0, "synth_ms": 12.3457, "rtf": 0.0082}),
        (Flushed(None, 0.0, None, 0), {"type": "flushed", "ttfa_ms": None, "audio_ms": 0.0, "rtf": None, "segments": 0}),
        (Done(12.5, 1000.0, 0.01, 3), {"type": "done", "ttfa_ms": 12.5, "audio_ms": 1000.0, "rtf": 0.01, "segments": 3}),
        (Error("busy", "later"), {"type": "error", "code": "busy", "message": "later"}),
    ],
)
def test_server_messages_encode_to_flat_json(msg: object, expected: dict[str, object]) -> None:
    raw = encode_server_message(msg)  # type: ignore[arg-type]
    assert json.loads(raw) == expected
    assert raw.startswith('{"type":')


@pytest.mark.parametrize(
    "msg",
    [Text("a \"quoted\" ü"), Flush(), Clear(), End(), Start(), Start("v", "pcm_s16le", 8000, StartOptions(seed=1))],
)
def test_client_messages_round_trip(msg: object) -> None:
    assert parse_client_message(encode_client_message(msg), LIMITS) == msg  # type: ignore[arg-type]
