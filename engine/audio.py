"""Audio post-processing shared by every engine: seam cross-fades and per-segment envelopes.

Everything here works on 1-D ``np.float32`` mono arrays at whatever sample rate the caller uses
(24 kHz for every engine we ship) and is streaming: objects keep a small held-back tail between
calls so output can be emitted as soon as it is final.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

CrossfadeCurve = Literal["linear", "equal_power"]


def crossfade_weights(n: int, curve: CrossfadeCurve = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Fade-out and fade-in weights for an ``n``-sample overlap.

    Returns ``(fade_out, fade_in)``, both float64 of shape ``(n,)``. Samples sit at the centres of
    ``n`` equal steps, so neither weight is exactly 0 or 1 and the curves are mirror images.

    - ``"linear"``: ``fade_out = 1 - fade_in``, so the two weights sum to 1 (up to float64
      rounding) and two identical overlapping signals join back exactly. Use this for chunks cut from
      one continuous signal (vocoder chunks decoded with shared context).
    - ``"equal_power"``: ``cos``/``sin`` quarter waves whose squares sum to 1, keeping the loudness
      of uncorrelated material constant through the fade.
    """
    if n < 0:
        raise ValueError(f"overlap length must be >= 0, got {n}")
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    if curve == "linear":
        fade_in = t
        return 1.0 - fade_in, fade_in
    if curve == "equal_power":
        return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
    raise ValueError(f"unknown cross-fade curve {curve!r} (expected 'linear' or 'equal_power')")


def _as_mono_f32(chunk: np.ndarray) -> np.ndarray:
    arr = np.asarray(chunk)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D mono chunk, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


class CrossFader:
    """Streaming joiner of chunks whose consecutive ends overlap by ``overlap`` samples.

    The producer emits chunk k+1 starting ``overlap`` samples before chunk k ends. ``push`` returns
    the audio that is final now: it holds back the last ``overlap`` samples of every chunk and
    cross-fades them with the first ``overlap`` samples of the next one; ``flush`` returns the held
    tail at the end of the stream. With the linear curve, chunks cut from one signal join back to
    that signal exactly (within float32 rounding). Every chunk must be at least ``overlap`` long.
    """

    def __init__(self, overlap: int, curve: CrossfadeCurve = "linear") -> None:
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0 samples, got {overlap}")
        self.overlap = overlap
        self.curve = curve
        self._fade_out, self._fade_in = crossfade_weights(overlap, curve)
        self._tail: np.ndarray | None = None  # (overlap,) float32, held back from the last push

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add the next chunk (float32 ``(n,)``, ``n >= overlap``); return the now-final samples."""
        x = _as_mono_f32(chunk)
        ov = self.overlap
        if ov == 0:
            return x.copy()
        if x.shape[0] < ov:
            raise ValueError(f"chunk of {x.shape[0]} samples is shorter than the overlap ({ov})")
        if self._tail is not None:
            head = x[:ov].astype(np.float64) * self._fade_in + self._tail * self._fade_out
            x = np.concatenate([head.astype(np.float32), x[ov:]])
        self._tail = x[-ov:].astype(np.float64)
        return x[:-ov].copy()

    def flush(self) -> np.ndarray:
        """Return the held tail (float32 ``(overlap,)``, empty if nothing is held) and reset."""
        tail = self._tail
        self._tail = None
        if tail is None:
            return np.zeros(0, dtype=np.float32)
        return tail.astype(np.float32)

    def reset(self) -> None:
        """Drop any held tail (e.g. on cancel)."""
        self._tail = None


def _ramp_up(n: int) -> np.ndarray:
    """Raised-cosine ramp from exactly 0 to exactly 1 over ``n`` samples, float64 ``(n,)``."""
    if n <= 1:
        return np.ones(n, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)
    return 0.5 - 0.5 * np.cos(np.pi * t)


class SegmentShaper:
    """Streaming per-segment envelope: fade-in, fade-out, then a pause of silence.

    ``process`` applies the fade-in to the first ``fade_in_ms`` of the segment (across chunk
    boundaries) and holds back the last ``fade_out_ms`` worth of samples, since it cannot know which
    samples are last until ``finish``. ``finish`` returns the held tail faded out to exactly 0
    followed by ``pause_ms`` of zeros, and readies the shaper for the next segment. Output length per
    segment = input length + pause samples. All arrays are float32 ``(n,)`` at ``sample_rate``.
    """

    def __init__(
        self, sample_rate: int, fade_in_ms: float, fade_out_ms: float, pause_ms: float
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        for name, value in (
            ("fade_in_ms", fade_in_ms),
            ("fade_out_ms", fade_out_ms),
            ("pause_ms", pause_ms),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.sample_rate = sample_rate
        self.n_fade_in = round(sample_rate * fade_in_ms / 1000)
        self.n_fade_out = round(sample_rate * fade_out_ms / 1000)
        self.n_pause = round(sample_rate * pause_ms / 1000)
        self._fade_in = _ramp_up(self.n_fade_in)
        self._pos = 0  # samples of the current segment seen so far
        self._held = np.zeros(0, dtype=np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Shape the next chunk of the current segment; return the samples that are final now."""
        x = _as_mono_f32(chunk).copy()
        if self._pos < self.n_fade_in and x.shape[0] > 0:
            n = min(self.n_fade_in - self._pos, x.shape[0])
            x[:n] *= self._fade_in[self._pos : self._pos + n]
        self._pos += x.shape[0]
        buf = np.concatenate([self._held, x]) if self._held.shape[0] else x
        keep = min(self.n_fade_out, buf.shape[0])
        self._held = buf[buf.shape[0] - keep :]
        return buf[: buf.shape[0] - keep]

    def finish(self) -> np.ndarray:
        """End the segment: the held tail faded out to 0, then the pause; float32 ``(n,)``."""
        tail = self._held.astype(np.float64)
        tail *= _ramp_up(tail.shape[0])[::-1]
        self.reset()
        return np.concatenate([tail.astype(np.float32), np.zeros(self.n_pause, dtype=np.float32)])

    def reset(self) -> None:
        """Forget the current segment (e.g. on cancel) without emitting anything."""
        self._pos = 0
        self._held = np.zeros(0, dtype=np.float32)
