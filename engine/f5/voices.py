"""F5 voices: reference clips in a folder (``NAME.wav`` + ``NAME.txt``) and uploads.

A voice is a short recording of a speaker plus its transcript; F5 continues the recording with the
new text. Before use a clip is preprocessed as the reference does (``engine.f5.reference_audio``)
and the transcript gets the reference's ending (``fix_reference_text``).

Thread safety: ``VoiceStore`` methods may be called from any thread (the engine thread prepares,
the server's worker threads add and remove); a lock guards the cache and the folder updates.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.base import UnknownVoiceError
from engine.f5.frontend import fix_reference_text
from engine.f5.reference_audio import (
    SAMPLE_RATE,
    VoiceError,
    prepare_reference_audio,
    to_pcm16,
)

__all__ = [
    "PreparedVoice",
    "VoiceError",
    "VoiceExistsError",
    "VoiceStore",
    "VoiceTooLargeError",
]

MAX_TEXT_CHARS = 500
_NAMES_SETTLE_NS = 2_000_000_000  # see VoiceStore.names
_CACHE_SIZE = 32  # prepared voices kept in memory (each <= 12 s * 24 kHz * 4 B = 1.2 MB)

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        self._names: tuple[int, list[str]] | None = None  # (folder mtime_ns, names) of the last scan

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.wav", self.folder / f"{name}.txt"

    def names(self) -> list[str]:
        """Sorted names of the voices that have both ``NAME.wav`` and ``NAME.txt``.

        The listing is cached while the folder's modification time stays the same (files added,
        removed or renamed change it), so a call costs one ``stat`` (every session start asks).
        File times tick coarsely (a few ms), so a folder changed in the last 2 s is always read."""
        try:
            mtime_ns = self.folder.stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return []
        settled = time.time_ns() - mtime_ns > _NAMES_SETTLE_NS
        with self._lock:
            if settled and self._names is not None and self._names[0] == mtime_ns:
                return list(self._names[1])
        names = sorted(
            p.stem
            for p in self.folder.glob("*.wav")
            if _valid_name(p.stem) and p.with_suffix(".txt").is_file()
        )
        with self._lock:
            self._names = (mtime_ns, names)
        return list(names)

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
        """Validate an upload and save it as ``NAME.wav`` + ``NAME.txt``.

        The audio is kept whole, at its own rate and channels, as 16-bit PCM (the format the
        preprocessing works in), so the stored file is what the reference F5-TTS would preprocess
        into the same prompt. Preprocessing runs here once to reject unusable clips and again,
        cached, in ``prepare`` (with the same result).

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
        prepared, rms = prepare_reference_audio(audio, sample_rate)
        buf = io.BytesIO()
        sf.write(buf, to_pcm16(audio), sample_rate, format="WAV", subtype="PCM_16")

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
            self._names = None
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
            self._names = None
