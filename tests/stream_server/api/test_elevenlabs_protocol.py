"""The ElevenLabs-compatible protocol, sans I/O: query, client messages, server messages, alignment."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_server.api.elevenlabs_protocol import (
    Alignment,
    AudioMessage,
    CloseContext,
    CloseSocket,
    EndOfInput,
    ErrorMessage,
    FinalMessage,
    Flush,
    KeepAlive,
    SendText,
    VoiceSettings,
    encode_server_message,
    estimate_alignment,
    parse_client_message,
)
from stream_server.api.elevenlabs_query import OUTPUT_FORMATS, ElevenLabsError, parse_query


def parse(obj: Any, *, multi: bool = True, max_chars: int = 100) -> Any:
    return parse_client_message(json.dumps(obj), multi=multi, max_chars=max_chars)


# --------------------------------------------------------------------------- query


def test_query_defaults_match_elevenlabs() -> None:
    p = parse_query("low", [], multi=False)
    assert p.output_format.name == "mp3_44100_128" and p.output_format.codec == "mp3"
    assert p.inactivity_timeout_s == 20 and not p.sync_alignment and p.seed is None


def test_query_pipecat_url_parses() -> None:
    items = [("model_id", "eleven_flash_v2_5"), ("output_format", "pcm_16000"), ("auto_mode", "true"),
             ("enable_ssml_parsing", "false"), ("language_code", "en")]
    p = parse_query("low", items, multi=True)
    assert (p.output_format.codec, p.output_format.sample_rate) == ("pcm_s16le", 16000)
    assert p.auto_mode and p.multi and p.model_id == "eleven_flash_v2_5" and p.language_code == "en"


def test_query_livekit_url_parses() -> None:
    items = [("model_id", "eleven_turbo_v2_5"), ("output_format", "mp3_22050_32"), ("enable_ssml_parsing", "false"),
             ("enable_logging", "true"), ("inactivity_timeout", "180"), ("apply_text_normalization", "auto"),
             ("sync_alignment", "true")]
    p = parse_query("low", items, multi=True)
    assert p.inactivity_timeout_s == 180 and p.sync_alignment and p.output_format.bitrate == 32000


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([("output_format", "wav_44100")], "output_format"),
        ([("inactivity_timeout", "181")], "inactivity_timeout"),
        ([("inactivity_timeout", "0")], "inactivity_timeout"),
        ([("inactivity_timeout", "ten")], "inactivity_timeout"),
        ([("sync_alignment", "yes")], "sync_alignment"),
        ([("apply_text_normalization", "sometimes")], "apply_text_normalization"),
        ([("seed", "-1")], "seed"),
        ([("seed", "4294967296")], "seed"),
        ([("language_code", "english!")], "language_code"),
        ([("seed", "1"), ("seed", "2")], "seed"),
    ],
)
def test_bad_query_is_refused_naming_the_parameter(items: list[tuple[str, str]], param: str) -> None:
    with pytest.raises(ElevenLabsError) as info:
        parse_query("low", items, multi=False)
    assert info.value.param == param and info.value.close_code == 1008


def test_unknown_query_parameters_are_ignored() -> None:
    p = parse_query("low", [("token", "st_abc"), ("new_option", "x"), ("output_format", "ulaw_8000")], multi=True)
    assert p.output_format.codec == "ulaw"


def test_every_output_format_has_a_codec_and_rate() -> None:
    expected = {"pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_32000", "pcm_44100", "pcm_48000",
                "ulaw_8000", "alaw_8000", "mp3_22050_32", "mp3_44100_32", "mp3_44100_64", "mp3_44100_96",
                "mp3_44100_128", "mp3_44100_192", "opus_48000_32", "opus_48000_64", "opus_48000_96",
                "opus_48000_128", "opus_48000_192"}
    assert expected <= set(OUTPUT_FORMATS)
    for name, fmt in OUTPUT_FORMATS.items():
        assert str(fmt.sample_rate) in name


# --------------------------------------------------------------------------- client messages


def test_opening_message_with_settings_and_key() -> None:
    msg = parse({"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "style": 0.0,
                                                 "use_speaker_boost": True, "speed": 1.1},
                 "generation_config": {"chunk_length_schedule": [120, 160, 250, 290]}, "xi_api_key": "k1"},
                multi=False)
    assert msg == SendText(" ", None, False, False,
                           VoiceSettings(1.1, 0.5, 0.8, 0.0, True), (120, 160, 250, 290), "k1")


def test_sdk_spelling_of_the_key_and_its_null_voice_settings() -> None:
    msg = parse({"text": " ", "try_trigger_generation": True, "voice_settings": None,
                 "generation_config": {"chunk_length_schedule": [50]}, "xi-api-key": "k2"}, multi=False)
    assert isinstance(msg, SendText) and msg.api_key == "k2" and msg.try_trigger_generation


def test_text_flush_and_end_in_single_mode() -> None:
    assert parse({"text": "Hello ", "flush": True}, multi=False) == SendText("Hello ", flush=True)
    assert parse({"text": ""}, multi=False) == EndOfInput()
    assert parse({"text": "", "flush": True}, multi=False) == Flush()


def test_multi_context_messages() -> None:
    assert parse({"text": "Hi ", "context_id": "c1"}) == SendText("Hi ", "c1")
    assert parse({"context_id": "c1", "flush": True}) == Flush("c1")
    assert parse({"text": "", "context_id": "c1", "flush": True}) == Flush("c1")
    assert parse({"context_id": "c1", "close_context": True}) == CloseContext("c1")
    assert parse({"text": "", "context_id": "c1"}) == KeepAlive("c1")
    assert parse({"text": ""}) == KeepAlive(None)  # Pipecat's keep-alive before a context exists
    assert parse({"close_socket": True}) == CloseSocket()


@pytest.mark.parametrize(
    "obj",
    [
        {"text": "x", "context_id": "c1"},  # single mode has no contexts
        {"close_socket": True},
        {"text": 5},
        {"text": "x", "flush": "yes"},
        {"text": " ", "voice_settings": {"speed": 1.5}},
        {"text": " ", "voice_settings": {"speed": 0.5}},
        {"text": " ", "voice_settings": {"stability": 2}},
        {"text": " ", "voice_settings": {"pitch": 1}},
        {"text": " ", "generation_config": {"chunk_length_schedule": [10]}},
        {"text": " ", "generation_config": {"chunk_length_schedule": "120"}},
        {"text": "x" * 101},
        {"flush": False},
        {"nonsense": 1},
        [],
        "text",
    ],
)
def test_invalid_messages_are_typed_errors(obj: Any) -> None:
    with pytest.raises(ElevenLabsError) as info:
        parse(obj, multi=False)
    assert info.value.error == "invalid_message" and info.value.close_code == 1008 and info.value.message


def test_close_context_needs_an_id() -> None:
    with pytest.raises(ElevenLabsError):
        parse({"close_context": True})


def test_not_json_is_a_typed_error() -> None:
    for raw in ("{", "", "\x00", "[" * 100_000):
        with pytest.raises(ElevenLabsError):
            parse_client_message(raw, multi=True, max_chars=100_000)


# --------------------------------------------------------------------------- property tests

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_field_names = st.sampled_from(["text", "flush", "try_trigger_generation", "voice_settings", "generation_config",
                                "generator_config", "xi_api_key", "xi-api-key", "authorization", "context_id",
                                "close_context", "close_socket", "pronunciation_dictionary_locators", "other"])
_likely_messages = st.dictionaries(_field_names, _json, max_size=6)
_MESSAGE_TYPES = (SendText, Flush, KeepAlive, EndOfInput, CloseContext, CloseSocket)


def _parse_or_typed_error(raw: str, multi: bool) -> None:
    try:
        msg = parse_client_message(raw, multi=multi, max_chars=50)
    except ElevenLabsError as exc:
        assert exc.error == "invalid_message" and exc.close_code == 1008 and exc.message
        return
    assert isinstance(msg, _MESSAGE_TYPES)
    if isinstance(msg, SendText):
        assert msg.text and len(msg.text) <= 50
        if msg.voice_settings is not None and msg.voice_settings.speed is not None:
            assert 0.7 <= msg.voice_settings.speed <= 1.2
    if not multi:
        assert not isinstance(msg, (KeepAlive, CloseContext, CloseSocket))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_likely_messages, st.booleans())
def test_any_object_of_known_fields_parses_or_is_a_typed_error(obj: dict[str, Any], multi: bool) -> None:
    _parse_or_typed_error(json.dumps(obj), multi)


@settings(max_examples=100, deadline=None)
@given(_json, st.booleans())
def test_any_json_value_parses_or_is_a_typed_error(value: Any, multi: bool) -> None:
    _parse_or_typed_error(json.dumps(value), multi)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_any_text_frame_parses_or_is_a_typed_error(raw: str, multi: bool) -> None:
    _parse_or_typed_error(raw, multi)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30)), max_size=5), st.text(max_size=140))
def test_any_query_parses_or_is_a_typed_error(items: list[tuple[str, str]], voice_id: str) -> None:
    try:
        params = parse_query(voice_id, items, multi=True)
    except ElevenLabsError as exc:
        assert exc.close_code == 1008 and exc.message
        return
    assert params.output_format.name in OUTPUT_FORMATS and 1 <= params.inactivity_timeout_s <= 180


# --------------------------------------------------------------------------- server messages


def test_audio_message_shape_with_camel_case_keys() -> None:
    a = Alignment(("H", "i", " "), (0, 5, 10), (5, 5, 20))
    body = json.loads(encode_server_message(AudioMessage(b"\x01\x02", "c1", a)))
    assert base64.b64decode(body["audio"]) == b"\x01\x02" and body["isFinal"] is None
    assert body["contextId"] == "c1"
    assert body["alignment"] == body["normalizedAlignment"] == {
        "chars": ["H", "i", " "], "charStartTimesMs": [0, 5, 10], "charDurationsMs": [5, 5, 20]}
    plain = json.loads(encode_server_message(AudioMessage(b"", None)))
    assert "contextId" not in plain and plain["alignment"] is None


def test_final_and_error_messages() -> None:
    assert json.loads(encode_server_message(FinalMessage("c2"))) == {"isFinal": True, "contextId": "c2"}
    assert json.loads(encode_server_message(FinalMessage())) == {"isFinal": True}
    err = json.loads(encode_server_message(ErrorMessage("invalid_message", "bad", 1008, "text")))
    assert err == {"message": "bad", "error": "invalid_message", "code": 1008, "param": "text"}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60), st.floats(0, 20_000), st.floats(0, 20_000))
def test_estimated_alignment_is_contiguous_and_ends_with_the_audio(text: str, speech: float, total: float) -> None:
    a = estimate_alignment(text, speech, total)
    assert a.chars == (*text, " ")
    assert len(a.char_start_times_ms) == len(a.char_durations_ms) == len(text) + 1
    assert a.char_start_times_ms[0] == 0 and all(d >= 0 for d in a.char_durations_ms)
    for i in range(len(text)):
        assert a.char_start_times_ms[i] + a.char_durations_ms[i] == a.char_start_times_ms[i + 1]
    assert a.char_start_times_ms[-1] + a.char_durations_ms[-1] == round(max(0.0, total))


def test_estimated_alignment_spreads_the_text_over_the_speech() -> None:
    a = estimate_alignment("abcd", 400.0, 520.0)
    assert a.char_start_times_ms == (0, 100, 200, 300, 400)
    assert a.char_durations_ms == (100, 100, 100, 100, 120)
