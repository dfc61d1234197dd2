"""G.711 mu-law / A-law in numpy: the ITU reference values, audioop's bytes, the streaming encoder."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from engine.codec import AudioEncoder, UnsupportedSampleRateError, make_encoder
from engine.config import AudioConfig
from engine.g711 import G711Encoder, alaw2lin, lin2alaw, lin2ulaw, ulaw2lin

ALL16 = np.arange(-32768, 32768, dtype=np.int16)


def _audioop():  # type: ignore[no-untyped-def]
    """The stdlib audioop (removed in Python 3.13) or audioop-lts, when installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


def test_reference_code_points() -> None:
    # G.711 tables: mu-law 0xFF/0x7F are +0/-0, 0x80/0x00 the largest magnitudes (+-32124);
    # A-law 0xD5/0x55 are +8/-8 (the smallest step), 0xAA/0x2A +-32256
    assert ulaw2lin(np.array([0xFF, 0x7F, 0x80, 0x00], np.uint8)).tolist() == [0, 0, 32124, -32124]
    assert alaw2lin(np.array([0xD5, 0x55, 0xAA, 0x2A], np.uint8)).tolist() == [8, -8, 32256, -32256]
    assert lin2ulaw(np.array([0, 32767, -32768], np.int16)).tolist() == [0xFF, 0x80, 0x00]
    assert lin2alaw(np.array([0, 32767, -32768], np.int16)).tolist() == [0xD5, 0xAA, 0x2A]


def test_every_code_round_trips_through_its_decoded_value() -> None:
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(lin2alaw(alaw2lin(codes)), codes)
    back = lin2ulaw(ulaw2lin(codes))
    # mu-law has two zeros (0x7F = -0, 0xFF = +0): -0 decodes to 0, which encodes as +0
    assert np.array_equal(back[codes != 0x7F], codes[codes != 0x7F]) and back[0x7F] == 0xFF


def test_quantization_error_is_within_half_a_step() -> None:
    for enc, dec in ((lin2ulaw, ulaw2lin), (lin2alaw, alaw2lin)):
        err = np.abs(dec(enc(ALL16)).astype(np.int32) - ALL16.astype(np.int32))
        rel = err / np.maximum(np.abs(ALL16.astype(np.int32)), 256)
        assert rel.max() < 0.07  # 4 bits of mantissa: ~3 % typical, 6.25 % worst in the log segments


@pytest.mark.skipif(_audioop() is None, reason="audioop removed from this Python and audioop-lts absent")
def test_same_bytes_as_audioop_for_every_16_bit_value() -> None:
    audioop = _audioop()
    raw = ALL16.astype("<i2").tobytes()
    assert lin2ulaw(ALL16).tobytes() == audioop.lin2ulaw(raw, 2)
    assert lin2alaw(ALL16).tobytes() == audioop.lin2alaw(raw, 2)
    codes = np.arange(256, dtype=np.uint8).tobytes()
    assert ulaw2lin(np.frombuffer(codes, np.uint8)).astype("<i2").tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw2lin(np.frombuffer(codes, np.uint8)).astype("<i2").tobytes() == audioop.alaw2lin(codes, 2)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encoder_streams_20_ms_chunks_at_8_khz(law: str) -> None:
    enc = make_encoder(law, 8000, AudioConfig(), in_rate=24000)
    assert isinstance(enc, AudioEncoder) and isinstance(enc, G711Encoder) and enc.format == law
    t = np.arange(24000) / 24000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    chunks = [c for i in range(0, 24000, 1000) for c in enc.encode(tone[i : i + 1000])] + enc.flush()
    assert all(len(c) == 160 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 160
    data = np.frombuffer(b"".join(chunks), np.uint8)
    assert data.shape[0] == 8000  # 1 s at 8 kHz, 1 byte per sample
    decoded = (ulaw2lin(data) if law == "ulaw" else alaw2lin(data)).astype(np.float32) / 32768
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    assert np.abs(decoded[100:-100] - ref[100:-100]).max() < 0.03


def test_g711_is_8_khz_only() -> None:
    with pytest.raises(UnsupportedSampleRateError):
        make_encoder("ulaw", 16000, AudioConfig())
