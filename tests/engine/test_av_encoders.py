"""MP3 and Ogg Opus encoders (PyAV): one item per codec frame, decodable, right rate and length."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from engine.av_encoders import MP3_RATES, Mp3FrameEncoder, OggOpusEncoder, mp3_frame_samples
from engine.codec import AudioCodecError, UnsupportedSampleRateError, encoded_seconds, make_encoder
from engine.config import AudioConfig


def tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    container = av.open(io.BytesIO(data), format=fmt)
    frames = list(container.decode(audio=0))
    container.close()
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]), frames[0].sample_rate


def stream(enc, audio: np.ndarray, step: int = 1440) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [p for i in range(0, audio.shape[0], step) for p in enc.encode(audio[i : i + step])] + enc.flush()


@pytest.mark.parametrize("rate", MP3_RATES)
def test_mp3_frames_decode_to_the_right_rate_and_length(rate: int) -> None:
    enc = make_encoder("mp3", rate, AudioConfig(), 24000, bitrate=64000)
    assert isinstance(enc, Mp3FrameEncoder)
    items = stream(enc, tone(1.0))
    assert all(p[0] == 0xFF and p[1] & 0xE0 == 0xE0 for p in items)  # each item starts with a frame sync
    assert sum(encoded_seconds("mp3", rate, p, 20) for p in items) == pytest.approx(enc.duration_s)
    samples, out_rate = decode(b"".join(items), "mp3")
    assert out_rate == rate
    assert samples.shape[0] / rate == pytest.approx(1.0, abs=3 * mp3_frame_samples(rate) / rate)
    assert 0.3 < float(np.abs(samples).max()) < 0.7


@pytest.mark.parametrize("rate", MP3_RATES)
def test_a_segments_mp3_stream_is_as_long_as_the_segment(rate: int) -> None:
    # a segment is sound then its pause: LAME's delay is taken out of the pause, so one MP3 stream
    # per segment does not lengthen each segment by 48-72 ms, and none of the sound is lost
    for seconds in (0.3, 0.77, 1.31):
        sound = tone(seconds)
        audio = np.concatenate([sound, np.zeros(2880, np.float32)])  # + 120 ms of pause at 24 kHz
        enc = make_encoder("mp3", rate, AudioConfig(), 24000, bitrate=64000)
        samples, _ = decode(b"".join(stream(enc, audio)), "mp3")
        want = audio.shape[0] * rate / 24000
        assert abs(samples.shape[0] - want) <= mp3_frame_samples(rate) / 2 + 1, seconds
        # all of the tone is there: after LAME's 1105 samples of delay, to its last sample
        loud = np.flatnonzero(np.abs(samples) > 0.01)
        assert loud[-1] >= 1105 + sound.shape[0] * rate / 24000 - 10, seconds


def test_mp3_of_silence_only_or_of_sound_to_the_end() -> None:
    silence = stream(Mp3FrameEncoder(24000, 24000, 64000), np.zeros(4800, np.float32))
    assert abs(decode(b"".join(silence), "mp3")[0].shape[0] - 4800) <= 288
    enc = Mp3FrameEncoder(24000, 24000, 64000)  # no pause at the end: nothing is dropped
    samples, _ = decode(b"".join(stream(enc, tone(0.5))), "mp3")
    assert samples.shape[0] >= 12000 + 1105  # LAME's delay, then all of the tone


def test_mp3_bitrate_sets_the_frame_size() -> None:
    sizes = {}
    for kbps in (32, 128):
        items = stream(Mp3FrameEncoder(24000, 44100, kbps * 1000), tone(0.5))
        sizes[kbps] = np.median([len(p) for p in items])
    assert sizes[128] == pytest.approx(4 * sizes[32], rel=0.05)  # CBR: 144 * bitrate / rate bytes


def test_ogg_opus_streams_one_page_per_20_ms_and_chains() -> None:
    enc = make_encoder("ogg_opus", 48000, AudioConfig(), 24000, bitrate=64000)
    assert isinstance(enc, OggOpusEncoder)
    first = stream(enc, tone(1.0))
    assert first[0].startswith(b"OggS") and b"OpusHead" in first[0]
    assert all(p.startswith(b"OggS") for p in first)
    assert len(first) == pytest.approx(50, abs=3)  # 20 ms each
    second = stream(OggOpusEncoder(24000, 48000, 32000), tone(0.5))
    samples, rate = decode(b"".join(first + second), "ogg")  # two chained logical streams
    assert rate == 48000
    assert samples.shape[0] / rate == pytest.approx(1.5, abs=0.05)


def test_mp3_quality_reaches_lame() -> None:
    # AudioConfig.mp3_quality is LAME's -q: another setting, another bitstream of the same audio
    audio = tone(1.0) * np.linspace(0.2, 1.0, 24000, dtype=np.float32)
    out = {}
    for q in (3, 7):
        enc = make_encoder("mp3", 24000, AudioConfig(mp3_quality=q), 24000, bitrate=64000)
        out[q] = b"".join(stream(enc, audio))
        assert decode(out[q], "mp3")[0].shape[0] >= 24000
    assert out[3] != out[7]
    with pytest.raises(ValueError, match="mp3_quality"):
        AudioConfig(mp3_quality=10)
    with pytest.raises(ValueError, match="opus_complexity"):
        AudioConfig(opus_complexity=-1)


def test_bad_rates_and_bitrates_are_refused() -> None:
    with pytest.raises(UnsupportedSampleRateError):
        Mp3FrameEncoder(24000, 16000)
    with pytest.raises(AudioCodecError):
        Mp3FrameEncoder(24000, 44100, 100000)
    with pytest.raises(UnsupportedSampleRateError):
        OggOpusEncoder(24000, 24000)
