"""The ElevenLabs-compatible WebSockets end to end, with a raw websockets client and a fake engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest

from stream_server.api import elevenlabs_routes
from stream_server.api.elevenlabs_query import OUTPUT_FORMATS, ElevenLabsError
from tests.server_fixtures import SineBurstEngine, make_config, running_server
from tests.stream_server.api.el_client import decode_audio, el_session, el_url

PAUSE_S = 0.12  # audio.pause_ms after every segment
TEXT = "Hello there, this is a test of the compatible API."


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(make_config(), SineBurstEngine()) as url:
        yield url


def expected_s(*segments: str, speed: float = 1.0) -> float:
    engine = SineBurstEngine()
    return sum(engine.samples_for(s, speed) / engine.sample_rate + PAUSE_S for s in segments)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_stream_input_speaks_then_is_final_then_close_1000(server: str) -> None:
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_24000"),
                           [{"text": " "}, {"text": "Hello there, "}, {"text": "this is a test of the compatible API. "},
                            {"text": ""}]))
    assert reply.close_code == 1000 and not reply.errors()
    assert reply.messages[-1] == {"isFinal": True}
    audio_msgs = [m for m in reply.messages if m.get("audio")]
    assert audio_msgs and all(m["isFinal"] is None and "contextId" not in m for m in audio_msgs)
    assert len(reply.audio()) / 2 / 24000 == pytest.approx(expected_s(TEXT), abs=0.002)


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_every_output_format_decodes_to_its_rate_and_length(server: str, fmt: str) -> None:
    reply = run(el_session(el_url(server, "low", query=f"output_format={fmt}"),
                           [{"text": " "}, {"text": TEXT + " "}, {"text": ""}]))
    assert reply.close_code == 1000 and reply.finals() == [None]
    samples, rate = decode_audio(fmt, reply.audio())
    assert rate == OUTPUT_FORMATS[fmt].sample_rate
    # PCM / G.711 are exact; MP3 and Opus add encoder delay and pad their last frame
    slack = 0.002 if fmt.startswith(("pcm", "ulaw", "alaw")) else 0.09
    assert samples.shape[0] / rate == pytest.approx(expected_s(TEXT), abs=slack)
    assert float(np.abs(samples).max()) > 0.2  # the tone is there, not silence


def test_flush_speaks_an_unfinished_sentence_and_the_socket_stays_open(server: str) -> None:
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_16000"),
                           [{"text": " "}, {"text": "No full stop here ", "flush": True}, {"text": "Then more. "},
                            {"text": ""}], pause_s=0.3))
    assert reply.close_code == 1000
    assert len(reply.audio()) / 2 / 16000 == pytest.approx(expected_s("No full stop here", "Then more."), abs=0.002)


def test_try_trigger_generation_and_chunk_schedule_are_accepted(server: str) -> None:
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_16000&auto_mode=true"),
                           [{"text": " ", "generation_config": {"chunk_length_schedule": [50, 120]},
                             "try_trigger_generation": True},
                            {"text": "Short one. ", "try_trigger_generation": True}, {"text": ""}]))
    assert reply.close_code == 1000 and reply.audio()


def test_speed_from_voice_settings_is_our_speed(server: str) -> None:
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_24000"),
                           [{"text": " ", "voice_settings": {"speed": 1.2, "stability": 0.3}}, {"text": TEXT},
                            {"text": ""}]))
    assert len(reply.audio()) / 2 / 24000 == pytest.approx(expected_s(TEXT, speed=1.2), abs=0.002)


def test_multi_stream_contexts_have_their_own_audio_and_finals(server: str) -> None:
    reply = run(el_session(el_url(server, "high", multi=True, query="output_format=pcm_16000"), [
        {"text": " ", "context_id": "a", "voice_settings": {"speed": 1.0}},
        {"text": " ", "context_id": "b"},
        {"text": "First context speaks. ", "context_id": "a"},
        {"text": "Second one too. ", "context_id": "b", "flush": True},
        {"context_id": "a", "flush": True},
        {"context_id": "a", "close_context": True},
        {"context_id": "b", "close_context": True},
        {"close_socket": True},
    ]))
    assert reply.close_code == 1000 and not reply.errors()
    assert sorted(reply.finals(), key=str) == ["a", "b"]
    for cid, text in (("a", "First context speaks."), ("b", "Second one too.")):
        assert len(reply.audio(cid)) / 2 / 16000 == pytest.approx(expected_s(text), abs=0.002)
        last_audio = max(i for i, m in enumerate(reply.messages) if m.get("contextId") == cid and m.get("audio"))
        assert reply.messages.index({"isFinal": True, "contextId": cid}) > last_audio


def test_keep_alives_do_not_close_anything(server: str) -> None:
    reply = run(el_session(el_url(server, "low", multi=True, query="output_format=pcm_16000"), [
        {"text": ""},  # Pipecat's keep-alive before any context
        {"text": " ", "context_id": "k"},
        {"text": "", "context_id": "k"},
        {"text": "Still here. ", "context_id": "k", "flush": True},
        {"context_id": "k", "close_context": True},
        {"close_socket": True},
    ]))
    assert reply.close_code == 1000 and reply.finals() == ["k"]
    assert len(reply.audio("k")) / 2 / 16000 == pytest.approx(expected_s("Still here."), abs=0.002)


def test_close_socket_waits_for_flushed_contexts(server: str) -> None:
    reply = run(el_session(el_url(server, "low", multi=True, query="output_format=pcm_16000"), [
        {"text": "Flushed text is spoken. ", "context_id": "f", "flush": True},
        {"close_socket": True},
    ]))
    assert reply.close_code == 1000 and reply.finals() == ["f"]
    assert len(reply.audio("f")) / 2 / 16000 == pytest.approx(expected_s("Flushed text is spoken."), abs=0.002)


def test_at_most_five_contexts() -> None:
    with running_server(make_config(), SineBurstEngine(delay_s=0.05)) as url:
        messages = [{"text": f"Context number {i} talks for a while. ", "context_id": f"c{i}"} for i in range(6)]
        reply = run(el_session(el_url(url, "low", multi=True, query="output_format=pcm_16000"), messages))
    assert reply.close_code == 1008
    assert reply.errors()[-1]["error"] == "max_contexts" and reply.errors()[-1]["code"] == 1008


def test_close_context_without_flush_is_a_barge_in() -> None:
    with running_server(make_config(), SineBurstEngine(delay_s=0.05)) as url:
        long_text = "This is a long answer that the user interrupts. " * 6
        t0 = time.monotonic()
        reply = run(el_session(el_url(url, "low", multi=True, query="output_format=pcm_16000"), [
            {"text": " ", "context_id": "old"},
            {"text": long_text, "context_id": "old"},
            {"context_id": "old", "close_context": True},
            {"text": "New answer. ", "context_id": "new", "flush": True},
            {"context_id": "new", "close_context": True},
            {"close_socket": True},
        ], pause_s=0.2))
        elapsed = time.monotonic() - t0
    assert reply.close_code == 1000 and reply.finals()[0] == "old" and "new" in reply.finals()
    assert len(reply.audio("old")) / 2 / 16000 < expected_s(long_text.strip()) / 2
    assert len(reply.audio("new")) / 2 / 16000 == pytest.approx(expected_s("New answer."), abs=0.002)
    assert elapsed < 20


def test_sync_alignment_estimates_cover_each_audio_message(server: str) -> None:
    text = "Hello there, this is a test. And here is a second sentence."
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_16000&sync_alignment=true"),
                           [{"text": " "}, {"text": text}, {"text": ""}]))
    audio_msgs = [m for m in reply.messages if m.get("audio")]
    assert len(audio_msgs) == 2  # one per segment
    spoken = ""
    for m in audio_msgs:
        a = m["alignment"]
        assert a == m["normalizedAlignment"]
        assert len(a["chars"]) == len(a["charStartTimesMs"]) == len(a["charDurationsMs"])
        n_bytes = len(__import__("base64").b64decode(m["audio"]))
        assert a["charStartTimesMs"][-1] + a["charDurationsMs"][-1] == round(n_bytes / 2 / 16000 * 1000)
        spoken += "".join(a["chars"])
    assert spoken == "Hello there, this is a test. And here is a second sentence. "


def test_no_alignment_unless_requested(server: str) -> None:
    reply = run(el_session(el_url(server, "low", query="output_format=pcm_16000"),
                           [{"text": "Hi there. "}, {"text": ""}]))
    assert all(m["alignment"] is None for m in reply.messages if m.get("audio"))


def test_many_sentences_wait_for_room_instead_of_busy() -> None:
    config = make_config(max_pending_segments=2)
    text = " ".join(f"Sentence number {i} is here." for i in range(12)) + " "
    with running_server(config, SineBurstEngine()) as url:
        reply = run(el_session(el_url(url, "low", query="output_format=pcm_16000"),
                               [{"text": " "}, {"text": text}, {"text": "And one more. "}, {"text": ""}]))
    assert reply.close_code == 1000 and not reply.errors()
    total = len(reply.audio()) / 2 / 16000
    assert total == pytest.approx(expected_s(*[f"Sentence number {i} is here." for i in range(12)], "And one more."),
                                  abs=0.01)


@pytest.mark.parametrize(
    ("voice", "query", "error"),
    [
        ("nobody", "", "voice_not_found"),
        ("low", "output_format=wav_44100", "invalid_output_format"),
        ("low", "inactivity_timeout=999", "invalid_parameter"),
    ],
)
def test_bad_connection_parameters_get_an_error_then_1008(server: str, voice: str, query: str, error: str) -> None:
    reply = run(el_session(el_url(server, voice, query=query), [{"text": " "}]))
    assert reply.close_code == 1008
    assert reply.messages[0]["error"] == error and reply.messages[0]["code"] == 1008 and reply.messages[0]["message"]


@pytest.mark.parametrize("bad", ['{"text": 3}', "not json", b"\x00\x01", '{"text": " ", "voice_settings": {"speed": 2}}'])
def test_bad_messages_get_an_error_then_1008(server: str, bad: str | bytes) -> None:
    reply = run(el_session(el_url(server, "low"), [bad]))
    assert reply.close_code == 1008 and reply.messages[-1]["error"] == "invalid_message"


def test_default_voice_and_every_key_spelling_are_accepted(server: str) -> None:
    for first in ({"text": " ", "xi_api_key": "k"}, {"text": " ", "xi-api-key": "k"}, {"text": " ", "authorization": "Bearer k"}):
        reply = run(el_session(el_url(server, "default", query="output_format=pcm_16000"),
                               [first, {"text": "Hi. "}, {"text": ""}], headers={"xi-api-key": "k"}))
        assert reply.close_code == 1000 and reply.audio()


def test_a_pending_socket_is_authenticated_by_its_first_message(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def only_good(key: str | None) -> None:
        seen.append(key)
        if key != "good":
            raise ElevenLabsError("unauthorized", "missing or invalid API key")

    monkeypatch.setattr(elevenlabs_routes, "first_message_auth", lambda ws: only_good)
    ok = run(el_session(el_url(server, "low", query="output_format=pcm_16000"),
                        [{"text": " ", "xi_api_key": "good"}, {"text": "Hi. "}, {"text": ""}]))
    assert ok.close_code == 1000 and ok.audio() and seen == ["good"]  # checked once, on the first message
    refused = run(el_session(el_url(server, "low"), [{"text": " ", "xi-api-key": "bad"}, {"text": "Hi. "}]))
    assert refused.close_code == 1008 and refused.messages == [
        {"message": "missing or invalid API key", "error": "unauthorized", "code": 1008}]
    assert seen[-1] == "bad"


def test_inactivity_timeout_closes_an_idle_socket(server: str) -> None:
    t0 = time.monotonic()
    reply = run(el_session(el_url(server, "low", query="inactivity_timeout=1"), [{"text": " "}]))
    assert 0.9 < time.monotonic() - t0 < 10
    assert reply.close_code == 1000 and reply.messages[-1]["error"] == "inactivity_timeout"


def test_livekit_plugin_message_sequence(server: str) -> None:
    """What livekit-plugins-elevenlabs sends (its URL, context init, sentences with flush, an empty
    flushing text, close_context), in LiveKit's default encoding with sync_alignment=true."""
    query = ("model_id=eleven_turbo_v2_5&output_format=mp3_22050_32&enable_ssml_parsing=false"
             "&enable_logging=true&inactivity_timeout=180&apply_text_normalization=auto&sync_alignment=true")
    sentences = ["Hello from LiveKit.", "This is the second sentence."]
    reply = run(el_session(el_url(server, "low", multi=True, query=query), [
        {"text": " ", "voice_settings": {"stability": 0.71, "similarity_boost": 0.5, "speed": 1.0}, "context_id": "lk1"},
        {"text": sentences[0] + " ", "context_id": "lk1", "flush": True},
        {"text": sentences[1] + " ", "context_id": "lk1", "flush": True},
        {"text": "", "context_id": "lk1", "flush": True},
        {"context_id": "lk1", "close_context": True},
        {"close_socket": True},
    ]))
    assert reply.close_code == 1000 and not reply.errors() and reply.finals() == ["lk1"]
    audio_msgs = [m for m in reply.messages if m.get("audio")]
    assert [("".join(m["normalizedAlignment"]["chars"])) for m in audio_msgs] == [s + " " for s in sentences]
    data = reply.audio("lk1")
    samples, rate = decode_audio("mp3_22050_32", data)
    assert len(data) * 8 / (samples.shape[0] / rate) < 40000  # the 32 kbit/s the format names
    # each segment is its own MP3 stream, as long as the segment within half a frame (13 ms)
    assert rate == 22050 and samples.shape[0] / rate == pytest.approx(expected_s(*sentences), abs=0.03)
