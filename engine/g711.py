"""G.711 telephony codecs (mu-law and A-law), vectorized in numpy.

The segment search follows the ITU-T G.711 reference (the Sun Microsystems ``g711.c`` that CPython's
deprecated ``audioop`` also used): mu-law encodes the top 14 bits of a 16-bit sample, A-law the top
13, so ``lin2ulaw`` / ``lin2alaw`` here give the same bytes as ``audioop.lin2ulaw(x, 2)`` /
``audioop.lin2alaw(x, 2)`` (a test checks every 16-bit value where ``audioop`` still exists).

``G711Encoder`` is the streaming wire encoder: float32 PCM at the engine's rate in, 8 kHz 8-bit
G.711 bytes out in ``chunk_ms`` chunks (160 bytes = 20 ms), with the same streaming resampler as the
PCM encoder.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from engine.codec import (
    AudioCodecError,
    PcmEncoder,
    UnsupportedSampleRateError,
)

G711Law = Literal["ulaw", "alaw"]
G711_RATE = 8000

_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # 14-bit magnitude limit


def lin2ulaw(pcm: np.ndarray) -> np.ndarray:
    """int16 ``(n,)`` -> mu-law uint8 ``(n,)``."""
    x = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 2  # 14-bit, floor like C's >>
    negative = x < 0
    mask = np.where(negative, 0x7F, 0xFF)
    mag = np.minimum(np.where(negative, -x, x), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")
    code = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def lin2alaw(pcm: np.ndarray) -> np.ndarray:
    """int16 ``(n,)`` -> A-law uint8 ``(n,)`` (even bits inverted, as on the wire)."""
    x = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 3  # 13-bit
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)
    mag = np.where(negative, -x - 1, x)
    seg = np.searchsorted(_ALAW_SEG_END, mag, side="left")
    s = np.minimum(seg, 7)
    quant = np.where(s < 2, mag >> 1, mag >> np.maximum(s, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (s << 4) | quant)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def ulaw2lin(codes: np.ndarray) -> np.ndarray:
    """mu-law uint8 ``(n,)`` -> int16 ``(n,)``."""
    u = (~np.asarray(codes, dtype=np.uint8)).astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def alaw2lin(codes: np.ndarray) -> np.ndarray:
    """A-law uint8 ``(n,)`` -> int16 ``(n,)``."""
    a = np.asarray(codes, dtype=np.uint8).astype(np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


class G711Encoder(PcmEncoder):
    """float32 PCM at ``in_rate`` -> 8 kHz G.711 bytes (1 byte per sample) in ``chunk_ms`` chunks.

    ``PcmEncoder``'s chunking and resampling, companded instead of s16: every message but the last
    holds exactly ``8 * chunk_ms`` bytes; ``flush`` returns the remainder unpadded.
    """

    _bytes_per_sample = 1

    def __init__(self, law: G711Law, in_rate: int = 24000, out_rate: int = G711_RATE,
                 chunk_ms: int = 20) -> None:
        if law not in ("ulaw", "alaw"):
            raise AudioCodecError(f"G.711 law must be 'ulaw' or 'alaw', got {law!r}")
        self._law = law
        super().__init__(in_rate, out_rate, chunk_ms)
        self.format = law
        self._compand = lin2ulaw if law == "ulaw" else lin2alaw

    def _check_rate(self, out_rate: int) -> None:
        if out_rate != G711_RATE:
            raise UnsupportedSampleRateError(f"{self._law} supports sample rate 8000 only; got {out_rate}")

    def _to_bytes(self, s16: np.ndarray) -> bytes:
        return self._compand(s16).tobytes()
