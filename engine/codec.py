"""Wire codecs: float32 PCM in, network frames out (Opus packets or s16le PCM chunks).

Encoders are streaming and stateful (one per session and utterance): ``encode`` buffers partial
frames and returns every complete frame; ``flush`` ends the stream. Resampling to another output rate
is streaming too (``StreamingResampler``): the sinc filter's history is kept across calls, so chunked
output equals resampling the whole signal at once, with no seams at chunk boundaries.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import opuslib

from engine.base import EngineError, InvalidOptionError
from engine.config import AudioConfig

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (10, 20, 40, 60)
OPUS_APPLICATIONS = ("audio", "voip", "restricted_lowdelay")
PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
# libopus defaults to 10. Measured on eSpeak speech at 24 kHz / 32 kbps on the 2-core dev box:
# complexity 10 costs ~27 ms of CPU per second of audio, 5 costs ~6 ms (all sessions share one
# engine thread, so this is capacity), with the same bitrate and a higher waveform SNR
# (14.6 vs 9.1 dB; below 7 libopus skips its extra signal analysis). 4 costs a third less than 5
# (3.0 vs 4.4-4.8 ms per second of audio) for a log-spectral distance to the input 0.06 dB worse
# (8.04 vs 7.97 dB; 10 gets 6.58): what made 64 eSpeak listeners fit on two cores with no underrun
# (docs/PERFORMANCE.md).
DEFAULT_OPUS_COMPLEXITY = 4
AudioFormat = Literal["opus", "pcm_s16le", "ulaw", "alaw"]
# formats only the ElevenLabs-compatible API asks for (engine.av_encoders; need a bitrate)
CONTAINER_FORMATS = ("mp3", "ogg_opus")


# The same libopus that opuslib loaded, called through PyDLL so the call keeps the GIL: one frame
# encodes in ~0.1 ms, while re-taking a released GIL can cost up to the interpreter's switch
# interval (5 ms) when the event loop thread is busy, for every frame (the engine thread encodes).
_libopus_gil = ctypes.PyDLL(opuslib.api.libopus._name)
_opus_encode_float = _libopus_gil.opus_encode_float
_opus_encode_float.argtypes = (
    opuslib.api.encoder.EncoderPointer,
    ctypes.POINTER(ctypes.c_float),
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int32,
)
_opus_encode_float.restype = ctypes.c_int32
_MAX_PACKET_BYTES = 4000  # libopus' recommended upper bound for one packet


class AudioCodecError(InvalidOptionError, ValueError):
    """A codec argument out of range (bitrate, frame length, application)."""

    code = "invalid_option"


class UnsupportedAudioFormatError(AudioCodecError):
    """An output format other than ``opus`` / ``pcm_s16le``."""

    code = "unsupported_format"


class UnsupportedSampleRateError(AudioCodecError):
    """A sample rate the requested format cannot carry."""

    code = "unsupported_sample_rate"


def _as_mono_f32(pcm: np.ndarray) -> np.ndarray:
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError(f"expected 1-D mono PCM, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def float_to_s16(pcm: np.ndarray) -> np.ndarray:
    """float32 ``(n,)`` in [-1, 1] -> int16 ``(n,)`` (clipped, rounded)."""
    return np.round(np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)


@functools.lru_cache(maxsize=16)
def _sinc_kernel(in_rate: int, out_rate: int) -> tuple[np.ndarray, int]:
    """torchaudio's default sinc kernel for this rate pair: ``(new, 2 * width + orig)`` float32.

    The same formula as ``torchaudio.transforms.Resample`` (``sinc_interp_hann``, lowpass width 6,
    rolloff 0.99, computed in float64, stored as float32), in numpy, so that the engine worker
    processes never import torch (a 3-5 s, 700 MB import); tests check it against torchaudio.
    """
    lowpass_width, rolloff = 6, 0.99
    gcd = math.gcd(in_rate, out_rate)
    orig, new = in_rate // gcd, out_rate // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx
    t = np.clip(t * base, -lowpass_width, lowpass_width)
    window = np.cos(t * math.pi / lowpass_width / 2) ** 2
    t *= math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (kernel * window * (base / orig)).astype(np.float32)
    kernel.setflags(write=False)
    return kernel, width


class StreamingResampler:
    """Chunk-by-chunk band-limited resampling with torchaudio's sinc kernel.

    Produces the same samples as ``torchaudio.functional.resample`` on the whole signal (default
    ``sinc_interp_hann``, width 6, rolloff 0.99; torchaudio computes the kernel, numpy applies
    it): the kernel is applied with stride ``orig`` (the gcd-reduced input rate) over a buffer that keeps the ``2 * width`` input samples of history
    the next output block still needs. Latency is ``width + orig`` input samples (< 1 ms here).
    Input and output: float32 ``(n,)``.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise UnsupportedSampleRateError("sample rates must be positive")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._identity = in_rate == out_rate
        gcd = math.gcd(in_rate, out_rate)
        self._orig = in_rate // gcd
        self._new = out_rate // gcd
        if not self._identity:
            self._kernel, self._width = _sinc_kernel(in_rate, out_rate)
        else:
            self._kernel, self._width = np.zeros((0, 0), np.float32), 0
        self.reset()

    def reset(self) -> None:
        """Start a new stream: left context is zeros, like torchaudio's padding."""
        self._buf = np.zeros(self._width, dtype=np.float32)
        self._n_in = 0
        self._n_out = 0

    def _run_blocks(self, buf: np.ndarray) -> tuple[np.ndarray, int]:
        k = self._kernel.shape[-1]
        if buf.shape[0] < k:
            return np.zeros(0, dtype=np.float32), 0
        n_blocks = (buf.shape[0] - k) // self._orig + 1
        # the same cross-correlation as torchaudio's conv1d(stride=orig), as one small matmul: for
        # 20-60 ms chunks numpy avoids torch's per-call overhead (~10x faster here)
        frames = np.lib.stride_tricks.sliding_window_view(buf, k)[:: self._orig][:n_blocks]
        y = frames @ self._kernel.T  # (blocks, new)
        return y.reshape(-1).astype(np.float32, copy=False), n_blocks

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next input chunk; returns the output samples that are final now."""
        x = _as_mono_f32(pcm)
        self._n_in += x.shape[0]
        if self._identity:
            self._n_out += x.shape[0]
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        out, n_blocks = self._run_blocks(self._buf)
        self._buf = self._buf[n_blocks * self._orig :]
        self._n_out += out.shape[0]
        return out

    def flush(self) -> np.ndarray:
        """End the stream: emit the rest (right edge zero-padded) trimmed to the exact length."""
        if self._identity:
            self.reset()
            return np.zeros(0, dtype=np.float32)
        padded = np.concatenate([self._buf, np.zeros(self._width + self._orig, np.float32)])
        out, _ = self._run_blocks(padded)
        total = math.ceil(self._new * self._n_in / self._orig)
        out = out[: max(0, total - self._n_out)]
        self.reset()
        return out


@runtime_checkable
class AudioEncoder(Protocol):
    """What the session needs from an encoder: frames out, one network message per frame."""

    format: str
    frame_ms: float
    out_rate: int

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """float32 ``(n,)`` at the encoder's input rate -> zero or more complete frames."""
        ...

    def flush(self) -> list[bytes]:
        """End the stream; return the remaining frame(s)."""
        ...


