"""F5 voices: reference clips in a folder (``NAME.wav`` + ``NAME.txt``), their preprocessing, uploads.

A voice is a short recording of a speaker plus its transcript; F5 continues the recording with the
new text. Before use a clip is preprocessed as the reference does (F5_FACTS.md 5.4):

1. mono (channel mean);
2. clipped to about 12 s at a silence (``clip_at_silence``);
3. leading/trailing silence (below -42 dBFS) trimmed, 50 ms of silence appended;
4. RMS raised to 0.1 when quieter (the original RMS is kept: F5 scales its output back by
   ``rms / 0.1`` so a quiet voice stays quiet), then resampled to 24 kHz.

The transcript gets the reference's ending (``fix_reference_text``).

Thread safety: ``VoiceStore`` methods may be called from any thread (the engine thread prepares,
the server's worker threads add and remove); a lock guards the cache and the folder updates.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from engine.base import EngineError, UnknownVoiceError
from engine.f5.frontend import fix_reference_text

__all__ = [
    "PreparedVoice",
    "VoiceError",
    "VoiceExistsError",
    "VoiceStore",
    "VoiceTooLargeError",
    "clip_at_silence",
    "prepare_reference_audio",
    "trim_silence",
]

SAMPLE_RATE = 24000
TARGET_RMS = 0.1
MAX_TEXT_CHARS = 500
END_PAD_S = 0.05
# Below this much non-silent audio (after trimming) a clip cannot condition F5 usefully.
MIN_SPEECH_S = 0.5
_CACHE_SIZE = 32  # prepared voices kept in memory (each <= 12 s * 24 kHz * 4 B = 1.2 MB)

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class VoiceError(EngineError):
    """A voice (upload or folder clip) is unusable; the message says why."""

    code = "invalid_voice"


class VoiceExistsError(VoiceError):
    code = "voice_exists"


class VoiceTooLargeError(VoiceError):
    code = "voice_too_large"


@dataclass(frozen=True, eq=False)
class PreparedVoice:
    """A voice ready for F5.

    Attributes:
        name: the voice name (file stem).
        audio: float32 (n,) mono 24 kHz reference clip after preprocessing (RMS >= ~0.1);
            read-only, shared between requests.
        text: the transcript as it is prepended to the generated text (``fix_reference_text``).
        rms: RMS of the clip before it was raised; output is scaled by ``rms / 0.1`` when < 0.1.
    """

    name: str
    audio: np.ndarray
    text: str
    rms: float

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


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
    return _to_24k(mono, sample_rate), rms


def _to_24k(mono: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 (n,) at ``sample_rate`` -> float32 (m,) at 24 kHz (torchaudio's default sinc)."""
    if sample_rate != SAMPLE_RATE:
        waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)).unsqueeze(0)
        mono = torchaudio.functional.resample(waveform, sample_rate, SAMPLE_RATE).squeeze(0).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def _valid_name(name: object) -> bool:
    # Also what keeps paths inside the folder: no "/", "." or ".." can pass.
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def _normalize_text(text: str) -> str:
    # One line, single spaces: the transcript is text for the model, not a document.
    text = " ".join(text.split())
    if not text:
        raise VoiceError("transcript text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise VoiceError(f"transcript text is longer than {MAX_TEXT_CHARS} characters")
    return text


def _write_atomic(path: Path, data: bytes) -> None:
    # Write a hidden temp file in the same folder, then rename: readers never see a partial file.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class VoiceStore:
    """The voices folder: ``NAME.wav`` (any soundfile-readable audio) + ``NAME.txt`` (transcript).

    Args:
        folder: the voices folder; created on the first ``add`` if missing.
        max_upload_bytes: largest accepted upload (encoded audio bytes).
        min_seconds, max_seconds: accepted upload duration before preprocessing.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        max_upload_bytes: int = 10_000_000,
        min_seconds: float = 1.0,
        max_seconds: float = 30.0,
    ) -> None:
        if max_upload_bytes <= 0 or not 0 < min_seconds <= max_seconds:
            raise ValueError("need max_upload_bytes > 0 and 0 < min_seconds <= max_seconds")
        self.folder = Path(folder)
        self.max_upload_bytes = max_upload_bytes
        self.min_seconds = min_seconds
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        # name -> (file fingerprint, prepared voice); LRU order
        self._cache: OrderedDict[str, tuple[tuple[int, ...], PreparedVoice]] = OrderedDict()

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.wav", self.folder / f"{name}.txt"

    def names(self) -> list[str]:
        """Sorted names of the voices that have both ``NAME.wav`` and ``NAME.txt``."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.folder.glob("*.wav")
            if _valid_name(p.stem) and p.with_suffix(".txt").is_file()
        )

    def prepare(self, name: str) -> PreparedVoice:
        """Load and preprocess a voice; cached until its files change (same object returned).

        Raises:
            UnknownVoiceError: no such voice.
            VoiceError: the clip cannot be decoded, is silent, or the transcript is empty.
        """
        if not _valid_name(name):
            raise UnknownVoiceError(f"unknown voice {name!r}")
        wav_path, txt_path = self._paths(name)
        try:
            wav_stat, txt_stat = wav_path.stat(), txt_path.stat()
        except FileNotFoundError:
            raise UnknownVoiceError(f"unknown voice {name!r}") from None
        key = (wav_stat.st_mtime_ns, wav_stat.st_size, txt_stat.st_mtime_ns, txt_stat.st_size)
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and hit[0] == key:
                self._cache.move_to_end(name)
                return hit[1]
        # Decode outside the lock: a slow file must not stall uploads or other voices.
        try:
            audio, sample_rate = sf.read(wav_path, dtype="float32", always_2d=True)
            text = txt_path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise UnknownVoiceError(f"unknown voice {name!r}") from None
        except (sf.LibsndfileError, RuntimeError, UnicodeDecodeError) as exc:
            raise VoiceError(f"voice {name!r} cannot be read: {exc}") from exc
        try:
            fixed_text = fix_reference_text(" ".join(text.split()))
        except ValueError:
            raise VoiceError(f"voice {name!r} has an empty transcript") from None
        clip, rms = prepare_reference_audio(audio, sample_rate)
        clip.flags.writeable = False
        voice = PreparedVoice(name=name, audio=clip, text=fixed_text, rms=rms)
        with self._lock:
            self._cache[name] = (key, voice)
            self._cache.move_to_end(name)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return voice

    def add(self, name: str, audio_bytes: bytes, text: str) -> PreparedVoice:
        """Validate an upload and save it as ``NAME.wav`` (mono float32, 24 kHz) + ``NAME.txt``.

        The audio is kept whole (only downmixed and resampled); preprocessing runs here once to
        reject unusable clips and again, cached, in ``prepare``.

        Returns the prepared voice (its ``duration_s`` is what F5 will use).

        Raises:
            VoiceError: bad name, undecodable audio, duration out of range, silent, bad text.
            VoiceTooLargeError: more than ``max_upload_bytes``.
            VoiceExistsError: a voice of that name exists.
        """
        if not _valid_name(name):
            raise VoiceError("voice name must be 1-64 characters from A-Z a-z 0-9 _ -")
        if len(audio_bytes) > self.max_upload_bytes:
            raise VoiceTooLargeError(f"audio is larger than {self.max_upload_bytes} bytes")
        text = _normalize_text(text)
        audio, sample_rate = self._decode(audio_bytes)
        mono = audio.mean(axis=1, dtype=np.float32)
        prepared, rms = prepare_reference_audio(mono, sample_rate)
        buf = io.BytesIO()
        sf.write(buf, _to_24k(mono, sample_rate), SAMPLE_RATE, format="WAV", subtype="FLOAT")

        wav_path, txt_path = self._paths(name)
        with self._lock:
            if wav_path.exists() or txt_path.exists():
                raise VoiceExistsError(f"voice {name!r} already exists")
            self.folder.mkdir(parents=True, exist_ok=True)
            # The wav first: a voice is listed only once its transcript is in place.
            _write_atomic(wav_path, buf.getvalue())
            try:
                _write_atomic(txt_path, (text + "\n").encode("utf-8"))
            except BaseException:
                wav_path.unlink(missing_ok=True)
                raise
            self._cache.pop(name, None)
        prepared.flags.writeable = False
        return PreparedVoice(name=name, audio=prepared, text=fix_reference_text(text), rms=rms)

    def _decode(self, audio_bytes: bytes) -> tuple[np.ndarray, int]:
        """(float32 (n, channels), sample rate) of an upload, with the duration checked."""
        try:
            info = sf.info(io.BytesIO(audio_bytes))
            duration_s = info.frames / info.samplerate
            if not self.min_seconds <= duration_s <= self.max_seconds:
                raise VoiceError(
                    f"audio is {duration_s:.2f} s; voices must be "
                    f"{self.min_seconds:g}-{self.max_seconds:g} s long"
                )
            audio, sample_rate = sf.read(io.BytesIO(audio_bytes), dtype="float32", always_2d=True)
        except VoiceError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise VoiceError("audio cannot be decoded (use WAV, FLAC or Ogg)") from exc
        if audio.shape[0] == 0:
            raise VoiceError("audio is empty")
        return audio, int(sample_rate)

    def remove(self, name: str) -> None:
        """Delete a voice's files. Raises ``UnknownVoiceError`` when it does not exist."""
        if not _valid_name(name):
            raise UnknownVoiceError(f"unknown voice {name!r}")
        wav_path, txt_path = self._paths(name)
        with self._lock:
            if not (wav_path.exists() or txt_path.exists()):
                raise UnknownVoiceError(f"unknown voice {name!r}")
            # The transcript first, so the voice disappears from names() at once.
            txt_path.unlink(missing_ok=True)
            wav_path.unlink(missing_ok=True)
            self._cache.pop(name, None)
