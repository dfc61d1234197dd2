"""Opus round trip, packet accounting, and streaming PCM resampling without seams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

from engine.base import InvalidOptionError
from engine.codec import (
    PCM_RATES,
    AudioCodecError,
    AudioEncoder,
    OpusFrameDecoder,
    OpusFrameEncoder,
    PcmEncoder,
    StreamingResampler,
    UnsupportedAudioFormatError,
    UnsupportedSampleRateError,
    make_encoder,
)
from engine.config import AudioConfig

SR = 24000


def tone(freq: float, n: int, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def speech_like(n: int, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Harmonic series on a gliding 110-220 Hz pitch with a syllable-rate envelope, float32 (n,)."""
    t = np.arange(n) / sr
    f0 = 110 + 110 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    rng = np.random.default_rng(seed)
    x = x * env + 0.02 * rng.standard_normal(n)
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def encode_in_pieces(enc: AudioEncoder, x: np.ndarray, piece: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, x.shape[0], piece):
        out += enc.encode(x[i : i + piece])
    return out + enc.flush()


def aligned_snr_db(ref: np.ndarray, y: np.ndarray, lags: range) -> tuple[float, int]:
    """Best SNR over integer delays of y relative to ref (the codec adds its lookahead)."""
    best = (-math.inf, 0)
    n = ref.shape[0] - 1000
    for lag in lags:
        seg = y[lag : lag + n]
        if seg.shape[0] < n:
            break
        err = ref[:n] - seg
        snr = 10 * np.log10(np.sum(ref[:n] ** 2) / max(np.sum(err**2), 1e-20))
        if snr > best[0]:
            best = (snr, lag)
    return best


@pytest.mark.parametrize("signal", ["tone", "speech"])
def test_opus_round_trip(signal: str) -> None:
    n = SR + 333  # not a multiple of the 480-sample frame
    x = tone(440, n) if signal == "tone" else speech_like(n)
    enc = OpusFrameEncoder()
    packets = encode_in_pieces(enc, x, 1234)
    assert len(packets) == math.ceil(n / 480)
    assert all(isinstance(p, bytes) and 0 < len(p) < 400 for p in packets)
    assert enc.samples_encoded == len(packets) * 480
    assert enc.duration_s == pytest.approx(len(packets) * 0.02)

    dec = OpusFrameDecoder()
    frames = [dec.decode(p) for p in packets]
    assert all(f.dtype == np.float32 and f.shape == (480,) for f in frames)
    y = np.concatenate(frames)
    assert y.shape[0] == math.ceil(n / 480) * 480  # padded duration

    # align for the codec delay (lookahead) and compare the waveform
    snr, lag = aligned_snr_db(x, y, range(enc.lookahead - 3, enc.lookahead + 4))
    if signal == "speech":  # aperiodic, so the best delay over a wide range is unambiguous
        assert aligned_snr_db(x, y, range(0, 800))[1] == lag
    assert snr > 10.0  # 32 kbps Opus keeps these waveforms well above 10 dB
    seg = y[lag : lag + n - 1000]
    corr = np.corrcoef(x[: n - 1000], seg)[0, 1]
    assert corr > 0.95


def test_opus_last_partial_frame_is_padded_with_silence() -> None:
    x = tone(440, 480 * 3 + 100)
    enc = OpusFrameEncoder()
    packets = enc.encode(x)
    assert len(packets) == 3  # the partial frame waits
    tail = enc.flush()
    assert len(tail) == 1
    assert enc.flush() == []
    dec = OpusFrameDecoder()
    y = np.concatenate([dec.decode(p) for p in packets + tail])
    la = enc.lookahead
    # audio present right up to the real end, then (after the codec delay) near-silence
    assert np.sqrt(np.mean(y[480 * 3 + la - 100 : 480 * 3 + la + 80] ** 2)) > 0.1
    assert np.max(np.abs(y[480 * 3 + la + 100 + 60 :])) < 0.05


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_opus_frame_lengths(frame_ms: int) -> None:
    enc = OpusFrameEncoder(frame_ms=frame_ms)
    x = speech_like(SR // 2)
    packets = enc.encode(x) + enc.flush()
    frame = SR * frame_ms // 1000
    assert len(packets) == math.ceil(x.shape[0] / frame)
    dec = OpusFrameDecoder()
    assert {dec.decode(p).shape[0] for p in packets} == {frame}


def test_opus_encoder_resamples_when_rates_differ() -> None:
    enc = OpusFrameEncoder(sample_rate=48000, in_rate=SR)
    x = tone(440, SR)
    packets = encode_in_pieces(enc, x, 777)
    assert len(packets) == 50  # 1 s at 48 kHz = 50 frames of 960 samples
    y = np.concatenate([OpusFrameDecoder(48000).decode(p) for p in packets])
    spectrum = np.abs(np.fft.rfft(y[2000:42000]))
    assert np.fft.rfftfreq(40000, 1 / 48000)[np.argmax(spectrum)] == pytest.approx(440, abs=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 22050},
        {"bitrate": 5000},
        {"bitrate": 600000},
        {"frame_ms": 25},
        {"application": "music"},
        {"complexity": 11},
    ],
)
def test_opus_encoder_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(AudioCodecError):
        OpusFrameEncoder(**kwargs)  # type: ignore[arg-type]


