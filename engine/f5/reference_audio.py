"""Reference-clip preprocessing for F5, as the reference does it (F5_FACTS.md 5.4):

1. mono (channel mean);
2. clipped to about 12 s at a silence (``clip_at_silence``);
3. leading/trailing silence (below -42 dBFS) trimmed, 50 ms of silence appended;
4. RMS raised to 0.1 when quieter (the original RMS is kept: F5 scales its output back by
   ``rms / 0.1`` so a quiet voice stays quiet), then resampled to 24 kHz.

Pure array functions: no file I/O.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from engine.base import EngineError

SAMPLE_RATE = 24000
TARGET_RMS = 0.1
END_PAD_S = 0.05
# Below this much non-silent audio (after trimming) a clip cannot condition F5 usefully.
MIN_SPEECH_S = 0.5


class VoiceError(EngineError):
    """A voice (upload or folder clip) is unusable; the message says why."""

    code = "invalid_voice"


# --- silence: the split-on-silence idea with numpy (levels in dBFS, full scale = 1.0) -------------
# Clip limits of the reference: keep whole pieces between silences while the result is <= 12 s,
# stopping only once it is over 6 s; each piece keeps up to 1 s of the silence around it.
CLIP_MAX_S = 12.0
CLIP_MIN_S = 6.0
KEEP_SILENCE_S = 1.0
SEEK_S = 0.010
# (min silence length s, threshold dBFS): long quiet pauses first, then short louder ones
CLIP_ATTEMPTS = ((1.0, -50.0), (0.1, -40.0))
TRIM_DB = -42.0
TRIM_CHUNK_S = 0.010


def _silent_ranges(mono: np.ndarray, win: int, step: int, thresh_db: float) -> list[list[int]]:
    """Sample ranges [start, end) covered by windows of ``win`` samples at or below ``thresh_db``.

    Windows start every ``step`` samples (plus one flush with the end); overlapping or touching
    silent windows merge into one range.
    """
    n = len(mono)
    if n < win or win <= 0:
        return []
    cumsum = np.concatenate([[0.0], np.cumsum(np.square(mono, dtype=np.float64))])
    starts = np.arange(0, n - win + 1, step)
    if starts[-1] != n - win:
        starts = np.append(starts, n - win)
    mean_power = (cumsum[starts + win] - cumsum[starts]) / win
    thresh_power = 10.0 ** (thresh_db / 10.0)
    ranges: list[list[int]] = []
    for start in starts[mean_power <= thresh_power].tolist():
        if ranges and start <= ranges[-1][1]:
            ranges[-1][1] = start + win
        else:
            ranges.append([start, start + win])
    return ranges


def _split_on_silence(
    mono: np.ndarray, sample_rate: int, min_silence_s: float, thresh_db: float
) -> list[np.ndarray]:
    """The sounding pieces of ``mono``, each padded with up to 1 s of its surrounding silence."""
    n = len(mono)
    win = round(min_silence_s * sample_rate)
    silent = _silent_ranges(mono, win, max(1, round(SEEK_S * sample_rate)), thresh_db)
    sounding: list[list[int]] = []
    prev_end = 0
    for start, end in silent:
        if start > prev_end:
            sounding.append([prev_end, start])
        prev_end = end
    if prev_end < n:
        sounding.append([prev_end, n])
    keep = round(KEEP_SILENCE_S * sample_rate)
    padded = [[start - keep, end + keep] for start, end in sounding]
    for left, right in zip(padded, padded[1:], strict=False):
        if right[0] < left[1]:  # the kept silences overlap: share the gap at its middle
            left[1] = right[0] = (left[1] + right[0]) // 2
    return [mono[max(start, 0) : min(end, n)] for start, end in padded]


def clip_at_silence(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """Shorten a float (n,) clip to about 12 s, cutting at a silence where there is one.

    Pieces between silences (>= 1 s below -50 dBFS, else >= 100 ms below -40 dBFS) are kept in
    order while the total stays <= 12 s, stopping once it is over 6 s; silences longer than 2 s
    shrink to 2 s. Without a usable silence the clip is cut hard at 12 s.
    """
    max_len = round(CLIP_MAX_S * sample_rate)
    min_len = round(CLIP_MIN_S * sample_rate)
    clipped = mono
    for min_silence_s, thresh_db in CLIP_ATTEMPTS:
        kept: list[np.ndarray] = []
        total = 0
        for piece in _split_on_silence(mono, sample_rate, min_silence_s, thresh_db):
            if total > min_len and total + len(piece) > max_len:
                break
            kept.append(piece)
            total += len(piece)
        clipped = np.concatenate(kept) if kept else mono[:0]
        if len(clipped) <= max_len:
            return clipped
    return clipped[:max_len]


def _leading_silence(mono: np.ndarray, chunk: int, thresh_db: float) -> int:
    """Samples before the first ``chunk``-sized block whose level reaches ``thresh_db``."""
    n = len(mono)
    n_chunks = -(-n // chunk)
    padded = np.zeros(n_chunks * chunk, dtype=np.float64)
    padded[:n] = np.square(mono, dtype=np.float64)
    lengths = np.full(n_chunks, chunk, dtype=np.float64)
    if n_chunks:
        lengths[-1] = n - (n_chunks - 1) * chunk
    mean_power = padded.reshape(n_chunks, chunk).sum(axis=1) / lengths
    loud = np.flatnonzero(mean_power >= 10.0 ** (thresh_db / 10.0))
    return int(loud[0]) * chunk if loud.size else n


def trim_silence(mono: np.ndarray, sample_rate: int, thresh_db: float = TRIM_DB) -> np.ndarray:
    """``mono`` without leading and trailing 10 ms blocks quieter than ``thresh_db`` dBFS."""
    chunk = max(1, round(TRIM_CHUNK_S * sample_rate))
    mono = mono[_leading_silence(mono, chunk, thresh_db) :]
    tail = _leading_silence(mono[::-1], chunk, thresh_db)
    return mono[: len(mono) - tail]


def prepare_reference_audio(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Preprocess a reference clip (steps 1-4 of the module docstring).

    Args:
        audio: float (n,) mono or (n, channels) samples in [-1, 1] at ``sample_rate``.
        sample_rate: Hz.

    Returns:
        (float32 (m,) mono 24 kHz clip, original RMS of the clipped and trimmed mono audio).

    Raises:
        VoiceError: the clip is silent or has less than 0.5 s of sound.
    """
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1 or audio.size == 0:
        raise VoiceError("audio is empty")
    mono = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise VoiceError("audio contains NaN or infinite samples")
    mono = clip_at_silence(mono, sample_rate)
    mono = trim_silence(mono, sample_rate)
    if len(mono) == 0:
        raise VoiceError(f"audio is silent (nothing above {TRIM_DB:g} dBFS)")
    if len(mono) < MIN_SPEECH_S * sample_rate:
        raise VoiceError(f"audio has less than {MIN_SPEECH_S:g} s of sound")
    mono = np.concatenate([mono, np.zeros(round(END_PAD_S * sample_rate), np.float32)])

    # Same order as the reference: RMS measured and raised at the source rate, then resampled.
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if rms < TARGET_RMS:
        mono = mono * np.float32(TARGET_RMS / rms)
    return to_24k(mono, sample_rate), rms


def to_24k(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 (n,) at ``sample_rate`` -> float32 (m,) at 24 kHz (torchaudio's default sinc)."""
    if sample_rate != SAMPLE_RATE:
        waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)).unsqueeze(0)
        mono = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE).squeeze(0).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)
