"""Reference-clip preprocessing for F5, sample for sample as the reference does it
(F5_FACTS.md 5.4, ``preprocess_ref_audio_text`` then ``infer_batch_process``):

1. quantized to 16-bit PCM (the reference works on the 16-bit WAV it reads and writes back);
2. clipped to about 12 s at a silence (``clip_at_silence``);
3. leading/trailing silence (below -42 dBFS) trimmed, 50 ms of silence appended;
4. mono (channel mean), RMS raised to 0.1 when quieter (the original RMS is kept: F5 scales its
   output back by ``rms / 0.1`` so a quiet voice stays quiet), then resampled to 24 kHz.

Steps 2-3 measure channels interleaved, before the downmix, and work on whole milliseconds
(``engine.f5.pcm_grid``), so the kept samples are exactly the reference's, not just close: a
few samples more at the end change the prompt's last mel frame, and with it the whole generated
mel. Pure array functions: no file I/O.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio

from engine.base import EngineError
from engine.f5.pcm_grid import (
    FULL_SCALE,
    SILENCE_RATE,
    leading_silence_ms,
    length_ms,
    ms_slice,
    silence_frames,
    split_on_silence,
    upsample_linear,
)

SAMPLE_RATE = 24000
TARGET_RMS = 0.1
# Below this much non-silent audio (after trimming) a clip cannot condition F5 usefully.
MIN_SPEECH_S = 0.5


class VoiceError(EngineError):
    """A voice (upload or folder clip) is unusable; the message says why."""

    code = "invalid_voice"


# Clip limits of the reference (ms): keep whole pieces between silences while the result is
# <= 12 s, stopping only once it is over 6 s; each piece keeps up to 1 s of the silence around it.
CLIP_MAX_MS = 12000
CLIP_MIN_MS = 6000
KEEP_SILENCE_MS = 1000
SEEK_MS = 10
# (min silence length ms, threshold dBFS): long quiet pauses first, then short louder ones
CLIP_ATTEMPTS = ((1000, -50.0), (100, -40.0))
TRIM_DB = -42.0
TRIM_CHUNK_MS = 10
END_PAD_MS = 50


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float (n,) or (n, channels) in [-1, 1] -> int16 (n, channels): round(x * 32768), clipped.

    The exact inverse of reading a 16-bit file as float (x = int / 32768), so a 16-bit WAV comes
    back unchanged; anything else is quantized as if saved as 16-bit first.
    """
    frames = audio[:, None] if audio.ndim == 1 else audio
    scaled = np.rint(np.asarray(frames, dtype=np.float64) * FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def clip_at_silence(pcm: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Shorten an int16 (n, channels) clip to about 12 s, cutting at a silence where there is one.

    Pieces between silences (>= 1 s below -50 dBFS, else >= 100 ms below -40 dBFS, windows every
    10 ms) are kept in order while the total stays <= 12 s, stopping once it is over 6 s; silences
    longer than 2 s shrink to 2 s. Without a usable silence the clip is cut hard at 12 s. Pieces
    are joined as the reference joins them, onto an empty 11025 Hz segment, so a clip below
    11025 Hz comes out raised to 11025 Hz.

    Returns (int16 (m, channels), rate of the result).
    """
    out_rate = max(rate, SILENCE_RATE)
    clipped = pcm
    for min_silence_ms, thresh_db in CLIP_ATTEMPTS:
        kept: list[np.ndarray] = [np.zeros((0, pcm.shape[1]), np.int16)]
        n_kept = 0
        for piece in split_on_silence(pcm, rate, min_silence_ms, thresh_db, KEEP_SILENCE_MS, SEEK_MS):
            piece = upsample_linear(piece, rate, out_rate)
            if (
                length_ms(n_kept, out_rate) > CLIP_MIN_MS
                and length_ms(n_kept + piece.shape[0], out_rate) > CLIP_MAX_MS
            ):
                break
            kept.append(piece)
            n_kept += piece.shape[0]
        clipped = np.concatenate(kept)
        if length_ms(n_kept, out_rate) <= CLIP_MAX_MS:
            return clipped, out_rate
    return ms_slice(clipped, out_rate, 0, CLIP_MAX_MS), out_rate


def trim_silence(pcm: np.ndarray, rate: int, thresh_db: float = TRIM_DB) -> np.ndarray:
    """``pcm`` (int16 (n, channels)) without its leading and trailing silence: 10 ms blocks below
    ``thresh_db`` dBFS counted from each end, the cut made on the millisecond grid."""
    head_ms = leading_silence_ms(pcm, rate, thresh_db, TRIM_CHUNK_MS)
    pcm = ms_slice(pcm, rate, head_ms, length_ms(pcm.shape[0], rate))
    tail_ms = leading_silence_ms(pcm[::-1], rate, thresh_db, TRIM_CHUNK_MS)
    if tail_ms > 0:
        pcm = ms_slice(pcm, rate, 0, length_ms(pcm.shape[0], rate) - tail_ms)
    return pcm


def reference_pcm(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """Steps 1-3 of the module docstring: the 16-bit clip the reference writes to its temp WAV.

    Args:
        audio: float (n,) mono or (n, channels) samples in [-1, 1] at ``sample_rate``.
        sample_rate: Hz.

    Returns:
        (int16 (m, channels) clipped, trimmed and padded clip, its rate: ``sample_rate``, or 11025
        for lower rates).

    Raises:
        VoiceError: empty, non-finite, silent, or less than 0.5 s of sound.
    """
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise VoiceError("audio is empty")
    if not np.isfinite(audio).all():
        raise VoiceError("audio contains NaN or infinite samples")
    pcm, rate = clip_at_silence(to_pcm16(audio), int(sample_rate))
    pcm = trim_silence(pcm, rate)
    if pcm.shape[0] == 0:
        raise VoiceError(f"audio is silent (nothing above {TRIM_DB:g} dBFS)")
    if pcm.shape[0] < MIN_SPEECH_S * rate:
        raise VoiceError(f"audio has less than {MIN_SPEECH_S:g} s of sound")
    return np.concatenate([pcm, silence_frames(END_PAD_MS, rate, pcm.shape[1])]), rate


def prepare_reference_audio(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float]:
    """Preprocess a reference clip (steps 1-4 of the module docstring).

    Args:
        audio: float (n,) mono or (n, channels) samples in [-1, 1] at ``sample_rate``.
        sample_rate: Hz.

    Returns:
        (float32 (m,) mono 24 kHz clip, original RMS of the clipped and trimmed mono audio, as
        float32 arithmetic gives it).

    Raises:
        VoiceError: the clip is empty, silent or has less than 0.5 s of sound.
    """
    pcm, rate = reference_pcm(audio, sample_rate)
    # From here on in float32 torch arithmetic, in the reference's order: channel mean, RMS
    # measured and raised at the clip's rate, then resampled.
    wave = torch.from_numpy(np.ascontiguousarray(pcm.T, dtype=np.float32) / np.float32(FULL_SCALE))
    if wave.shape[0] > 1:  # (channels, m)
        wave = torch.mean(wave, dim=0, keepdim=True)
    rms = torch.sqrt(torch.mean(torch.square(wave)))
    if rms < TARGET_RMS:
        wave = wave * TARGET_RMS / rms
    return to_24k(wave.squeeze(0).numpy(), rate), float(rms)


@functools.lru_cache(maxsize=8)
def _resampler(sample_rate: int) -> torchaudio.transforms.Resample:
    # the transform, not torchaudio.functional.resample: its kernel is made differently and the
    # results differ by ~2e-6, and the reference uses the transform
    return torchaudio.transforms.Resample(sample_rate, SAMPLE_RATE)


def to_24k(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 (n,) at ``sample_rate`` -> float32 (m,) at 24 kHz (torchaudio's default sinc)."""
    if sample_rate != SAMPLE_RATE:
        waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)).unsqueeze(0)
        with torch.inference_mode():
            mono = _resampler(sample_rate)(waveform).squeeze(0).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)