class OpusFrameEncoder:
    """float32 mono PCM -> one Opus packet per ``frame_ms`` frame (480 samples = 20 ms at 24 kHz).

    Samples are clipped to [-1, 1] and encoded as float (``opus_encode_float``).

    ``sample_rate`` is the Opus encoding rate (8/12/16/24/48 kHz); input arrives at ``in_rate``
    (default: the same) and is resampled in a streaming way when they differ.
    """

    format = "opus"

    def __init__(
        self,
        sample_rate: int = 24000,
        bitrate: int = 32000,
        application: str = "audio",
        frame_ms: int = 20,
        in_rate: int | None = None,
        complexity: int = DEFAULT_OPUS_COMPLEXITY,
    ) -> None:
        if sample_rate not in OPUS_RATES:
            raise UnsupportedSampleRateError(
                f"Opus supports sample rates {', '.join(map(str, OPUS_RATES))}; got {sample_rate}"
            )
        if not 6000 <= bitrate <= 510000:
            raise AudioCodecError(f"Opus bitrate must be 6000..510000, got {bitrate}")
        if frame_ms not in OPUS_FRAME_MS:
            raise AudioCodecError(f"Opus frame_ms must be one of {OPUS_FRAME_MS}, got {frame_ms}")
        if application not in OPUS_APPLICATIONS:
            raise AudioCodecError(
                f"Opus application must be one of {OPUS_APPLICATIONS}, got {application!r}"
            )
        if not 0 <= complexity <= 10:
            raise AudioCodecError(f"Opus complexity must be 0..10, got {complexity}")
        self.out_rate = sample_rate
        self.in_rate = sample_rate if in_rate is None else in_rate
        self.frame_ms: float = frame_ms
        self.bitrate = bitrate
        self.frame_size = sample_rate * frame_ms // 1000
        self._resampler = (
            StreamingResampler(self.in_rate, sample_rate) if self.in_rate != sample_rate else None
        )
        self._enc = opuslib.Encoder(sample_rate, 1, application)
        self._enc.bitrate = bitrate
        self._enc.complexity = complexity
        self._state = self._enc.encoder_state
        self._out = ctypes.create_string_buffer(_MAX_PACKET_BYTES)
        self._pending = np.zeros(0, dtype=np.float32)  # < frame_size samples at out_rate
        self.samples_encoded = 0  # samples at out_rate fed to the encoder, padding included
        self.packets = 0

    @property
    def duration_s(self) -> float:
        """Audio duration represented by the packets produced so far."""
        return self.samples_encoded / self.out_rate

    @property
    def lookahead(self) -> int:
        """Encoder delay in samples at ``out_rate`` (decoded audio is shifted by this much)."""
        return int(self._enc.lookahead)

    def _encode_frames(self, x: np.ndarray) -> list[bytes]:
        buf = np.concatenate([self._pending, x]) if self._pending.shape[0] else x
        n_frames = buf.shape[0] // self.frame_size
        fs = self.frame_size
        # one clip per call, not per frame (numpy per-call overhead)
        data = np.ascontiguousarray(np.clip(buf[: n_frames * fs], -1.0, 1.0), dtype=np.float32)
        ptr = data.ctypes.data
        packets = []
        for i in range(n_frames):
            frame = ctypes.cast(ptr + i * fs * 4, ctypes.POINTER(ctypes.c_float))
            n = _opus_encode_float(self._state, frame, fs, self._out, _MAX_PACKET_BYTES)
            if n < 0:
                raise EngineError(f"Opus encoder failed (error {n})")
            packets.append(self._out.raw[:n])
        self._pending = buf[n_frames * self.frame_size :].copy()
        self.samples_encoded += n_frames * self.frame_size
        self.packets += n_frames
        return packets

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """float32 ``(n,)`` at ``in_rate`` -> one packet per complete frame (maybe none)."""
        x = _as_mono_f32(pcm)
        if self._resampler is not None:
            x = self._resampler.process(x)
        return self._encode_frames(x)

    def flush(self) -> list[bytes]:
        """Encode what is buffered, the last partial frame padded with zeros."""
        x = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
        packets = self._encode_frames(x)
        rest = self._pending.shape[0]
        if rest:
            pad = np.zeros(self.frame_size - rest, dtype=np.float32)
            packets += self._encode_frames(pad)
        return packets


