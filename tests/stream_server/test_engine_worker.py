"""The worker side of the engine processes (``stream_server.engine_worker.SegmentRunner``), in-process."""

from __future__ import annotations

from engine.base import SynthOptions
from engine.codec import encoded_seconds
from engine.config import AudioConfig
from stream_server.engine_worker import OpenSpec, SegmentRunner
from tests.server_fixtures import SineBurstEngine

TEXT = "A sentence long enough for a few engine chunks of audio, and then some more of them."


def first_step_seconds(fmt: str, bitrate: int | None) -> float:
    audio = AudioConfig()
    runner = SegmentRunner(SineBurstEngine(), audio)  # type: ignore[arg-type]  # a duck-typed engine
    runner.open(1, OpenSpec(TEXT, "low", SynthOptions(), fmt, 24000, True, bitrate))
    packets, finished = runner.step(1, 0.25, budget_s=60.0)
    assert not finished
    return sum(encoded_seconds(fmt, 24000, p, float(audio.frame_ms)) for p in packets)


def test_a_first_step_brings_its_cushion_in_encoded_audio_even_through_a_codec_delay() -> None:
    # MP3 holds back ~50 ms of what it is fed: counting the engine's samples left the session short
    # of its start-up cushion, so the scheduler gave it a second first step before anyone else
    for fmt, bitrate in (("mp3", 64000), ("opus", None), ("pcm_s16le", None)):
        assert first_step_seconds(fmt, bitrate) >= 0.25, fmt
