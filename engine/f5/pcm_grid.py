"""16-bit PCM measured on a millisecond grid, the way the reference's clip preprocessing sees audio.

The reference F5-TTS preprocesses a reference clip with pydub (F5_FACTS.md 5.4), whose unit is the
whole millisecond, not the sample. To keep exactly the samples the reference keeps, these functions
reproduce its arithmetic on int16 frames ``(n, channels)`` at ``rate`` Hz:

- a clip of ``n`` frames is ``round(1000 * n / rate)`` ms long (half to even);
- the ms range ``[a, b)`` is clamped to that length and maps to frames
  ``[int(a * (rate / 1000.0)), int(b * (rate / 1000.0)))``; a range that runs past the last frame
  (the length is rounded) is completed with zero frames, unless it holds no frame at all;
- a range's level is the integer RMS of all its samples, channels interleaved (no downmix),
  truncated toward zero, in dBFS against full scale 32768;
- joining clips of different rates first raises the lower rate by linear interpolation
  (``upsample_linear``), and the silence the reference appends is made at 11025 Hz.

Pure numpy functions on arrays; no file I/O.
"""

from __future__ import annotations

import functools
import math

import numpy as np

FULL_SCALE = 32768.0  # 16-bit full scale (dBFS reference)
SILENCE_RATE = 11025  # Hz of the reference's silent segments (pydub's default)


def length_ms(n_frames: int, rate: int) -> int:
    """Length in whole milliseconds of ``n_frames`` at ``rate`` Hz (rounded half to even)."""
    return round(1000 * (float(n_frames) / rate))


def _frame_index(ms: np.ndarray | list[int] | int, rate: int) -> np.ndarray:
    """ms -> frame index, ``int(ms * (rate / 1000.0))`` (float64 product, truncated)."""
    return (np.asarray(ms, dtype=np.float64) * (rate / 1000.0)).astype(np.int64)


def ms_slice(pcm: np.ndarray, rate: int, start_ms: int, end_ms: int) -> np.ndarray:
    """Frames of ``pcm`` (int16 (n, channels)) in the ms range ``[start_ms, end_ms)``.

    Both ends are clamped to the clip's length in ms; a range past the last frame is completed with
    zero frames when it holds at least one real frame. Returns a new (m, channels) int16 array.
    """
    n = pcm.shape[0]
    total_ms = length_ms(n, rate)
    first, stop = _frame_index([min(start_ms, total_ms), min(end_ms, total_ms)], rate).tolist()
    out = pcm[first:stop]
    missing = stop - first - out.shape[0]
    if missing > 0 and out.shape[0] > 0:
        out = np.concatenate([out, np.zeros((missing, pcm.shape[1]), np.int16)])
    return np.array(out, dtype=np.int16)


def _power_cumsum(pcm: np.ndarray) -> np.ndarray:
    """(n + 1,) int64 running sum of squared samples over frames (all channels summed; exact)."""
    squares = np.square(pcm.astype(np.int64)).sum(axis=1)
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(squares)])


