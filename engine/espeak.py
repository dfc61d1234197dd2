"""eSpeak NG engine: real (formant) speech on any CPU, no model files.

The library comes from ``espeakng_loader`` and is driven through ctypes in synchronous mode: one
``espeak_Synth`` call runs a whole text and hands 22050 Hz int16 buffers to a callback. The
library is process-global (one voice, one rate, one callback), so one module-level lock serializes
every call into it, and it is initialised once per process.

eSpeak is fast (about 1 ms of CPU per second of speech on this 2-core machine, twice that under
load) but cannot yield mid-call, so a segment is synthesized piece by piece (``engine.espeak_text``:
clauses, long clauses cut at words, the first piece about 1 s): the first chunk costs only the first
piece, and the engine thread is never held for a whole long segment. With ``espeakENDPAUSE`` each
clause ends with the pause eSpeak would put there inside the whole text. All pieces go through one
streaming resampler to 24 kHz (no seams) and are yielded in ``chunk_ms`` pieces; a cancelled
segment costs no further work.

The ``auto`` voice (the default) reads each segment with the voice of its script: Mandarin for
Chinese characters, Japanese for kana, Korean for Hangul, Russian for Cyrillic, Hindi for
Devanagari, else American English.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine.base import EngineError, SynthOptions, UnknownVoiceError, VoiceInfo
from engine.codec import StreamingResampler
from engine.config import EngineConfig
from engine.espeak_text import PIECE_S, plan_pieces, script_voice, warm_up

ESPEAK_RATE_HZ = 22050  # eSpeak NG's fixed output rate
OUTPUT_RATE_HZ = 24000
DEFAULT_WPM = 175  # eSpeak's default speaking rate; options.speed scales it

# espeak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return errors instead of calling exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
# callback buffer length: every callback re-takes the GIL, which can cost up to the interpreter's
# switch interval (5 ms) while the event loop thread is busy, so few large buffers beat many
# small ones (eSpeak's default is 60 ms, i.e. ~17 callbacks per second of speech)
_BUFFER_MS = 2000
_END_PAUSE = 0x1000  # espeakENDPAUSE: end the text with the pause its final punctuation implies
_PARAM_RATE = 1
_EE_OK = 0
_EE_NOT_FOUND = 2

_TRIM_THRESHOLD = 0.003  # about -50 dBFS: what counts as sound when trimming edge silence
_TRIM_MARGIN_S = 0.010  # silence kept before the first and after the last sound


@dataclass(frozen=True)
class _Voice:
    name: str  # our public name (what clients send)
    espeak_name: str  # what espeak_SetVoiceByName accepts
    language: str
    description: str


# The default voice: each segment is read with the voice of its script (espeak_text.script_voice).
AUTO_VOICE = "auto"
_AUTO_DESCRIPTION = "by script: Mandarin, Japanese, Korean, Russian, Hindi, else American English"
# Curated, not the whole eSpeak list (hundreds, mostly variants): the common languages, each checked
# against the installed data at start-up so only voices that load are listed.
_CURATED = (
    _Voice("en-us", "en-us", "en-US", "English (America)"),
    _Voice("en-gb", "en", "en-GB", "English (Great Britain)"),
    _Voice("cmn", "cmn", "zh-CN", "Chinese (Mandarin)"),
    _Voice("yue", "yue", "zh-HK", "Chinese (Cantonese)"),
    _Voice("ja", "ja", "ja", "Japanese"),
    _Voice("ko", "ko", "ko", "Korean"),
    _Voice("de", "de", "de", "German"),
    _Voice("fr", "fr", "fr-FR", "French (France)"),
    _Voice("es", "es", "es-ES", "Spanish (Spain)"),
    _Voice("it", "it", "it", "Italian"),
    _Voice("pt", "pt", "pt-PT", "Portuguese (Portugal)"),
    _Voice("pt-br", "pt-br", "pt-BR", "Portuguese (Brazil)"),
    _Voice("nl", "nl", "nl", "Dutch"),
    _Voice("ru", "ru", "ru", "Russian"),
    _Voice("hi", "hi", "hi", "Hindi"),
)

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

# Process-global state of the one eSpeak library instance; guarded by _LOCK.
_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_buffers: list[np.ndarray] = []  # int16 blocks of the synthesis in progress
_loaded_voice: str | None = None  # the voice eSpeak has loaded now


def _collect(wav: ctypes._Pointer[ctypes.c_short], n_samples: int, _events: int) -> int:
    """eSpeak's synth callback (called on the synthesizing thread, inside ``_LOCK``)."""
    if n_samples > 0 and wav:
        _buffers.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
    return 0  # 0 = continue