class OpusFrameDecoder:
    """Opus packets -> float32 mono PCM ``(n,)`` at ``sample_rate`` (tests, bench, offline synth)."""

    def __init__(self, sample_rate: int = 24000) -> None:
        if sample_rate not in OPUS_RATES:
            raise UnsupportedSampleRateError(
                f"Opus supports sample rates {', '.join(map(str, OPUS_RATES))}; got {sample_rate}"
            )
        self.sample_rate = sample_rate
        self._max_frame = sample_rate * 120 // 1000  # the longest Opus packet is 120 ms
        self._dec = opuslib.Decoder(sample_rate, 1)

    def decode(self, packet: bytes) -> np.ndarray:
        """One Opus packet -> float32 ``(n,)``; raises ``ValueError`` on a corrupt packet."""
        try:
            raw = self._dec.decode(bytes(packet), self._max_frame)
        except opuslib.OpusError as exc:
            raise ValueError(f"invalid Opus packet: {exc}") from exc
        return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


class PcmEncoder:
    """float32 PCM at ``in_rate`` -> s16le bytes at ``out_rate`` in ``chunk_ms`` chunks.

    Every message but the last holds exactly ``out_rate * chunk_ms / 1000`` samples (441 at
    22050 Hz, 20 ms); ``flush`` returns the remainder unpadded.
    """

    format = "pcm_s16le"

    _bytes_per_sample = 2

    def __init__(self, in_rate: int = 24000, out_rate: int = 24000, chunk_ms: int = 20) -> None:
        self._check_rate(out_rate)
        if not 5 <= chunk_ms <= 1000:
            raise AudioCodecError(f"chunk_ms must be 5..1000, got {chunk_ms}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.frame_ms: float = chunk_ms
        self.chunk_samples = round(out_rate * chunk_ms / 1000)
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples_encoded = 0

    @property
    def duration_s(self) -> float:
        return self.samples_encoded / self.out_rate

    def _check_rate(self, out_rate: int) -> None:
        if out_rate not in PCM_RATES:
            raise UnsupportedSampleRateError(
                f"pcm_s16le supports sample rates {', '.join(map(str, PCM_RATES))}; got {out_rate}"
            )

    def _to_bytes(self, s16: np.ndarray) -> bytes:
        """int16 samples -> the wire bytes (little-endian s16 here; G.711 overrides it)."""
        return s16.astype("<i2").tobytes()

    def _chunks(self, x: np.ndarray, final: bool) -> list[bytes]:
        buf = np.concatenate([self._pending, x]) if self._pending.shape[0] else x
        n = buf.shape[0] // self.chunk_samples
        cut = buf.shape[0] if final else n * self.chunk_samples
        data = self._to_bytes(float_to_s16(buf[:cut]))  # one conversion per call
        step = self.chunk_samples * self._bytes_per_sample
        out = [data[i : i + step] for i in range(0, len(data), step)]
        self._pending = buf[cut:].copy()
        self.samples_encoded += cut
        return out

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """float32 ``(n,)`` at ``in_rate`` -> complete s16le chunks at ``out_rate``."""
        return self._chunks(self._resampler.process(pcm), final=False)

    def flush(self) -> list[bytes]:
        """The remaining samples (the last chunk may be short)."""
        return self._chunks(self._resampler.flush(), final=True)


def make_encoder(
    fmt: str, out_rate: int, audio: AudioConfig, in_rate: int = 24000, *, bitrate: int | None = None
) -> AudioEncoder:
    """Build the encoder for a session's ``format`` / ``sample_rate``.

    ``opus`` (raw packets), ``pcm_s16le``, ``ulaw`` / ``alaw`` (G.711 at 8 kHz, ``engine.g711``),
    and for the ElevenLabs-compatible API ``mp3`` / ``ogg_opus`` (``engine.av_encoders``, at
    ``bitrate`` bit/s). Raises ``UnsupportedAudioFormatError`` for an unknown format and
    ``UnsupportedSampleRateError`` for a rate the format cannot carry (both ``InvalidOptionError``
    and ``ValueError`` subclasses, with the server's wire codes ``unsupported_format`` /
    ``unsupported_sample_rate``).
    """
    if fmt == "opus":
        return OpusFrameEncoder(
            sample_rate=out_rate,
            bitrate=audio.opus_bitrate if bitrate is None else bitrate,
            application=audio.opus_application,
            frame_ms=audio.frame_ms,
            in_rate=in_rate,
            complexity=audio.opus_complexity,
        )
    if fmt == "pcm_s16le":
        return PcmEncoder(in_rate=in_rate, out_rate=out_rate, chunk_ms=audio.frame_ms)
    if fmt in ("ulaw", "alaw"):
        from engine.g711 import G711Encoder

        law: Literal["ulaw", "alaw"] = "ulaw" if fmt == "ulaw" else "alaw"
        return G711Encoder(law, in_rate=in_rate, out_rate=out_rate, chunk_ms=audio.frame_ms)
    if fmt == "mp3":
        from engine.av_encoders import Mp3FrameEncoder

        return Mp3FrameEncoder(in_rate=in_rate, out_rate=out_rate, bitrate=bitrate or 128000,
                               quality=audio.mp3_quality)
    if fmt == "ogg_opus":
        from engine.av_encoders import OggOpusEncoder

        return OggOpusEncoder(in_rate=in_rate, out_rate=out_rate, bitrate=bitrate or 64000)
    raise UnsupportedAudioFormatError(
        f"unknown audio format {fmt!r} (expected opus, pcm_s16le, ulaw or alaw)"
    )


def encoded_seconds(fmt: str, sample_rate: int, packet: bytes, frame_ms: float) -> float:
    """Audio duration of one item from ``make_encoder(fmt, sample_rate, ...)``.

    Opus items are one ``frame_ms`` frame; PCM is 2 bytes and G.711 1 byte per sample; MP3 items
    are one MPEG frame; Ogg Opus items one 20 ms packet (``engine.av_encoders``).
    """
    if fmt == "opus":
        return frame_ms / 1000.0
    if fmt in ("ulaw", "alaw"):
        return len(packet) / sample_rate
    if fmt == "mp3":
        return (1152 if sample_rate >= 32000 else 576) / sample_rate
    if fmt == "ogg_opus":
        return 0.02
    return len(packet) / 2 / sample_rate