def test_opus_decoder_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="Opus"):
        OpusFrameDecoder().decode(b"\xff\xff\xff")
    with pytest.raises(UnsupportedSampleRateError):
        OpusFrameDecoder(44100)


@pytest.mark.parametrize("out_rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_resampler_matches_whole_signal(out_rate: int) -> None:
    x = speech_like(SR // 2 + 17)
    whole = torchaudio.functional.resample(torch.from_numpy(x), SR, out_rate).numpy()
    rs = StreamingResampler(SR, out_rate)
    rng = np.random.default_rng(1)
    pieces, i = [], 0
    while i < x.shape[0]:
        step = int(rng.integers(1, 900))
        pieces.append(rs.process(x[i : i + step]))
        i += step
    pieces.append(rs.flush())
    y = np.concatenate(pieces)
    assert y.shape == whole.shape
    np.testing.assert_allclose(y, whole, atol=1e-5)


def decode_s16(chunks: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32767.0


@pytest.mark.parametrize("out_rate", PCM_RATES)
def test_pcm_every_rate_length_tone_and_no_seams(out_rate: int) -> None:
    n = SR  # 1 s
    x = tone(440, n, amp=0.8)
    enc = PcmEncoder(in_rate=SR, out_rate=out_rate, chunk_ms=20)
    chunks = encode_in_pieces(enc, x, 500)  # 500 input samples never align with output chunks
    chunk_bytes = round(out_rate * 0.02) * 2
    assert all(len(c) == chunk_bytes for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_bytes
    y = decode_s16(chunks)
    assert y.shape[0] == math.ceil(n * out_rate / SR)
    assert enc.samples_encoded == y.shape[0]
    # the tone's frequency survives resampling
    core = y[out_rate // 10 : -out_rate // 10]
    spectrum = np.abs(np.fft.rfft(core * np.hanning(core.shape[0])))
    peak_hz = np.fft.rfftfreq(core.shape[0], 1 / out_rate)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(440, abs=2)
    # no seams: no step larger than the tone's own largest step (+ s16 rounding)
    own_step = 0.8 * 2 * np.sin(np.pi * 440 / out_rate)
    assert np.max(np.abs(np.diff(core))) <= own_step * 1.01 + 2 / 32767


def test_pcm_is_little_endian_s16_and_clipped() -> None:
    enc = PcmEncoder(out_rate=SR)
    chunks = enc.encode(np.array([0.5, -2.0, 2.0] + [0.0] * 477, np.float32))
    assert len(chunks) == 1 and len(chunks[0]) == 960
    vals = np.frombuffer(chunks[0][:6], dtype="<i2")
    assert vals.tolist() == [16384, -32767, 32767]


def test_make_encoder_and_protocol() -> None:
    audio = AudioConfig()
    opus = make_encoder("opus", 24000, audio)
    pcm = make_encoder("pcm_s16le", 16000, audio)
    for enc in (opus, pcm):
        assert isinstance(enc, AudioEncoder)
        assert enc.frame_ms == audio.frame_ms
    assert (opus.format, opus.out_rate) == ("opus", 24000)
    assert (pcm.format, pcm.out_rate) == ("pcm_s16le", 16000)
    with pytest.raises(UnsupportedAudioFormatError, match="format") as fmt_err:
        make_encoder("aac", 24000, audio)
    assert isinstance(fmt_err.value, InvalidOptionError)
    assert fmt_err.value.code == "unsupported_format"
    with pytest.raises(UnsupportedSampleRateError, match="22050") as rate_err:
        make_encoder("opus", 22050, audio)
    assert rate_err.value.code == "unsupported_sample_rate"
    with pytest.raises(ValueError, match="11025"):
        make_encoder("pcm_s16le", 11025, audio)


def test_opus_packets_equal_opuslibs_own_encoder() -> None:
    """The direct (GIL-holding) libopus call produces exactly what opuslib's wrapper does."""
    import opuslib

    x = speech_like(SR // 2)
    ours = OpusFrameEncoder(bitrate=24000, complexity=5)
    ref = opuslib.Encoder(SR, 1, "audio")
    ref.bitrate = 24000
    ref.complexity = 5
    expected = [ref.encode_float(x[i : i + 480].tobytes(), 480) for i in range(0, SR // 2, 480)]
    assert ours.encode(x) == expected


@pytest.mark.parametrize(("in_rate", "out_rate"), [(22050, 24000), (24000, 16000), (24000, 44100)])
def test_sinc_kernel_is_torchaudios(in_rate: int, out_rate: int) -> None:
    from engine.codec import _sinc_kernel

    kernel, width = _sinc_kernel(in_rate, out_rate)
    ref = torchaudio.transforms.Resample(in_rate, out_rate)
    assert width == ref.width
    # numpy's and torch's sin/cos differ in the last float32 bits
    np.testing.assert_allclose(kernel, ref.kernel[:, 0, :].numpy(), atol=1e-5)


def test_codec_and_espeak_do_not_import_torch() -> None:
    """Engine worker processes import these; torch would cost seconds and ~700 MB per process."""
    import subprocess
    import sys

    code = "import sys, engine.codec, engine.audio, engine.espeak; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