_CALLBACK = _SynthCallback(_collect)  # module-level so ctypes never frees it while eSpeak holds it


def _load_locked() -> ctypes.CDLL:
    """Load and initialise the library once (caller holds ``_LOCK``)."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        import espeakng_loader

        lib_path = espeakng_loader.get_library_path()
        data_path = espeakng_loader.get_data_path()
        lib = ctypes.CDLL(lib_path)
    except (ImportError, OSError, RuntimeError) as exc:
        raise EngineError(f"eSpeak NG library could not be loaded: {exc}") from exc
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
    )
    if rate != ESPEAK_RATE_HZ:
        raise EngineError(
            f"eSpeak NG failed to initialise with data at {data_path} (returned {rate})"
        )
    lib.espeak_SetSynthCallback(_CALLBACK)
    _lib = lib
    return lib


def _synth_locked(
    lib: ctypes.CDLL, text: str, espeak_voice: str, wpm: int, end_pause: bool = False
) -> np.ndarray:
    """One text -> int16 ``(n,)`` at 22050 Hz (caller holds ``_LOCK``). ``end_pause`` appends the
    pause the final punctuation implies (150 ms after a comma, 300 ms after a full stop at 175 wpm).

    Not bit-exact across calls: eSpeak carries synthesizer state from one call to the next, so
    the same text can come out a few samples longer or shorter.
    """
    global _loaded_voice
    if espeak_voice != _loaded_voice:  # loading a voice re-reads its files: 0.2-0.4 ms
        _loaded_voice = None
        rc = lib.espeak_SetVoiceByName(espeak_voice.encode())
        if rc != _EE_OK:
            raise EngineError(f"eSpeak NG could not load voice {espeak_voice!r} (error {rc})")
        _loaded_voice = espeak_voice
    rc = lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
    if rc != _EE_OK:
        raise EngineError(f"eSpeak NG rejected rate {wpm} wpm (error {rc})")
    data = text.encode("utf-8")
    _buffers.clear()
    try:
        flags = _CHARS_UTF8 | (_END_PAUSE if end_pause else 0)
        rc = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
        if rc != _EE_OK:
            raise EngineError(f"eSpeak NG synthesis failed (error {rc})")
        if not _buffers:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(_buffers)
    finally:
        _buffers.clear()


def _trim_edges(
    x: np.ndarray, sample_rate: int, start: bool = True, end: bool = True
) -> np.ndarray:
    """Cut leading (``start``) and/or trailing (``end``) silence down to ``_TRIM_MARGIN_S``;
    all-silent input becomes empty."""
    loud = np.flatnonzero(np.abs(x) > _TRIM_THRESHOLD)
    if loud.shape[0] == 0:
        return x[:0]
    margin = round(_TRIM_MARGIN_S * sample_rate)
    lo = max(0, loud[0] - margin) if start else 0
    hi = loud[-1] + 1 + margin if end else x.shape[0]
    return x[lo:hi]


class EspeakEngine:
    """eSpeak NG behind the ``engine.base.Engine`` interface; 24 kHz float32 output on the CPU.

    Args:
        cfg: engine configuration (``espeak_default_voice`` is used).
        chunk_ms: size of the yielded chunks (the last one may be shorter).
    """

    name = "espeak"
    sample_rate = OUTPUT_RATE_HZ
    device = "cpu"

    def __init__(self, cfg: EngineConfig | None = None, chunk_ms: float = 60.0) -> None:
        cfg = cfg or EngineConfig()
        if not 10.0 <= chunk_ms <= 1000.0:
            raise ValueError(f"chunk_ms must be 10..1000, got {chunk_ms}")
        self.chunk_samples_out = round(OUTPUT_RATE_HZ * chunk_ms / 1000)  # per chunk, at 24 kHz
        self._recipe_kwargs = {"cfg": cfg, "chunk_ms": chunk_ms}
        global _loaded_voice
        with _LOCK:
            lib = _load_locked()
            available = [
                v for v in _CURATED if lib.espeak_SetVoiceByName(v.espeak_name.encode()) == _EE_OK
            ]
            _loaded_voice = None  # the probing above changed it
        self._voices = {v.name: v for v in available}
        if "en-us" in self._voices:  # listed first: it is the default
            auto = _Voice(AUTO_VOICE, "", "mul", _AUTO_DESCRIPTION)
            self._voices = {AUTO_VOICE: auto, **self._voices}
        self.first_piece_s = cfg.espeak_first_piece_s or PIECE_S
        self.default_voice = cfg.espeak_default_voice.strip().lower()
        if self.default_voice not in self._voices:
            raise UnknownVoiceError(
                f"default eSpeak voice {cfg.espeak_default_voice!r} is not available; "
                f"choose one of {', '.join(self._voices)}"
            )

    def worker_recipe(self) -> tuple[str, dict[str, object]]:
        """How a worker process builds the same engine (``"module:callable"``, keyword arguments).

        eSpeak is process-global and not thread-safe, so the server runs one instance per worker
        process to use every core (``[server] workers``).
        """
        return "engine.espeak:EspeakEngine", dict(self._recipe_kwargs)

    def voices(self) -> list[VoiceInfo]:
        """``auto`` and the curated voices present in the installed eSpeak data (en-us and cmn at
        least)."""
        return [VoiceInfo(v.name, v.language, v.description) for v in self._voices.values()]

    def synthesize(
        self, text: str, voice: str, options: SynthOptions, *, fast_start: bool = False
    ) -> Iterator[np.ndarray]:
        """Synthesize one segment; yields float32 ``(n,)`` chunks at 24 kHz in playback order.
        ``fast_start`` makes the first eSpeak call about ``espeak_first_piece_s`` of speech.

        Validates eagerly: ``UnknownVoiceError`` / ``InvalidOptionError`` are raised by this call,
        before a generator exists. ``options.speed`` scales eSpeak's rate (175 wpm at 1.0); other
        options are F5-only and ignored. Empty text yields nothing.
        """
        options.validate()
        key = (voice or self.default_voice).strip().lower()
        spec = self._voices.get(key)
        if spec is None:
            raise UnknownVoiceError(
                f"unknown eSpeak voice {voice!r}; available: {', '.join(self._voices)}"
            )
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        # NUL would end eSpeak's C string early; other control characters read as spaces
        clean = "".join(ch if ch.isprintable() else " " for ch in text).strip()
        wpm = round(DEFAULT_WPM * options.speed)
        if spec.name == AUTO_VOICE:
            spec = self._voices.get(script_voice(clean), self._voices["en-us"])
        return self._chunks(clean, spec.espeak_name, wpm, fast_start)

    def _chunks(
        self, text: str, espeak_voice: str, wpm: int, fast_start: bool
    ) -> Iterator[np.ndarray]:
        """Piece by piece at 22050 Hz (segment edges trimmed), each piece resampled in one call
        (eSpeak returns a whole piece at once; per-call numpy overhead, not the filter, dominated
        when every 60 ms chunk was resampled on its own) and yielded in ``chunk_ms`` slices."""
        pieces = plan_pieces(text, self.first_piece_s if fast_start else PIECE_S, PIECE_S)
        resampler = StreamingResampler(ESPEAK_RATE_HZ, OUTPUT_RATE_HZ)
        started = False  # leading silence is trimmed until the first sound
        step = self.chunk_samples_out
        pending = np.zeros(0, dtype=np.float32)  # < step samples at 24 kHz, not yielded yet
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            with _LOCK:
                pcm16 = _synth_locked(_load_locked(), piece.text, espeak_voice, wpm, piece.end_pause)
            x = _trim_edges(pcm16.astype(np.float32) / 32768.0, ESPEAK_RATE_HZ, not started, last)
            started = started or x.shape[0] > 0
            y = resampler.process(x)
            if last and started:
                y = np.concatenate([y, resampler.flush()])
            y = np.clip(np.concatenate([pending, y]) if pending.shape[0] else y, -1.0, 1.0)
            n_whole = y.shape[0] - y.shape[0] % step if not last else y.shape[0]
            for start in range(0, n_whole, step):
                yield y[start : start + step]
            pending = y[n_whole:]

    def warmup(self) -> float:
        """Synthesize a short phrase per listed voice family (loads dictionaries); returns seconds."""
        t0 = time.perf_counter()
        warm_up()
        opts = SynthOptions()
        for voice in {self.default_voice, "en-us", "cmn"} & set(self._voices):
            text = "你好。" if voice == "cmn" else "Hello."
            for _ in self.synthesize(text, voice, opts):
                pass
        return time.perf_counter() - t0