def window_rms(pcm: np.ndarray, rate: int, start_ms: np.ndarray, end_ms: np.ndarray) -> np.ndarray:
    """Integer RMS of ``ms_slice(pcm, rate, start_ms[i], end_ms[i])`` for every i (int64 array).

    Sums of squares are exact in int64; RMS = trunc(sqrt(sum / samples)) in float64, 0 when empty.
    """
    n, channels = pcm.shape
    total_ms = length_ms(n, rate)
    first = _frame_index(np.minimum(start_ms, total_ms), rate)
    stop = _frame_index(np.minimum(end_ms, total_ms), rate)
    real_stop = np.minimum(stop, n)
    has_data = real_stop > first
    count = np.where(has_data, stop - first, 0)  # zero frames completing the range count too
    cum = _power_cumsum(pcm)
    power = cum[np.where(has_data, real_stop, 0)] - cum[np.where(has_data, first, 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = power.astype(np.float64) / (count * channels).astype(np.float64)
    return np.where(has_data, np.floor(np.sqrt(np.where(has_data, mean, 0.0))), 0).astype(np.int64)


@functools.cache
def max_rms_below(thresh_db: float) -> int:
    """Largest integer RMS whose level ``20 * log(rms / 32768, 10)`` is below ``thresh_db``.

    (RMS 0 is -inf dBFS, always below.) Found by bisection over 0..32768 with the same float
    expression, so comparing integers gives the same answers as comparing levels.
    """

    def below(rms: int) -> bool:
        return rms == 0 or 20 * math.log(rms / FULL_SCALE, 10) < thresh_db

    lo, hi = 0, 32768
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if below(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_rms_at_or_below(thresh_db: float) -> int:
    """Largest integer RMS with ``rms <= 10 ** (thresh_db / 20) * 32768`` (silence test of splits)."""
    return math.floor(10 ** (float(thresh_db) / 20) * FULL_SCALE)


def leading_silence_ms(pcm: np.ndarray, rate: int, thresh_db: float, chunk_ms: int = 10) -> int:
    """ms before the first ``chunk_ms`` block (from 0, every ``chunk_ms``) at or above ``thresh_db``;
    the clip's whole length when there is none."""
    total_ms = length_ms(pcm.shape[0], rate)
    starts = np.arange(0, total_ms, chunk_ms, dtype=np.int64)
    rms = window_rms(pcm, rate, starts, starts + chunk_ms)
    loud = np.flatnonzero(rms > max_rms_below(thresh_db))
    return min(int(starts[loud[0]]), total_ms) if loud.size else total_ms


def _silent_ranges_ms(
    pcm: np.ndarray, rate: int, min_silence_ms: int, thresh_db: float, seek_ms: int
) -> list[list[int]]:
    """[start, end] ms ranges made of silent windows of ``min_silence_ms`` tried every ``seek_ms``.

    Windows start at 0, seek, 2 seek, ... up to (and always including) ``length - min_silence_ms``.
    A window starting more than ``min_silence_ms`` after the previous silent one (and not exactly
    one seek later) opens a new range; anything else extends the current range.
    """
    total_ms = length_ms(pcm.shape[0], rate)
    if total_ms < min_silence_ms:
        return []
    last = total_ms - min_silence_ms
    starts = list(range(0, last + 1, seek_ms))
    if last % seek_ms:
        starts.append(last)
    start_arr = np.asarray(starts, dtype=np.int64)
    rms = window_rms(pcm, rate, start_arr, start_arr + min_silence_ms)
    silent = start_arr[rms <= max_rms_at_or_below(thresh_db)].tolist()
    if not silent:
        return []
    ranges: list[list[int]] = []
    range_start = prev = silent[0]
    for start in silent[1:]:
        if start != prev + seek_ms and start > prev + min_silence_ms:
            ranges.append([range_start, prev + min_silence_ms])
            range_start = start
        prev = start
    ranges.append([range_start, prev + min_silence_ms])
    return ranges


def sounding_ranges_ms(
    pcm: np.ndarray, rate: int, min_silence_ms: int, thresh_db: float, seek_ms: int
) -> list[list[int]]:
    """The [start, end] ms ranges between the silences of ``_silent_ranges_ms``."""
    total_ms = length_ms(pcm.shape[0], rate)
    silences = _silent_ranges_ms(pcm, rate, min_silence_ms, thresh_db, seek_ms)
    if not silences:
        return [[0, total_ms]]
    if silences[0] == [0, total_ms]:
        return []
    ranges: list[list[int]] = []
    prev_end = 0
    for start, end in silences:
        ranges.append([prev_end, start])
        prev_end = end
    if silences[-1][1] != total_ms:
        ranges.append([prev_end, total_ms])
    if ranges[0] == [0, 0]:
        ranges.pop(0)
    return ranges


def split_on_silence(
    pcm: np.ndarray, rate: int, min_silence_ms: int, thresh_db: float, keep_ms: int, seek_ms: int
) -> list[np.ndarray]:
    """The sounding pieces of ``pcm``, each with up to ``keep_ms`` of the silence around it.

    When two pieces' kept silences overlap they meet at the middle of the gap (floor).
    """
    ranges = [
        [start - keep_ms, end + keep_ms]
        for start, end in sounding_ranges_ms(pcm, rate, min_silence_ms, thresh_db, seek_ms)
    ]
    for left, right in zip(ranges, ranges[1:], strict=False):
        if right[0] < left[1]:
            left[1] = right[0] = (left[1] + right[0]) // 2
    total_ms = length_ms(pcm.shape[0], rate)
    return [ms_slice(pcm, rate, max(start, 0), min(end, total_ms)) for start, end in ranges]


def upsample_linear(pcm: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """int16 (n, channels) at ``rate`` -> int16 (m, channels) at ``new_rate`` (> ``rate``).

    Linear interpolation with an integer phase counter, starting from a zero frame, as the
    reference's audio library converts rates: with a = rate / g, b = new_rate / g (g their gcd),
    output m (m = 0 .. b (n - 1) // a) lies after input k = ceil(a m / b), at phase
    d = b k - a m, and is trunc((x[k-1] d + x[k] (b - d)) / b) on samples scaled by 2**16, floored
    back to 16 bits (x[-1] = 0).
    """
    n, channels = pcm.shape
    if n == 0 or new_rate == rate:
        return np.array(pcm, dtype=np.int16)
    g = math.gcd(rate, new_rate)
    a, b = rate // g, new_rate // g
    m = np.arange((b * (n - 1)) // a + 1, dtype=np.int64)
    k = (a * m + b - 1) // b  # index of the current input frame
    d = (b * k - a * m).astype(np.float64)[:, None]
    scaled = pcm.astype(np.float64) * 65536.0
    cur = scaled[k]
    prev = np.where((k >= 1)[:, None], scaled[np.maximum(k - 1, 0)], 0.0)
    out = np.trunc((prev * d + cur * (b - d)) / b).astype(np.int64)
    return (out >> 16).astype(np.int16)


def silence_frames(duration_ms: int, rate: int, channels: int) -> np.ndarray:
    """The reference's ``duration_ms`` of silence (made at 11025 Hz) at ``rate``: zeros, int16
    (m, channels), m = the frame count after ``upsample_linear`` when ``rate`` > 11025."""
    n = int(SILENCE_RATE * (duration_ms / 1000.0))
    if rate > SILENCE_RATE and n > 0:
        g = math.gcd(SILENCE_RATE, rate)
        n = (rate // g * (n - 1)) // (SILENCE_RATE // g) + 1
    return np.zeros((n, channels), np.int16)
